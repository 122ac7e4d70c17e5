// Tensor parallel: `mlx launch -n N -- <command> --tensor-parallel` gives every rank a slice of
// every layer (heads and MLP columns) and sums their partial products over the ring. Greedy output
// is the single process's, token for token, and so are the tiny models' seeded draws below; serve
// batches requests across the ranks; a model that does not split is refused in one line; a dead
// rank stops every rank.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import * as mx from "../src/mlx";
import { readDirectoryTensors } from "../src/models/load";
import { evenRange, shardTensors } from "../src/models/shard";
import { cliRunner, mainScript } from "./helpers/cli";
import { serve } from "./helpers/serve";
import { tinyDims, writeTinyModel } from "./helpers/tiny-model";

const home = process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home");
const mlx = cliRunner(home);
let dir: string;
let tiny: string;
let quantized: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mlx-tp-"));
  tiny = join(dir, "tiny");
  quantized = join(dir, "tiny-q4");
  writeTinyModel(tiny, { layers: 3, seed: 5 });
  writeTinyModel(quantized, { layers: 3, seed: 6, quantize: { groupSize: 32, bits: 4 } });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const tokenIds = (stdout: string): number[] => JSON.parse(stdout).token_ids;

describe("mlx launch -n 2 -- run --tensor-parallel", () => {
  test("the default model's greedy answer, token for token (its 3 key-value heads split 2 + 1)", async () => {
    const prompt = ["run", "--json", "--temp", "0", "--max-tokens", "48", "Name three colors."];
    const alone = await mlx(prompt);
    expect(alone.code).toBe(0);
    const split = await mlx(["launch", "-n", "2", "--", ...prompt, "--tensor-parallel"]);
    expect(split.stderr).toBe("");
    expect(split.code).toBe(0);
    expect(tokenIds(split.stdout)).toEqual(tokenIds(alone.stdout));
  }, 120_000);

  test("a float tiny model sampled with a seed and a 4-bit one greedy: the same tokens", async () => {
    // Short, on a float model: the sums' other order moves a real model's logits too (smollm2's by
    // about 5e-3, as much as one process's prefill and decode differ), and MLX's draw from one row
    // (inverse CDF over the vocabulary in id order) then lands between the two CDFs on about 3% of
    // its steps at temperature 0.9: smollm2's seeded answers part after some 30 tokens, with the
    // same keys. A --layers split sums in the same order and draws the very same tokens.
    for (const [model, sampling] of [
      [tiny, ["--temp", "0.9", "--seed", "7"]],
      [quantized, ["--temp", "0"]],
    ] as const) {
      const prompt = ["run", "-m", model, "--json", "--max-tokens", "24", ...sampling, "Hello"];
      const alone = await mlx(prompt);
      expect(alone.code).toBe(0);
      const split = await mlx(["launch", "-n", "2", "--", ...prompt, "--tensor-parallel"]);
      expect(split.code).toBe(0);
      expect(tokenIds(split.stdout)).toEqual(tokenIds(alone.stdout));
    }
  }, 120_000);

  test("the prefix cache (chat's turns), prompt lookup and a rotating cache: the same tokens", async () => {
    // Each turn starts from the last one's keys and values on both ranks.
    const turns = "Hello\nWhat is 2+2?\nAnd 3+3?\n";
    const chat = ["chat", "-m", tiny, "--max-tokens", "8"];
    const alone = await mlx(chat, turns);
    const split = await mlx(["launch", "-n", "2", "--", ...chat, "--tensor-parallel"], turns);
    expect(split.code).toBe(0);
    expect(split.stdout).toBe(alone.stdout);
    for (const flags of [["--prompt-lookup"], ["--max-kv-size", "24"]]) {
      const prompt = [
        "run",
        "-m",
        tiny,
        "--json",
        "--temp",
        "0",
        "--max-tokens",
        "32",
        ...flags,
        "one two one two one",
      ];
      const one = await mlx(prompt);
      expect(one.code).toBe(0);
      const two = await mlx(["launch", "-n", "2", "--", ...prompt, "--tensor-parallel"]);
      expect(two.stderr).toBe("");
      expect(tokenIds(two.stdout)).toEqual(tokenIds(one.stdout));
    }
  }, 120_000);

  test("what does not split is refused in one line", async () => {
    // The tiny model has 2 key-value heads: 3 ranks cannot each hold one.
    const heads = await mlx(["launch", "-n", "3", "--", "run", "-m", tiny, "--tensor-parallel", "hi"]);
    expect(heads.code).not.toBe(0);
    // Refused once by the launcher before any rank starts (every rank refused it, and the launcher said it again).
    expect(heads.stderr).toBe(
      "error: --tensor-parallel over 3 ranks needs at least 3 key-value heads; the model has 2\n",
    );
    const both = await mlx([
      "launch",
      "-n",
      "2",
      "--",
      "run",
      "-m",
      tiny,
      "--tensor-parallel",
      "--layers",
      "0,1-2",
      "hi",
    ]);
    expect(both.code).not.toBe(0);
    expect(both.stderr).toBe(
      "error: --layers splits the model into runs of layers; --tensor-parallel splits every layer: give one\n",
    );
    const alone = await mlx(["run", "-m", tiny, "--tensor-parallel", "hi"]);
    expect(alone.code).toBe(1);
    expect(alone.stderr.trim()).toBe(
      "error: --rank, --layers, --tensor-parallel and --micro-batches need --hostfile (or $MLX_HOSTFILE): the processes to split the model across",
    );
  }, 60_000);
});

