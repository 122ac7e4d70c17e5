// One model across several processes: `mlx launch -n N -- <command>` on loopback, MLX's ring
// backend between the ranks. Greedy output is the single process's, token for token, with
// several micro-batches in flight too; serve answers the openai client; a dead or silent rank
// stops every rank within the peer timeout.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { readHostfile } from "../src/cmd/launch-plan";
import {
  defaultSplit,
  headLayers,
  layerRange,
  layerRoom,
  parseLayers,
  splitLayers,
  weightsWords,
} from "../src/engine/pipeline";
import { readLayout } from "../src/models/layout";
import { loadModel } from "../src/models/load";
import { computesOnCpu } from "../src/engine/device";
import { resolveModelPath } from "../src/store/resolve";
import { cliRunner, mainScript } from "./helpers/cli";
import {
  answersAlone,
  completeTogether,
  expectKilledRankOneNoticed,
  expectStoppedRankNoticed,
  launchServe as launchServeOn,
  rankPids,
  startRank,
  streamTogether,
  writeLoopbackRing,
} from "./helpers/launch";
import { eventually, serve, startServe } from "./helpers/serve";
import { lastLayers, writeRandomAdapter } from "./helpers/random-adapter";
import { tinyDims, writeTinyModel } from "./helpers/tiny-model";

const home = process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home");
const mlx = cliRunner(home);
let dir: string;
let tiny: string;
/** tiny's shapes, other weights: another revision of the same model. */
let tinyOther: string;
/** Heads of 32 values: a quantized KV cache's smallest group. */
let wide: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mlx-pipeline-"));
  tiny = join(dir, "tiny5");
  // An odd number of layers: no split is even.
  writeTinyModel(tiny, { layers: 5, seed: 5 });
  tinyOther = join(dir, "tiny5-other");
  writeTinyModel(tinyOther, { layers: 5, seed: 6 });
  wide = join(dir, "wide3");
  writeTinyModel(wide, { layers: 3, seed: 3, headDim: 32 });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** `mlx launch <launch> -- <command>`, bounded in time. */
function launch(launchArgs: string[], command: string[]) {
  return mlx(["launch", ...launchArgs, "--", ...command]);
}