describe("shards", () => {
  test("a 4-bit layer cut by rows and by columns at group boundaries puts back together", () => {
    const whole = readDirectoryTensors(quantized);
    const shards = [0, 1].map((rank) => {
      const { config, tensors } = readDirectoryTensors(quantized);
      return { config: shardTensors(tensors, config, { rank, size: 2 }), tensors };
    });
    expect(shards.map((s) => [s.config.numAttentionHeads, s.config.numKeyValueHeads])).toEqual([
      [2, 1],
      [2, 1],
    ]);
    const joined = (name: string, axis: number) =>
      mx.concatenate(
        shards.map((s) => s.tensors.get(name)!),
        axis,
      );
    for (const [name, axis] of [
      ["model.layers.1.self_attn.k_proj.weight", 0],
      ["model.layers.1.mlp.up_proj.scales", 0],
      ["model.layers.1.self_attn.o_proj.weight", 1],
      ["model.layers.1.self_attn.o_proj.scales", 1],
      ["model.layers.1.mlp.down_proj.biases", 1],
    ] as const) {
      const original = whole.tensors.get(name)!;
      expect(shards[0]!.tensors.get(name)!.shape[axis]).toBe(original.shape[axis]! / 2);
      expect(joined(name, axis).toArray()).toEqual(original.toArray());
    }
    // Layers that are not split stay whole on every rank.
    expect(shards[1]!.tensors.get("model.layers.1.input_layernorm.weight")!.shape).toEqual([tinyDims.hidden]);
  });

  test("a split that would cut a quantization group is refused", () => {
    const model = join(dir, "tiny-g64");
    writeTinyModel(model, { layers: 1, seed: 1, quantize: { groupSize: 64, bits: 4 } });
    const { config, tensors } = readDirectoryTensors(model);
    expect(() => shardTensors(tensors, config, { rank: 0, size: 2 })).toThrow(
      "--tensor-parallel: model.layers.0.self_attn.o_proj is quantized in groups of 64 inputs, which the split at its heads (16 wide) would cut",
    );
  });

  test("a float MLP narrower than a block of 32 columns a rank still gives every rank columns", () => {
    // 64 columns over 4 ranks: in blocks of 32 two ranks would get none.
    const model = join(dir, "tiny-narrow");
    writeTinyModel(model, { layers: 1, seed: 3, dims: { heads: 4, kvHeads: 4, intermediate: 64 } });
    const columns = [0, 1, 2, 3].map((rank) => {
      const { config, tensors } = readDirectoryTensors(model);
      shardTensors(tensors, config, { rank, size: 4 });
      return tensors.get("model.layers.0.mlp.down_proj.weight")!.shape[1]!;
    });
    expect(columns).toEqual([16, 16, 16, 16]);
  });

  test("uneven counts go to the first ranks", () => {
    expect([0, 1].map((r) => evenRange(3, 2, r))).toEqual([
      [0, 2],
      [2, 3],
    ]);
    expect([0, 1, 2].map((r) => evenRange(48, 3, r))).toEqual([
      [0, 16],
      [16, 32],
      [32, 48],
    ]);
  });
});

describe("mlx launch -n 2 -- serve --tensor-parallel", () => {
  test("answers as one process, several requests batched; kill -9 of rank 1 stops every rank, naming it", async () => {
    const proc = Bun.spawn(
      [
        process.execPath,
        mainScript,
        ...["launch", "-n", "2", "--", "serve", "--port", "0", "-m", tiny, "--tensor-parallel", "--peer-timeout", "3"],
      ],
      { stdout: "pipe", stderr: "pipe", env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" } },
    );
    let stderr = "";
    const reading = (async () => {
      for await (const chunk of proc.stderr) stderr += new TextDecoder().decode(chunk);
    })();
    try {
      const deadline = Date.now() + 30_000;
      while (!/listening on (http:\S+)/.test(stderr)) {
        if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`serve did not start: ${stderr}`);
        await Bun.sleep(20);
      }
      const url = /listening on (http:\S+)/.exec(stderr)![1]!;
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
      const prompts = ["The sky", "A dog", "Numbers:", "Hello"];
      const alone = await Promise.all(
        prompts.map((p) => mlx(["run", "-m", tiny, "--raw", "--temp", "0", "--max-tokens", "12", "--json", p])),
      );
      // Together, with different lengths: rows join and leave the batch on every rank alike.
      const answers = await Promise.all(
        prompts.map((prompt, i) =>
          client.completions.create({ model: tiny, prompt, max_tokens: 6 + 2 * i, temperature: 0 }),
        ),
      );
      answers.forEach((a, i) => {
        expect(a.usage!.completion_tokens).toBe(6 + 2 * i);
        expect(JSON.parse(alone[i]!.stdout).text.startsWith(a.choices[0]!.text)).toBe(true);
      });
      // Embeddings: the whole model's hidden states, as one process pools them (sums in another order: close).
      const embedding = async (c: OpenAI) =>
        (await c.embeddings.create({ model: tiny, input: ["hello there"] })).data[0]!.embedding;
      const one = serve();
      let expected: number[];
      try {
        expected = await embedding(
          new OpenAI({ baseURL: `${one.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 }),
        );
      } finally {
        await one.stop();
      }
      (await embedding(client)).forEach((v, i) => expect(v).toBeCloseTo(expected[i]!, 4));
      const stats = (await (await fetch(`${url}/stats`)).json()) as any;
      expect(stats.models[0].pipeline.ranks).toBe(2);
      // Per token: the hidden states broadcast, and two float32 sums of 64 values in each of 3 layers.
      expect(stats.models[0].pipeline.sent_bytes_per_token).toBeGreaterThanOrEqual(64 * 4 * (1 + 2 * 3));

      const ranks = execFileSync("ps", ["-o", "pid=", "--ppid", String(proc.pid)], { encoding: "utf8" })
        .split("\n")
        .filter(Boolean)
        .map(Number);
      const rankOf = (pid: number) =>
        readFileSync(`/proc/${pid}/environ`, "utf8")
          .split("\0")
          .find((e) => e.startsWith("MLX_RANK="));
      const rank1 = ranks.find((pid) => rankOf(pid) === "MLX_RANK=1")!;
      expect(rank1).toBeGreaterThan(0);
      const killedAt = performance.now();
      process.kill(rank1, "SIGKILL");
      const code = await proc.exited;
      expect(performance.now() - killedAt).toBeLessThan(3000 + 5000);
      await reading;
      expect(code).not.toBe(0);
      expect(stderr).toContain("error: rank 1 was killed by SIGKILL");
      for (const pid of ranks) expect(() => process.kill(pid, 0)).toThrow();
    } finally {
      proc.kill("SIGKILL");
    }
  }, 120_000);
});