describe("mlx launch -- run", () => {
  test("2 and 3 ranks print the single process's greedy answer on the default model", async () => {
    const prompt = ["run", "--temp", "0", "--max-tokens", "24", "Name three colors."];
    const alone = await mlx(prompt);
    expect(alone.code).toBe(0);
    expect(alone.stdout.trim().length).toBeGreaterThan(0);
    for (const n of ["2", "3"]) {
      const split = await launch(["-n", n], prompt);
      expect(split.stderr).toBe("");
      expect(split.code).toBe(0);
      expect(split.stdout).toBe(alone.stdout);
    }
  }, 120_000);

  test("the ring forms without MLX's 1 s wait after a refused connect", async () => {
    // The next-to-last rank connects while the last one is still connecting to rank 0; MLX's ring
    // waited 1 s after that refusal in most launches (7 of 8 in bench/launch-start.ts).
    const verbose = cliRunner(home, { MLX_RING_VERBOSE: "1" });
    for (const n of ["2", "3", "2", "3"]) {
      const split = await verbose(["launch", "-n", n, "--", "run", "-m", tiny, "--max-tokens", "1", "Hi"]);
      expect(split.code).toBe(0);
      expect(split.stderr).toContain("[ring] Rank 0 accepting");
      expect(split.stderr).not.toMatch(/\[ring\] Attempt \d+ wait/);
    }
  }, 60_000);

  test("an odd layer count, split by default and by hand, sampling with a seed: the same tokens", async () => {
    const prompt = ["run", "-m", tiny, "--json", "--max-tokens", "16", "--temp", "0.9", "--seed", "7", "Hello"];
    const alone = await mlx(prompt);
    expect(alone.code).toBe(0);
    const tokens = JSON.parse(alone.stdout).token_ids;
    expect(tokens).toHaveLength(16);
    for (const [launchArgs, extra] of [
      [["-n", "3"], []],
      [
        ["-n", "2"],
        ["--layers", "0-3,4"],
      ],
      [
        ["-n", "3"],
        ["--layers", "0,1-3,4"],
      ],
    ] as const) {
      const split = await launch([...launchArgs], [...prompt, ...extra]);
      expect(split.code).toBe(0);
      expect(JSON.parse(split.stdout).token_ids).toEqual(tokens);
    }
  }, 120_000);

  test("chat and bench work under launch; chat reads stdin on rank 0 and answers as alone", async () => {
    // Each turn starts from the last turn's keys and values on every rank (a prefix cache of one entry).
    const turns = "Hello\nWhat is 2+2?\nAnd 3+3?\n";
    const chat = ["chat", "-m", tiny, "--max-tokens", "8"];
    const alone = await mlx(chat, turns);
    const split = await mlx(["launch", "-n", "3", "--", ...chat], turns);
    expect(split.code).toBe(0);
    expect(split.stdout).toBe(alone.stdout);
    const benchArgs = ["bench", "-m", tiny, "-n", "1", "-p", "32", "-g", "8", "--json"];
    const bench = await launch(["-n", "2"], benchArgs);
    expect(bench.code).toBe(0);
    const [launched] = JSON.parse(bench.stdout).models;
    expect(launched).toMatchObject({ model: "tiny5", format: "mlx" });
    // The model's size, as one process reports it, not rank 0's share of it.
    const [single] = JSON.parse((await mlx(benchArgs)).stdout).models;
    expect(launched.size_bytes).toBe(single.size_bytes);
  }, 120_000);

  test("--plan prints the split, the bytes each rank loads and per hop, and exits", async () => {
    const { stdout, code } = await launch(["-n", "3", "--plan"], ["run", "-m", tiny, "hi"]);
    expect(code).toBe(0);
    expect(stdout).toContain("5 layers");
    // Rank 0 also holds the embedding: the layers left over go to the others.
    expect(stdout).toMatch(/rank 0 .* layers 0 \+ embedding and output +loads /);
    expect(stdout).toMatch(/rank 1 .* layers 1-2 +loads /);
    expect(stdout).toMatch(/rank 2 .* layers 3-4 +loads /);
    expect(stdout).toContain("256 bytes of hidden states (64 × 4)");
  });

  test("bad splits and a missing model fail with one line naming the problem", async () => {
    const bad = await launch(["-n", "2"], ["run", "-m", tiny, "--layers", "0-2,4", "hi"]);
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("should start at layer 3");
    const missing = await launch(["-n", "2"], ["run", "-m", join(dir, "nowhere"), "hi"]);
    expect(missing.code).not.toBe(0);
    // Refused by the launcher before any rank starts: the ranks are on this machine.
    expect(missing.stderr).toMatch(/^error: model not found: .*nowhere \(mlx list shows the stored models\)\n$/);
    const zero = await launch(["-n", "2"], ["run", "-m", tiny, "--micro-batches", "0", "hi"]);
    expect(zero.code).not.toBe(0);
    expect(zero.stderr).toContain("--micro-batches must be a whole number > 0 (got '0')");
    const alone = await mlx(["run", "-m", tiny, "--micro-batches", "2", "hi"]);
    expect(alone.code).not.toBe(0);
    expect(alone.stderr).toContain("--micro-batches need --hostfile");
    const none = await mlx(["launch", "-n", "2"]);
    expect(none.code).not.toBe(0);
    expect(none.stderr).toContain("give the command to run after --");
  }, 60_000);

  test("--kv-bits 8|4, --max-kv-size (a rotating cache) and --prompt-lookup: the single process's greedy tokens", async () => {
    // Repeats itself, so prompt lookup finds drafts; longer than the rotating cache, so it rotates.
    const words = "one two three four one two three four one two three";
    const run = ["run", "-m", wide, "--json", "--temp", "0", "--max-tokens", "40"];
    for (const flags of [
      ["--kv-bits", "8", "--kv-group-size", "32"],
      ["--kv-bits", "4", "--kv-group-size", "32", "--max-kv-size", "24"],
      ["--max-kv-size", "24"],
      ["--prompt-lookup"],
      ["--draft-model", tiny],
    ]) {
      const alone = await mlx([...run, ...flags, words]);
      expect(alone.code).toBe(0);
      const split = await launch(["-n", "2"], [...run, ...flags, words]);
      expect(split.stderr).toBe("");
      expect(JSON.parse(split.stdout).token_ids).toEqual(JSON.parse(alone.stdout).token_ids);
    }
    // The target verified drafts, and took back the same rejected ones, on both ranks.
    const bench = ["bench", "-m", wide, "--prompt-lookup", "-n", "1", "-p", "0", "-g", "24"];
    const accepted = (stdout: string) => /(\d+)\/(\d+) \(\d+%\) prompt-lookup/.exec(stdout)?.slice(1);
    const alone = accepted((await mlx(bench)).stdout);
    expect(Number(alone![1])).toBeGreaterThan(0);
    expect(accepted((await launch(["-n", "2"], bench)).stdout)).toEqual(alone);
  }, 180_000);

  test("Gemma 3 (sliding-window layers and global ones on each rank) splits: the single process's tokens", async () => {
    const gemma = join(dir, "gemma4");
    writeTinyModel(gemma, { modelType: "gemma3_text", layers: 4, seed: 4 });
    const run = ["run", "-m", gemma, "--json", "--temp", "0", "--max-tokens", "16", "one two three four five six"];
    const alone = await mlx(run);
    expect(alone.code).toBe(0);
    const split = await launch(["-n", "2"], [...run, "--layers", "0-1,2-3"]);
    expect(split.stderr).toBe("");
    expect(JSON.parse(split.stdout).token_ids).toEqual(JSON.parse(alone.stdout).token_ids);
  }, 60_000);

  test("a rank started by hand whose model, rank or hostfile is wrong fails at start, clearly", async () => {
    const ring = join(dir, "ring.json");
    writeFileSync(ring, JSON.stringify([["127.0.0.1:1"], ["127.0.0.1:2"]]));
    const r = await mlx(["run", "-m", join(dir, "nowhere"), "--hostfile", ring, "--rank", "1", "hi"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/^error: model not found: .*nowhere \(mlx list shows the stored models\)$/);
    // An empty --rank "$RANK" is no rank 0 (which would wait for ever for the others).
    const empty = await mlx(["run", "-m", tiny, "--hostfile", ring, "--rank", "", "hi"]);
    expect(empty.stderr.trim()).toBe("error: --rank must be a whole number ≥ 0 (got ''; or set $MLX_RANK)");
    const none = await mlx(["run", "-m", tiny, "--hostfile", ring, "hi"]);
    expect(none.stderr.trim()).toBe("error: give --rank R, this process's place in the hostfile (or set $MLX_RANK)");
    // MLX's own words for these are its JSON parser's.
    const missing = await mlx(["run", "-m", tiny, "--hostfile", join(dir, "no-hosts.json"), "--rank", "1", "hi"]);
    expect(missing.stderr.trim()).toMatch(/^error: cannot read hostfile .*no-hosts\.json: ENOENT/);
    const launchForm = join(dir, "launch-form.json");
    writeFileSync(launchForm, JSON.stringify([{ ssh: "localhost" }, { ssh: "localhost" }]));
    const wrongForm = await mlx(["run", "-m", tiny, "--hostfile", launchForm, "--rank", "1", "hi"]);
    expect(wrongForm.stderr.trim()).toEndWith(
      "reads MLX's ring hostfile ([[\"host:port\", ...], ...], a list per rank); mlx.launch's form is for mlx launch",
    );
    // A stored model's failure to join is no damage to it (nor is any failure but reading its files).
    const outside = await mlx(["run", "--hostfile", ring, "--rank", "2", "hi"]);
    expect(outside.code).toBe(1);
    expect(outside.stderr.trim()).toBe(`error: rank 2 is not in hostfile ${ring}, which lists ranks 0-1`);
  });

  test("a rank started by hand whose peers never come stops within --peer-timeout, naming them", async () => {
    // MLX's ring waits for ever to accept a rank that never comes (rank 0 here), and retries a
    // connect for about 30 s (rank 1).
    for (const rank of [0, 1]) {
      const ring = await writeLoopbackRing(join(dir, `ring-alone-${rank}.json`), 2);
      const started = Date.now();
      const alone = startRank(home, ring, rank, ["run", "-m", tiny, "--peer-timeout", "2", "hi"]);
      const stderr = await new Response(alone.stderr).text();
      expect(await alone.exited).toBe(3);
      expect(Date.now() - started).toBeLessThan(20_000);
      const other = (await Bun.file(ring).json())[1 - rank][0];
      expect(stderr.trim()).toBe(
        `error: rank ${rank}: the other ranks did not all join within 2 s (--peer-timeout) (rank ${1 - rank} at ${other}, from hostfile ${ring}); stopping`,
      );
    }
  }, 60_000);

  test("ranks started by hand with another --layers, model or KV cache refuse to run, rather than answer otherwise", async () => {
    for (const [zeroArgs, oneArgs, zeroSplit] of [
      [["--layers", "0-1,2-4"], ["--layers", "0-2,3-4"], "layers 0-1,2-4 of 5 layers, hidden size 64, float KV cache"],
      [[], ["-m", wide], "layers 0,1-4 of 5 layers, hidden size 64, float KV cache"],
      // The same shapes with other weights (another revision on that machine): rank 1 took rank
      // 0's hidden states for its own and the answer was garbage.
      [[], ["-m", tinyOther], "layers 0,1-4 of 5 layers, hidden size 64, float KV cache"],
      [["--kv-bits", "8"], [], "layers 0,1-4 of 5 layers, hidden size 64, 8-bit KV cache, group 64"],
      // Tensor parallel's ranks too (they only waited for each other), and one rank without it.
      [
        ["--tensor-parallel", "--kv-bits", "8"],
        ["--tensor-parallel"],
        "tensor-parallel 2 of 5 layers, hidden size 64, 8-bit KV cache, group 64",
      ],
      [["--tensor-parallel"], ["--layers", "0,1-4"], "tensor-parallel 2 of 5 layers, hidden size 64, float KV cache"],
      // One rank on the default split (which exchanges each rank's room first), the other not.
      [[], ["--layers", "0-1,2-4"], "layers 0,1-4 of 5 layers, hidden size 64, float KV cache"],
      [[], ["--tensor-parallel"], "layers 0,1-4 of 5 layers, hidden size 64, float KV cache"],
    ] as const) {
      const ring = await writeLoopbackRing(join(dir, "ring-mismatch.json"), 2);
      const args = ["run", "-m", tiny, "--max-tokens", "4", "hi"];
      const [zero, one] = [
        startRank(home, ring, 0, [...args, ...zeroArgs]),
        startRank(home, ring, 1, [...args, ...oneArgs]),
      ];
      const [zeroErr, oneErr] = await Promise.all([new Response(zero.stderr).text(), new Response(one.stderr).text()]);
      expect([await zero.exited, await one.exited]).toEqual([1, 1]);
      expect(zeroErr).toBe(
        `error: rank 1 split the model otherwise than rank 0 (${zeroSplit}, ${weightsWords(tiny)}): start every rank with the same model, --layers and KV cache flags\n`,
      );
      // One line on each rank, not the ring's lost connection.
      expect(oneErr).toMatch(
        /^error: rank 0 split the model otherwise than rank 1 \([^\n]*\): start every rank with the same model, --layers and KV cache flags\n$/,
      );
    }
  }, 60_000);

  test("SIGTERM to the launcher ends the launch as it ends one process: status 143, not a word from any rank", async () => {
    const proc = Bun.spawn(
      [process.execPath, mainScript, "launch", "-n", "2", "--", "run", "-m", tiny, "--max-tokens", "100000", "Count:"],
      { stdout: "pipe", stderr: "pipe", env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" } },
    );
    const reader = proc.stdout.getReader();
    await reader.read(); // the answer has started
    const ranks = rankPids(proc.pid);
    expect(ranks.size).toBe(2);
    proc.kill("SIGTERM");
    expect(await proc.exited).toBe(143);
    // Nothing at all: not rank 0 named as failed, nor rank 1 reporting rank 0's lost connection.
    expect(await new Response(proc.stderr).text()).toBe("");
    for (const pid of ranks.values()) expect(() => process.kill(pid, 0)).toThrow();
  }, 60_000);
});

/** A launched `serve` of `model` (the 5-layer tiny one by default) on `n` ranks. */
const launchServe = (n: number, extra: string[] = [], model = tiny) => launchServeOn(home, n, model, extra);

/** A random adapter of the tiny model's layers 2-4 (on both ranks of either split), in `dir`/`name`: its path. */
function writeSplitAdapter(name: string, seed: number): string {
  const { hidden, heads, headDim, intermediate } = tinyDims;
  const adapter = join(dir, name);
  writeRandomAdapter(adapter, {
    layers: lastLayers(5, 3, {
      "self_attn.q_proj": [hidden, heads * headDim],
      "mlp.down_proj": [intermediate, hidden],
    }),
    seed,
    strength: 0.5,
  });
  return adapter;
}

describe("mlx launch -- serve", () => {
  test("an alias of the split model asking for other KV cache settings, or another model, is refused, not served on the ranks' caches nor unloading the split model", async () => {
    const aliasHome = mkdtempSync(join(dir, "aliases-"));
    writeFileSync(
      join(aliasHome, "models.toml"),
      `[models.plain]\nsource = "${tiny}"\n\n[models.eight]\nsource = "${tiny}"\nkv_bits = 8\n\n[models.same]\nsource = "${tiny}"\n`,
    );
    const server = await launchServeOn(aliasHome, 2, "plain");
    try {
      const ask = (model: string) =>
        fetch(`${server.url}/v1/completions`, {
          method: "POST",
          body: JSON.stringify({ model, prompt: "Once upon a time", max_tokens: 3 }),
        });
      expect((await ask("plain")).status).toBe(200);
      // The lists offer what the ranks hold, alone: with another alias of it under the ranks' settings.
      const listed = (await (await fetch(`${server.url}/v1/models`)).json()) as any;
      expect(listed.data.map((m: { id: string }) => m.id)).toEqual(["plain", "same"]);
      expect((await ask("same")).status).toBe(200);
      const other = await ask("eight");
      expect(other.status).toBe(400);
      expect(((await other.json()) as any).error.message).toBe(
        "this server holds plain split across processes with the ranks' KV cache settings; an alias asking for other kv_bits or max_kv_size cannot share it",
      );
      expect((await ask("plain")).status).toBe(200);
      // Another model (here a path): refused before the split model is unloaded to make room for
      // it, which dropped it from /api/ps and its prefix cache until the next request reattached it.
      const another = await ask(wide);
      expect(another.status).toBe(400);
      expect(((await another.json()) as any).error.message).toBe(
        "this server holds plain split across processes; it cannot load another model",
      );
      expect((await ask("eight")).status).toBe(400);
      // An unknown name's hints are what this server serves (it named gemma3, which it refuses).
      const unknown = await ask("gemma");
      expect(unknown.status).toBe(404);
      expect(((await unknown.json()) as any).error.message).toEndWith("; known models: plain, same");
      // Listed under each name it was asked by (the alias of the same weights and settings too).
      const ps = (await (await fetch(`${server.url}/api/ps`)).json()) as any;
      expect(ps.models.map((m: { name: string }) => m.name)).toEqual(["plain", "same"]);
      // The model's size as one process holds it, not rank 0's share of it.
      const whole = loadModel(tiny);
      expect(ps.models[0]).toMatchObject({
        size: whole.weightBytes,
        size_vram: computesOnCpu() ? 0 : whole.weightBytes,
      });
      whole.free();
      // Ollama's unload (keep_alive 0, as `ollama stop` and `mlx stop` send it) leaves it loaded for
      // the server's life: it dropped out of /api/ps with its prefix cache, though every rank held it.
      const stop = await fetch(`${server.url}/api/generate`, {
        method: "POST",
        body: JSON.stringify({ model: "plain", keep_alive: 0 }),
      });
      expect(stop.status).toBe(200);
      await Bun.sleep(100);
      const after = (await (await fetch(`${server.url}/api/ps`)).json()) as any;
      expect(after.models.map((m: { name: string }) => m.name)).toEqual(["plain", "same"]);
    } finally {
      server.proc.kill("SIGTERM");
      await server.proc.exited;
    }
  }, 60_000);

  test("3 ranks answer the openai client, streamed and not, several requests batched", async () => {
    const server = await launchServe(3);
    const alone = await mlx(["run", "-m", tiny, "--raw", "--max-tokens", "10", "--json", "Once upon a time"]);
    try {
      const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
      const request = { model: tiny, prompt: "Once upon a time", max_tokens: 10, temperature: 0 };
      const one = await client.completions.create(request);
      expect(one.choices[0]!.text).toBe(JSON.parse(alone.stdout).text);
      // The store's other models (the default one) are not offered: this server cannot load them.
      expect((await client.models.list()).data.map((m) => m.id)).toEqual([tiny]);
      const tags = (await (await fetch(`${server.url}/api/tags`)).json()) as any;
      expect(tags.models.map((m: { name: string }) => m.name)).toEqual([tiny]);
      let streamed = "";
      for await (const chunk of await client.completions.create({ ...request, stream: true }))
        streamed += chunk.choices[0]?.text ?? "";
      expect(streamed).toBe(one.choices[0]!.text);
      const prompts = ["The sky", "A dog", "Numbers:", "Hello", "Rain"];
      const answers = await Promise.all(
        prompts.map((prompt, i) =>
          client.chat.completions.create({
            model: tiny,
            messages: [{ role: "user", content: prompt }],
            max_tokens: 6 + i,
            temperature: 0,
          }),
        ),
      );
      answers.forEach((a, i) => expect(a.usage!.completion_tokens).toBe(6 + i));
      const stats = (await (await fetch(`${server.url}/stats`)).json()) as any;
      const pipeline = stats.models[0].pipeline;
      expect(pipeline.ranks).toBe(3);
      // Hidden states of 64 float32 values per token, plus the headers.
      expect(pipeline.sent_bytes_per_token).toBeGreaterThan(256);
      const metrics = await (await fetch(`${server.url}/metrics`)).text();
      expect(metrics).toContain("# TYPE mlx_pipeline_stage_compute_seconds_total counter");
    } finally {
      server.proc.kill("SIGTERM");
    }
    expect(await server.proc.exited).toBe(0);
    expect(server.ranks().size).toBe(0);
  }, 120_000);

  test("the prefix cache (a request sharing a long system prompt reuses every rank's keys and values for it) and embeddings", async () => {
    const system = "You are a careful assistant who answers briefly and exactly. ".repeat(6);
    const requests = ["What is 2+2?", "Name a color.", "What is 2+2?"].map((question) => ({
      model: tiny,
      messages: [
        { role: "system" as const, content: system },
        { role: "user" as const, content: question },
      ],
      max_tokens: 12,
      temperature: 0,
    }));
    const answers = async (url: string) => {
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
      const out: { text: string | null; cached: number | undefined }[] = [];
      for (const r of requests) {
        const a = await client.chat.completions.create(r);
        out.push({ text: a.choices[0]!.message.content, cached: a.usage!.prompt_tokens_details?.cached_tokens });
      }
      const vectors = await client.embeddings.create({ model: tiny, input: ["hello there", "a dog"] });
      return { out, embeddings: vectors.data.map((d) => d.embedding) };
    };
    const alone = serve();
    let expected: Awaited<ReturnType<typeof answers>>;
    try {
      expected = await answers(alone.url);
    } finally {
      await alone.stop();
    }
    // Past the system prompt's tokens (the template's too).
    expect(expected.out[1]!.cached).toBeGreaterThan(60);
    const server = await launchServe(3);
    try {
      expect(await answers(server.url)).toEqual(expected);
    } finally {
      server.proc.kill("SIGTERM");
    }
    expect(await server.proc.exited).toBe(0);
  }, 120_000);

  test("embeddings under --kv-bits 4 --max-kv-size 8, split by layers and --tensor-parallel: one process's vectors", async () => {
    // Longer than the rotating cache: one process embeds on plain caches of the whole input.
    const text = "one two three four five six seven eight nine ten eleven twelve";
    const alone = await mlx(["embed", "-m", wide, text]);
    expect(alone.code).toBe(0);
    const expected = JSON.parse(alone.stdout) as number[];
    const kv = ["--kv-bits", "4", "--kv-group-size", "32", "--max-kv-size", "8"];
    for (const [n, flags] of [
      [3, kv],
      [2, [...kv, "--tensor-parallel"]],
    ] as const) {
      const server = await launchServe(n, [...flags], wide);
      try {
        const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
        const vector = (await client.embeddings.create({ model: wide, input: [text] })).data[0]!.embedding;
        // The openai client asks for base64 float32s; tensor parallel sums in another order.
        const digits = flags.includes("--tensor-parallel") ? 4 : 6;
        vector.forEach((v, i) => expect(v).toBeCloseTo(expected[i]!, digits));
      } finally {
        server.proc.kill("SIGTERM");
      }
      expect(await server.proc.exited).toBe(0);
    }
  }, 120_000);

  test("an input longer than a prefill chunk embeds a chunk at a time, as one process: the same vector", async () => {
    // Rank 0 sent the whole input round the ranks in one pass: the next rank heard nothing while
    // it ran its layers (a few thousand tokens outlasted the peer timeout and stopped every rank),
    // and the vector was not one process's (3e-4 apart).
    const text = "word ".repeat(700);
    const alone = await mlx(["embed", text]);
    expect(alone.code).toBe(0);
    const expected = JSON.parse(alone.stdout) as number[];
    const server = await launchServe(2, [], "smollm2");
    try {
      const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60_000 });
      const vector = (await client.embeddings.create({ model: "smollm2", input: [text] })).data[0]!.embedding;
      vector.forEach((v, i) => expect(v).toBeCloseTo(expected[i]!, 6));
    } finally {
      server.proc.kill("SIGTERM");
    }
    expect(await server.proc.exited).toBe(0);
  }, 120_000);

  test("adapters: run --adapter, and serve with rows of the base and of an adapter in one batch, as one process", async () => {
    const adapter = writeSplitAdapter("adapter", 1);
    const run = ["run", "-m", tiny, "--json", "--temp", "0", "--max-tokens", "12", "--adapter", adapter, "Hello"];
    const alone = await mlx(run);
    expect(alone.code).toBe(0);
    const split = await launch(["-n", "2"], [...run, "--layers", "0-2,3-4"]);
    expect(split.stderr).toBe("");
    expect(JSON.parse(split.stdout).token_ids).toEqual(JSON.parse(alone.stdout).token_ids);

    const requests = [tiny, "tuned", tiny, "tuned"].map((model, i) => ({
      model,
      prompt: i < 2 ? "Once upon a time" : "The weather",
      max_tokens: 10,
      temperature: 0,
    }));
    const one = serve({ adapters: new Map([["tuned", { base: tiny, dir: adapter }]]) });
    let expected: string[];
    try {
      const client = new OpenAI({ baseURL: `${one.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
      expected = [];
      for (const r of requests) expected.push((await client.completions.create(r)).choices[0]!.text);
    } finally {
      await one.stop();
    }
    // The adapter changes the answer.
    expect(expected[1]).not.toBe(expected[0]);
    const server = await launchServe(3, ["--adapter", `tuned=${adapter}`]);
    expect(await completeTogether(server, requests)).toEqual(expected);
  }, 120_000);

  test("an adapter under speculation: a split model gives one process's log-probabilities", async () => {
    const adapter = writeSplitAdapter("adapter-speculated", 2);
    // Prompt lookup drafts from the prompt's repeats: its verifying steps adapt several positions
    // at once, which every rank must compute each on its own, as rank 0 does (Flag.apart).
    const request = {
      model: "tuned",
      prompt: "one two three four one two three four one two three four one two",
      max_tokens: 16,
      temperature: 0,
      logprobs: 1,
    };
    const flags = ["--adapter", `tuned=${adapter}`, "--prompt-lookup"];
    const answer = async (url: string) => {
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
      const choice = (await client.completions.create(request)).choices[0]!;
      const stats = await (await fetch(`${url}/stats`)).text();
      return {
        text: choice.text,
        logprobs: choice.logprobs!.token_logprobs,
        drafted: /"accepted_tokens":[1-9]/.test(stats),
      };
    };
    const one = await startServe(tiny, flags);
    let expected: Awaited<ReturnType<typeof answer>>;
    try {
      expected = await answer(one.url);
    } finally {
      one.proc.kill();
      await one.proc.exited;
    }
    expect(expected.drafted).toBe(true);
    // (Tensor parallel sums each layer's partial products across the ranks: its log-probabilities
    // are one process's only to rounding, with or without an adapter.)
    const server = await launchServe(2, [...flags, "--layers", "0-2,3-4"]);
    try {
      expect(await answer(server.url)).toEqual(expected);
    } finally {
      server.proc.kill();
      await server.proc.exited;
    }
  }, 120_000);

  test("an adapter whose share does not fit a later rank's layers is refused for its requests; the split server goes on", async () => {
    const { hidden, heads, headDim } = tinyDims;
    const adapter = join(dir, "adapter-misfit");
    // Layer 4 (rank 1's, under --layers 0-2,3-4) with q_proj outputs the model does not have: only rank 1 can tell.
    writeRandomAdapter(adapter, {
      layers: lastLayers(5, 1, { "self_attn.q_proj": [hidden, heads * headDim + 8] }),
      seed: 3,
    });
    // Before, rank 1 died of it and took the server down (at start, loading --adapter's).
    const server = await launchServe(2, ["--layers", "0-2,3-4", "--adapter", `misfit=${adapter}`]);
    try {
      const ask = (model: string) =>
        fetch(`${server.url}/v1/completions`, {
          method: "POST",
          body: JSON.stringify({ model, prompt: "Hello", max_tokens: 3 }),
        });
      const refused = await ask("misfit");
      expect(refused.status).toBe(500);
      expect(((await refused.json()) as any).error.message).toBe(
        `${adapter}: another rank of the split model could not load its layers' share (its log says why)`,
      );
      expect((await ask(tiny)).status).toBe(200);
      expect(server.stderr()).toMatch(/\[rank 1\] error: .*adapter-misfit/);
    } finally {
      server.proc.kill("SIGTERM");
    }
    expect(await server.proc.exited).toBe(0);
  }, 120_000);

  test("an adapter of a layer past the model's last is refused split as in one process, not dropped by every rank", async () => {
    const { hidden, heads, headDim } = tinyDims;
    const adapter = join(dir, "adapter-past-last");
    // Layers 3-5 of the 5-layer model: layer 5 is none's.
    writeRandomAdapter(adapter, {
      layers: lastLayers(6, 3, { "self_attn.q_proj": [hidden, heads * headDim] }),
      seed: 2,
      strength: 0.5,
    });
    const run = ["run", "-m", tiny, "--max-tokens", "4", "--adapter", adapter, "Hello"];
    const error =
      /adapters\.safetensors: 'model\.layers\.5\.self_attn\.q_proj\.lora_[ab]' names no linear layer this model can adapt \('model\.layers\.5\.self_attn\.q_proj'\)\n$/;
    const alone = await mlx(run);
    expect(alone.code).toBe(1);
    expect(alone.stderr).toMatch(error);
    // Each rank left the tensors of layers it does not hold to the others: the split run
    // answered with the adapter's other layers only, without a word.
    const split = await launch(["-n", "2"], [...run, "--layers", "0-2,3-4"]);
    expect(split.code).toBe(1);
    // Rank 0's own line, as alone (the launcher does not say it again).
    expect(split.stderr).toMatch(/^error: \S+adapter-past-last\//);
    expect(split.stderr).toMatch(error);
  }, 120_000);

  test("concurrent streams: several micro-batches in flight on 3 ranks (one with --micro-batches 1), each stream as one process gives it alone", async () => {
    const requests = ["The sky", "A dog and a cat", "Numbers:", "Hello", "Rain falls", "Once", "Why?", "Blue"].map(
      (prompt, i) => ({ model: tiny, prompt, max_tokens: 6 + 3 * i, temperature: i === 3 ? 0.9 : 0, seed: 11 }),
    );
    const expected = await answersAlone(requests);
    for (const [ranks, microBatches] of [
      [3, undefined],
      [2, "1"],
    ] as const) {
      // A heartbeat a second brings the stages' figures back soon.
      const flags = ["--peer-timeout", "3", ...(microBatches ? ["--micro-batches", microBatches] : [])];
      const server = await launchServe(ranks, flags);
      try {
        expect(await streamTogether(server.url, requests)).toEqual(expected);
        const pipeline = async () => ((await (await fetch(`${server.url}/stats`)).json()) as any).models[0].pipeline;
        const inFlight = microBatches ? 1 : ranks;
        expect(await pipeline()).toMatchObject({ ranks, micro_batches: inFlight });
        if (inFlight === 1) expect((await pipeline()).max_in_flight).toBe(1);
        else expect((await pipeline()).max_in_flight).toBeGreaterThan(1);
        // A group's next step built while its last is still on the ring is held until that one
        // is back: never more in flight than the micro-batches.
        expect((await pipeline()).max_in_flight).toBeLessThanOrEqual(inFlight);
        // Once a heartbeat has been round, each stage says how busy it was.
        await eventually(async () => {
          const { stages } = await pipeline();
          return stages.length === ranks - 1 && stages.every((s: { tokens: number }) => s.tokens > 0);
        }, 10_000);
        const { stages } = await pipeline();
        for (const stage of stages) {
          expect(stage.busy_fraction).toBeGreaterThan(0);
          expect(stage.busy_fraction).toBeLessThanOrEqual(1);
          // Stages build the decode step they expect while waiting for its header ...
          expect(stage.steps_built_ahead).toBeGreaterThan(0);
          // and what memory it holds (its layers and caches), and held at most.
          expect(stage.active_memory_bytes).toBeGreaterThan(0);
          expect(stage.peak_memory_bytes).toBeGreaterThanOrEqual(stage.active_memory_bytes);
        }
        // ... and requests joining and leaving proved some guesses wrong: those steps were thrown
        // away and the caches stepped back, and every stream above still got its own tokens.
        expect(stages.some((s: { steps_guessed_wrong: number }) => s.steps_guessed_wrong > 0)).toBe(true);
        const metrics = await (await fetch(`${server.url}/metrics`)).text();
        expect(metrics).toMatch(/mlx_pipeline_stage_busy_ratio\{model="[^"]+",rank="1"\} 0\.\d+/);
        expect(metrics).toMatch(/mlx_pipeline_stage_memory_peak_bytes\{model="[^"]+",rank="1"\} [1-9]\d*/);
        expect(metrics).toContain(`mlx_pipeline_max_in_flight{model="${tiny}"} ${(await pipeline()).max_in_flight}`);
      } finally {
        server.proc.kill("SIGTERM");
      }
      expect(await server.proc.exited).toBe(0);
    }
  }, 120_000);

  test("kill -9 of a rank while serving: the launcher and every rank exit, naming it; a stream ends with the error", async () => {
    const server = await launchServe(3, ["--peer-timeout", "3"]);
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
    const ranks = server.ranks();
    expect(ranks.size).toBe(3);
    const answering = client.completions
      .create({ model: tiny, prompt: "Count:", max_tokens: 400, temperature: 0, stream: true })
      .then(async (s) => {
        for await (const _ of s);
      })
      .catch((e) => e);
    await Bun.sleep(300);
    const killedAt = performance.now();
    process.kill(ranks.get(2)!, "SIGKILL");
    const code = await server.proc.exited;
    expect(performance.now() - killedAt).toBeLessThan(3000 + 5000);
    await server.reading;
    expect(code).not.toBe(0);
    expect(server.stderr()).toContain("error: rank 2 was killed by SIGKILL");
    for (const pid of ranks.values()) expect(() => process.kill(pid, 0)).toThrow();
    // The stream ends with an error event that says why, not a cut connection.
    const error = (await answering) as Error;
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect(error.message).toContain("lost a rank of the pipeline: ");
  }, 60_000);

  test("a rank that stops answering (SIGSTOP): every rank stops within the peer timeout, naming the silent peer", async () => {
    const server = await launchServe(3, ["--peer-timeout", "2"]);
    const ranks = server.ranks();
    await expectStoppedRankNoticed(server, 1, 2000, /no word from rank 1 for 2 s \(--peer-timeout\)/);
    for (const pid of ranks.values()) expect(() => process.kill(pid, 0)).toThrow();
  }, 60_000);

  test("a rank 0 started by hand answers /health (503, loading) while it waits for the other ranks to join", async () => {
    const ring = await writeLoopbackRing(join(dir, "ring-waiting.json"), 2);
    const args = ["serve", "--port", "0", "-m", tiny, "--peer-timeout", "30"];
    const zero = startRank(home, ring, 0, args);
    let one: ReturnType<typeof startRank> | undefined;
    let stderr = "";
    void (async () => {
      for await (const chunk of zero.stderr) stderr += new TextDecoder().decode(chunk);
    })();
    try {
      await eventually(() => /listening on http:\S+/.test(stderr), 30_000);
      const url = /listening on (http:\S+)/.exec(stderr)![1]!;
      // Before, joining the ring held the event loop: /health did not answer until rank 1 came.
      await Bun.sleep(500);
      const waiting = await fetch(`${url}/health`, { signal: AbortSignal.timeout(2000) });
      expect([waiting.status, await waiting.json()]).toEqual([503, { status: "loading" }]);
      one = startRank(home, ring, 1, args);
      await eventually(async () => (await fetch(`${url}/health`)).status === 200, 30_000);
    } finally {
      zero.kill("SIGKILL");
      one?.kill("SIGKILL");
    }
  }, 60_000);

  test("ranks started by hand: when one dies, rank 0's /health and /ready say 503, then every rank exits within the timeout", async () => {
    const args = ["serve", "--port", "0", "-m", tiny, "--peer-timeout", "3"];
    await expectKilledRankOneNoticed(home, join(dir, "ring-hand.json"), args, "lost a rank of the pipeline", 3000);
  }, 60_000);
});

describe("planning", () => {
  test("hostfiles: mlx.launch's JSON and the ring's; local hosts start directly, others over ssh", () => {
    const file = join(dir, "hosts.json");
    writeFileSync(
      file,
      JSON.stringify([
        { ssh: "localhost", ips: ["127.0.0.1"] },
        { ssh: "mac2", ips: ["10.0.0.2"] },
      ]),
    );
    expect(readHostfile(file, 5000)).toEqual([
      { addresses: ["127.0.0.1:5000"], ssh: undefined },
      { addresses: ["10.0.0.2:5001"], ssh: "mac2" },
    ]);
    writeFileSync(file, JSON.stringify([["127.0.0.1:6000"], ["mac3.local:6001"]]));
    expect(readHostfile(file, 5000)).toEqual([
      { addresses: ["127.0.0.1:6000"], ssh: undefined },
      { addresses: ["mac3.local:6001"], ssh: "mac3.local" },
    ]);
    // Several links per host: every address is kept, each IP of mlx.launch's on the next port (as mlx.launch numbers them).
    writeFileSync(
      file,
      JSON.stringify([
        { ssh: "localhost", ips: ["127.0.0.1", "127.0.0.2"] },
        { ssh: "mac2", ips: ["10.0.0.2", "10.0.1.2"] },
      ]),
    );
    expect(readHostfile(file, 5000)).toEqual([
      { addresses: ["127.0.0.1:5000", "127.0.0.2:5001"], ssh: undefined },
      { addresses: ["10.0.0.2:5002", "10.0.1.2:5003"], ssh: "mac2" },
    ]);
    writeFileSync(
      file,
      JSON.stringify([
        ["127.0.0.1:6000", "127.0.0.2:6000"],
        ["10.0.0.2:6000", "10.0.1.2:6000"],
      ]),
    );
    expect(readHostfile(file, 5000)).toEqual([
      { addresses: ["127.0.0.1:6000", "127.0.0.2:6000"], ssh: undefined },
      { addresses: ["10.0.0.2:6000", "10.0.1.2:6000"], ssh: "10.0.0.2" },
    ]);
    writeFileSync(file, JSON.stringify([["127.0.0.1:6000", "6001"]]));
    expect(() => readHostfile(file, 5000)).toThrow("entry 0 '6001' is not host:port");
    writeFileSync(file, JSON.stringify([{ ips: ["10.0.0.2"] }]));
    expect(() => readHostfile(file, 5000)).toThrow('entry 0 needs "ssh"');
    // Two ranks on one address never form a ring: every rank would wait for ever.
    writeFileSync(file, JSON.stringify([["127.0.0.1:6000"], ["127.0.0.1:6000"], ["127.0.0.1:6001"]]));
    expect(() => readHostfile(file, 5000)).toThrow("127.0.0.1:6000 is listed twice (rank 0 and rank 1)");
    // MLX would listen on 99999 modulo 65536.
    writeFileSync(file, JSON.stringify([["127.0.0.1:99999"], ["127.0.0.1:6001"]]));
    expect(() => readHostfile(file, 5000)).toThrow("rank 0's address '127.0.0.1:99999' needs a port 1-65535");
    writeFileSync(file, JSON.stringify([{ ssh: "localhost" }, { ssh: "mac2" }]));
    expect(() => readHostfile(file, 65535)).toThrow("rank 1's address 'mac2:65536' needs a port 1-65535");
  });

  test("the default split follows free memory by largest remainder, at least one layer each", () => {
    const ranges = (stages: { start: number; end: number }[]) => stages.map((s) => s.end - s.start);
    expect(ranges(splitLayers(30, [1, 1, 1]))).toEqual([10, 10, 10]);
    expect(ranges(splitLayers(28, [1, 1, 1]))).toEqual([10, 9, 9]);
    expect(ranges(splitLayers(5, [8, 1, 1]))).toEqual([3, 1, 1]);
    expect(ranges(splitLayers(4, [100, 0, 0, 0]))).toEqual([1, 1, 1, 1]);
    expect(() => splitLayers(2, [1, 1, 1])).toThrow("fewer than the 3 ranks");
    expect(parseLayers("0-9,10-18,19-29", 30, 3).map((s) => [s.start, s.end, s.ends])).toEqual([
      [0, 10, true],
      [10, 19, false],
      [19, 30, false],
    ]);
    expect(() => parseLayers("0-9,10-18", 30, 2)).toThrow("covers layers 0-18; the model has 30");
  });

  // A GGUF's Q6_K output layer is held quantized on one machine and dequantized on another
  // (other kernels, a GPU): the ends weigh otherwise on each. Each rank counts its own room and
  // the ranks share those, so they agree; each splitting the shared free memory by its own
  // layout's ends, two ranks took 0-1,2-3 and 0,1-3 of one model and refused to run.
  test("the default split is one on every machine, however each loads rank 0's ends", () => {
    const layout = (endBytes: number) => ({
      numLayers: 4,
      hiddenSize: 256,
      layerBytes: [5, 5, 5, 5].map((mb) => mb * 2 ** 20),
      endBytes,
      layerWeights: [3, 3, 3, 3].map((m) => m * 1e6),
      headWeights: 12e6,
      sharedBytes: 0,
      activationBytes: 4,
      parameters: 24e6,
    });
    const [quantized, dequantized] = [layout(19 * 2 ** 20), layout(25 * 2 ** 20)];
    const free = [33 * 2 ** 20, 5 * 2 ** 20];
    // Rank 0 holds the quantized ends, rank 1 would have dequantized them.
    const room = [layerRoom(quantized, 0, free[0]!), layerRoom(dequantized, 1, free[1]!)];
    const split = (l: ReturnType<typeof layout>) => defaultSplit(l, room).map(layerRange).join(",");
    expect(split(quantized)).toBe(split(dequantized));
    // What each rank would have split on its own count of the ends.
    expect(
      defaultSplit(quantized, [layerRoom(quantized, 0, free[0]!), free[1]!])
        .map(layerRange)
        .join(","),
    ).not.toBe(
      defaultSplit(dequantized, [layerRoom(dequantized, 0, free[0]!), free[1]!])
        .map(layerRange)
        .join(","),
    );
  });

  test("rank 0's output layer counts as the layers its work is worth", async () => {
    const ranges = (stages: { start: number; end: number }[]) => stages.map((s) => s.end - s.start);
    // 30 layers + a head worth 8: 19 layers' work each, or 12.7 with 3 ranks.
    expect(ranges(splitLayers(30, [1, 1], 8))).toEqual([11, 19]);
    expect(ranges(splitLayers(30, [1, 1, 1], 8))).toEqual([5, 13, 12]);
    // A head worth more than rank 0's share still leaves it one layer.
    expect(ranges(splitLayers(5, [1, 1, 1], 85))).toEqual([1, 2, 2]);
    // smollm2 (a GGUF: an 8-bit output layer, 4-bit layers): 49,152 × 576 multiply-adds against
    // a layer's 3,538,944, each with its small ops; by multiply-adds, not bytes.
    const smollm2 = readLayout(await resolveModelPath(undefined));
    expect(headLayers(smollm2)).toBeCloseTo((49152 * 576 + 2 * 80_000) / (3538944 + 20 * 80_000), 6);
    // 5.5 layers' worth (fitted on the ranks' CPU time): 2 ranks 12 / 18, 3 ranks 6 / 12 / 12.
    expect(ranges(splitLayers(30, [1, 1], headLayers(smollm2)))).toEqual([12, 18]);
    expect(ranges(splitLayers(30, [1, 1, 1], headLayers(smollm2)))).toEqual([6, 12, 12]);
    // The tiny model (safetensors, float): 49,152 × 64 against 36,864 a layer.
    expect(headLayers(readLayout(tiny))).toBeCloseTo((49152 * 64 + 2 * 80_000) / (36864 + 20 * 80_000), 6);
  });
});
