// `mlx bench` as a user drives it, on tiny random-weight models: the model mode's table,
// --json, --csv, -n, several -m with a broken one, the prompt suite with regex and schema
// expectations, bad prompt and schema files, and --plot.
import { beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { writeTinyModel } from "./helpers/tiny-model";
import {
  checkAnswer,
  compileRegex,
  compileSchema,
  extractJson,
  parsePromptFile,
  readSchemaFile,
} from "../src/bench/suite";
import { percentile, sd, summarize } from "../src/bench/stats";
import { wellFormed } from "./helpers/svg";
import { cliRunner, interruptWhileInUse, mainScript } from "./helpers/cli";
import { article } from "../src/bench/report";
import { pullModel } from "../src/store/pull";
import { loadModel } from "../src/models/load";
import { benchLoadedModel, quantizationOf } from "../src/bench/model";
import { tinyLlamaGGUF, writeGGUF } from "./helpers/gguf-writer";
import { writeScriptedModel } from "./helpers/scripted-model";
import { complete, soloScheduler } from "../src/engine/generate";
import { defaultSampling } from "../src/engine/sampling";

const root = mkdtempSync(join(tmpdir(), "mlx-bench-"));
const tiny = join(root, "tiny");
const tinyQ = join(root, "tiny-q4");
const run = cliRunner(join(root, "home"));
const mlx = (args: string[]) => run(["bench", ...args]);
const file = (name: string, text: string) => {
  const path = join(root, name);
  writeFileSync(path, text);
  return path;
};
const oneLineError = (r: { stderr: string; code: number }, pattern: RegExp) => {
  expect(r.code).not.toBe(0);
  expect(r.stderr.trim().split("\n").at(-1)).toMatch(/^error: /);
  expect(r.stderr).toMatch(pattern);
  expect(r.stderr).not.toMatch(/\n\s+at /);
};

beforeAll(() => {
  writeTinyModel(tiny, { contextLength: 256 });
  writeTinyModel(tinyQ, { contextLength: 256, quantize: { groupSize: 32, bits: 4 }, seed: 1 });
});

const fast = ["-p", "16", "-g", "8"];

/** `mlx bench <args>` started in a child process of its own (to be interrupted). */
const startBench = (args: string[]) =>
  Bun.spawn([process.execPath, mainScript, "bench", ...args], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, MLX_HOME: join(root, "home") },
  });

describe("mlx bench: model mode", () => {
  test("a table on stdout: tokens/s as mean ± sd, first token, peak memory, size, quantization", async () => {
    const r = await mlx(["-m", tiny, "-n", "2", ...fast]);
    expect(r.code).toBe(0);
    const lines = r.stdout.trim().split("\n");
    expect(lines[0]).toMatch(
      /\| model .*\| quantization .*\|\s+size .*pp16 tokens\/s.*tg8 tokens\/s.*first token \(ms\).*peak memory/,
    );
    expect(lines[2]).toMatch(
      /^\| tiny\s+\| mlx\s+\| float32\s+\|\s+[\d.]+ [KMG]?B \|\s+[\d.]+ ± [\d.]+ \|\s+[\d.]+ ± [\d.]+ \|\s+\d+ ± \d+ \|\s+[\d.]+ [KMG]?B \|$/,
    );
    expect(r.stdout).toMatch(/2 runs each/);
    expect(r.stderr).not.toMatch(/error/);
  }, 20_000);

  test("a GGUF's quantization is named first as `mlx list` names it (its declared file type), then what MLX holds", () => {
    // Tensors of one type, a file type declared as another (as a Q4_K_M file holds Q6_K and Q5_0 tensors too).
    const { metadata, tensors } = tinyLlamaGGUF({ hidden: 64, heads: 4, kvHeads: 2, ffn: 128, layers: 1, type: "F16" });
    const path = join(root, "declared.gguf");
    writeGGUF(path, { ...metadata, "general.file_type": 15 }, tensors);
    const lm = loadModel(path);
    try {
      expect(quantizationOf(lm)).toBe("Q4_K_M (float16)");
    } finally {
      lm.free();
    }
  });

  test("--json: -n samples of each test, exactly -p prompt tokens, peak memory; quantization of a 4-bit model", async () => {
    const r = await mlx(["-m", tinyQ, "-n", "3", ...fast, "--json"]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.mode).toBe("model");
    expect(out.errors).toEqual([]);
    const m = out.models[0];
    expect(m.model).toBe("tiny-q4");
    expect(m.quantization).toBe("4-bit, group 32");
    expect(m.prompt_tokens).toBe(16);
    expect(m.gen_tokens).toBe(8);
    expect(m.prompt_tokens_per_second.samples).toHaveLength(3);
    expect(m.generation_tokens_per_second.samples).toHaveLength(3);
    expect(m.time_to_first_token_seconds.samples).toHaveLength(3);
    expect(m.generation_tokens_per_second.mean).toBeGreaterThan(0);
    expect(m.generation_tokens_per_second.sd).toBeGreaterThanOrEqual(0);
    expect(m.peak_memory_bytes).toBeGreaterThan(0);
    expect(m.size_bytes).toBeGreaterThan(0);
  }, 20_000);

  test("two -m with one broken path: a clear error naming it, the other still reported, non-zero exit; --csv", async () => {
    const broken = join(root, "no-such-model");
    const r = await mlx(["-m", broken, "-m", tiny, "-n", "1", ...fast, "--csv"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`error: model '${broken}' failed: model not found`);
    const rows = r.stdout.trim().split("\n");
    expect(rows[0]!.split(",")).toContain("generation_tokens_per_second_mean");
    expect(rows).toHaveLength(3);
    const header = rows[0]!.split(",");
    const good = rows.find((row) => row.startsWith("tiny,"))!.split(",");
    expect(Number(good[header.indexOf("generation_tokens_per_second_mean")])).toBeGreaterThan(0);
    expect(good[header.indexOf("repetitions")]).toBe("1");
    expect(rows.find((row) => row.startsWith("no-such-model,"))).toMatch(/model not found/);
  }, 20_000);

  test("the table lists the models in command-line order, a failed one too", async () => {
    const r = await mlx(["-m", join(root, "nosuch"), "-m", tiny, "-n", "1", ...fast]);
    expect(r.code).toBe(1);
    const models = r.stdout
      .split("\n")
      .slice(2)
      .filter((line) => line.startsWith("| "))
      .map((line) => line.split("|")[1]!.trim());
    expect(models).toEqual(["nosuch", "tiny"]);
  }, 20_000);

  test("models compared: each speed as a multiple of the first model's, consistent with the means shown", async () => {
    const r = await mlx(["-m", tiny, "-m", join(root, "nosuch"), "-m", tinyQ, "-n", "1", ...fast]);
    expect(r.code).toBe(1);
    const lines = r.stdout.split("\n");
    const header = lines[0]!.split("|").map((cell) => cell.trim());
    const row = (name: string) =>
      lines
        .find((line) => line.startsWith(`| ${name} `))!
        .split("|")
        .map((cell) => cell.trim());
    for (const [speed, ratio] of [
      ["pp16 tokens/s", "pp vs tiny"],
      ["tg8 tokens/s", "tg vs tiny"],
    ] as const) {
      const [s, x] = [header.indexOf(speed), header.indexOf(ratio)];
      expect(x).toBe(s + 1);
      expect(row("tiny")[x]).toBe("1.00×");
      expect(row("nosuch")[x]).toBe("-");
      const mean = (name: string) => Number.parseFloat(row(name)[s]!);
      expect(Number.parseFloat(row("tiny-q4")[x]!)).toBeCloseTo(mean("tiny-q4") / mean("tiny"), 1);
    }
    expect(r.stdout).toContain("pp vs tiny, tg vs tiny: each mean tokens/s as a multiple of that model's");
    // One model: nothing to compare.
    const alone = await mlx(["-m", tiny, "-n", "1", ...fast]);
    expect(alone.stdout).not.toContain(" vs ");
  }, 20_000);

  test("a server's URL as -m is refused before any model runs, with the ways to measure a server", async () => {
    const r = await mlx(["-m", tiny, "-m", "http://user:s3cret@127.0.0.1:1/v1", "-n", "1", ...fast]);
    oneLineError(
      r,
      /^error: -m http:\/\/\*\*\*@127\.0\.0\.1:1\/v1: a server's URL, not a model; measure the server with --url, or .*models\.toml provider/m,
    );
    expect(r.stdout).toBe(""); // tiny was not measured first, only to be followed by a failure
    expect(r.stderr).not.toContain("s3cret");
  }, 20_000);

  test("a stored model named org/repo (as hf: pulls name them) keeps its whole name; a path its last part", async () => {
    const savedHome = process.env.MLX_HOME;
    process.env.MLX_HOME = join(root, "home");
    try {
      await pullModel({ name: "org/tiny", source: tiny });
    } finally {
      process.env.MLX_HOME = savedHome;
    }
    const r = await mlx(["-m", "org/tiny", "-m", tiny, "-n", "1", ...fast, "--csv"]);
    expect(r.code).toBe(0);
    expect(
      r.stdout
        .trim()
        .split("\n")
        .slice(1)
        .map((row) => row.split(",")[0]),
    ).toEqual(["org/tiny", "tiny"]);
  }, 20_000);

  test("a test that does not run (-p 0, -g 0) has no column and no note; one run is '1 run'", async () => {
    const noPrompt = await mlx(["-m", tiny, "-n", "1", "-p", "0", "-g", "8"]);
    expect(noPrompt.code).toBe(0);
    expect(noPrompt.stdout).not.toMatch(/pp\d* tokens\/s|first token|pp: /);
    expect(noPrompt.stdout).toMatch(/\|\s+tg8 tokens\/s \|/);
    // The peak is said to be MLX's, not the process's resident memory that `top` shows.
    const memory = "peak memory: MLX's (weights, KV cache, activations), not the whole process's.";
    expect(noPrompt.stdout).toContain(`1 run each, mean ± standard deviation; tg: 8 generated tokens; ${memory}`);
    const noGeneration = await mlx(["-m", tiny, "-n", "1", "-p", "8", "-g", "0"]);
    expect(noGeneration.code).toBe(0);
    expect(noGeneration.stdout).not.toMatch(/tg\d* tokens\/s|tg: /);
    expect(noGeneration.stdout).toContain(
      `1 run each, mean ± standard deviation; pp: an 8-token prompt, timed to its first token; ${memory}`,
    );
  }, 20_000);

  test("'a' or 'an' before a count, as the number is said", () => {
    for (const n of [8, 11, 18, 80, 86, 800, 8192, 11_000, 18_500]) expect(`${article(n)} ${n}`).toBe(`an ${n}`);
    for (const n of [1, 16, 110, 512, 1100, 1800, 100_000]) expect(`${article(n)} ${n}`).toBe(`a ${n}`);
  });

  test("Ctrl-C mid-benchmark: exit 130, and the in-use marker is gone", async () => {
    expect((await run(["pull", tiny])).code).toBe(0);
    const proc = startBench(["-m", "tiny", "-n", "100000", "-p", "16", "-g", "8"]);
    const marker = join(root, "home", "in-use", "tiny", String(proc.pid));
    await interruptWhileInUse(proc, marker);
  }, 30_000);

  test("Ctrl-C inside one long test (a million tokens to generate): exit 130 at once, not after the test", async () => {
    const long = join(root, "tiny-long");
    writeTinyModel(long, { contextLength: 2_000_000 });
    expect((await run(["pull", long])).code).toBe(0);
    const proc = startBench(["-m", "tiny-long", "-n", "1", "-p", "0", "-g", "1000000"]);
    const marker = join(root, "home", "in-use", "tiny-long", String(proc.pid));
    for (const deadline = Date.now() + 20_000; !existsSync(marker) && Date.now() < deadline; ) await Bun.sleep(10);
    await Bun.sleep(1500); // past the warm-up, into the test
    proc.kill("SIGINT");
    const ended = await Promise.race([proc.exited, Bun.sleep(10_000).then(() => "still running")]);
    proc.kill("SIGKILL");
    expect(ended).toBe(130);
  }, 60_000);

  test("Ctrl-C while the second model is measured: the first model's row is printed, the run is said stopped, exit 130", async () => {
    const second = join(root, "tiny-second");
    writeTinyModel(second, { contextLength: 256, seed: 2 });
    expect((await run(["pull", second])).code).toBe(0);
    const interruptSecond = async (output: string[]) => {
      const proc = startBench(["-m", tinyQ, "-m", "tiny-second", "-n", "100", ...fast, ...output]);
      const marker = join(root, "home", "in-use", "tiny-second", String(proc.pid));
      // The second model marks itself in use once the first is measured: it has 100 runs ahead.
      await interruptWhileInUse(proc, marker);
      return { stdout: await new Response(proc.stdout).text(), stderr: await new Response(proc.stderr).text() };
    };
    const asJson = await interruptSecond(["--json"]);
    expect(asJson.stderr).toMatch(
      /stopped \(Ctrl-C\) while measuring 'tiny-second': the models that finished are reported/,
    );
    const report = JSON.parse(asJson.stdout);
    expect(report.models.map((m: { model: string }) => m.model)).toEqual(["tiny-q4"]);
    expect(report.models[0].prompt_tokens_per_second.samples).toHaveLength(100);
    expect(report.errors).toEqual([]); // the model in progress is neither measured nor failed
    const asTable = await interruptSecond([]);
    expect(asTable.stdout).toMatch(/^\| model /);
    expect(asTable.stdout).toMatch(/\n\| tiny-q4 /);
    expect(asTable.stdout).not.toMatch(/tiny-second/);
  }, 120_000);

  test("--plot writes a well-formed SVG with one bar and one error bar per model and test", async () => {
    const svg = join(root, "models.svg");
    const r = await mlx(["-m", tiny, "-m", tinyQ, "-n", "2", ...fast, "--plot", svg]);
    expect(r.code).toBe(0);
    const text = readFileSync(svg, "utf8");
    expect(text.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(text.trim().endsWith("</svg>")).toBe(true);
    expect(text).toContain("Prompt processing (16-token prompt)");
    expect(text).toContain("Generation (8 tokens)");
    expect(text.match(/<rect [^>]*rx="2"/g)).toHaveLength(4);
    expect(wellFormed(text)).toBe(true);
  }, 20_000);

  test("speculative decoding: --draft-model drafting for itself keeps every draft; --prompt-lookup counts its drafts", async () => {
    // A model drafting for itself agrees with every draft (greedy): acceptance is exactly 1.
    const self = await mlx([
      "-m",
      tiny,
      "--draft-model",
      tiny,
      "--num-draft",
      "2",
      "-n",
      "2",
      "-p",
      "0",
      "-g",
      "12",
      "--json",
    ]);
    expect(self.code).toBe(0);
    const s = JSON.parse(self.stdout).models[0].speculation;
    expect(s).toMatchObject({ method: "draft-model", num_draft: 2, acceptance_rate: 1 });
    expect(s.drafted_tokens).toBeGreaterThan(0);
    expect(s.accepted_tokens).toBe(s.drafted_tokens);
    // The table gets a drafts column; prompt lookup's drafts are counted (kept ≤ drafted).
    const lookup = await mlx(["-m", tiny, "--prompt-lookup", "-n", "1", "-p", "0", "-g", "24"]);
    expect(lookup.code).toBe(0);
    const [header, , row] = lookup.stdout.trim().split("\n");
    expect(header).toMatch(/\| drafts accepted\s+\|$/);
    const [kept, drafted] = row!
      .match(/(\d+)\/(\d+) \(\d+%\) prompt-lookup/)!
      .slice(1)
      .map(Number);
    expect(kept).toBeLessThanOrEqual(drafted!);
    // The prompt suite speculates too, and counts its drafts.
    const suite = await mlx(["--prompts", file("spec.txt", "Say anything\n"), "-m", tiny, "--draft-model", tiny]);
    expect(suite.code).toBe(0);
    expect(suite.stdout).toMatch(/\| drafts accepted\s+\|\n/);
    const [sk, sd] = suite.stdout
      .match(/(\d+)\/(\d+) \(\d+%\) draft-model/)!
      .slice(1)
      .map(Number);
    expect(sk).toBe(sd!);
    // Without speculation no such column.
    expect((await mlx(["-m", tiny, "-n", "1", ...fast])).stdout).not.toContain("drafts accepted");
    oneLineError(
      await mlx(["-m", tiny, "--draft-model", tiny, "--prompt-lookup", "-n", "1", ...fast]),
      /give --draft-model or --prompt-lookup, not both/,
    );
    oneLineError(
      await mlx(["--url", "http://127.0.0.1:9", "--prompt-lookup"]),
      /--prompt-lookup: not used by server mode \(--url\): a server runs its model as it was started/,
    );
  }, 60_000);

  test("--depth: the generation test decodes after a context of that many tokens, held in its KV cache", async () => {
    const at = async (depth: string) => {
      const r = await mlx(["-m", tiny, "-n", "1", "-p", "0", "-g", "8", "-d", depth, "--json"]);
      expect(r.code).toBe(0);
      return JSON.parse(r.stdout).models[0];
    };
    const [none, deep] = [await at("0"), await at("200")];
    expect(none.depth).toBe(0);
    expect(deep.depth).toBe(200);
    expect(deep.generation_tokens_per_second.samples).toHaveLength(1);
    // The 200-token context is prefilled inside the test: its keys, values and activations count.
    expect(deep.generation_peak_memory_bytes).toBeGreaterThan(none.generation_peak_memory_bytes);
    const table = await mlx(["-m", tiny, "-n", "1", "-p", "0", "-g", "8", "-d", "100"]);
    expect(table.stdout).toMatch(/tg8 @ d100 tokens\/s/);
    expect(table.stdout).toMatch(/timed after a 100-token context/);
    oneLineError(await mlx(["-m", tiny, "-p", "8", "-g", "0", "-d", "100"]), /give -g too/);
    oneLineError(
      await mlx(["-m", tiny, "-n", "1", "-p", "0", "-g", "8", "-d", "250"]),
      /-d 250 and -g 8 do not fit the model's context of 256/,
    );
  }, 30_000);

  test("--max-kv-size: a rotating cache measures past the model's context, as run and serve allow", async () => {
    const r = await mlx(["-m", tiny, "-n", "1", "-p", "300", "-g", "8", "-d", "300", "--max-kv-size", "64", "--json"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const [m] = JSON.parse(r.stdout).models;
    expect([m.prompt_tokens, m.depth, m.gen_tokens]).toEqual([300, 300, 8]);
    expect(m.generation_tokens_per_second.samples).toHaveLength(1);
  }, 30_000);

  test("the KV cache and adapter a model ran with are reported: runs with and without --kv-bits or --max-kv-size differ", async () => {
    const wide = join(root, "tiny-head32");
    writeTinyModel(wide, { contextLength: 256, headDim: 32 });
    const args = ["-m", wide, "-n", "1", "-p", "8", "-g", "2"];
    const plain = await mlx([...args, "--json"]);
    const quantized = await mlx([...args, "--kv-bits", "8", "--kv-group-size", "32", "--max-kv-size", "64", "--json"]);
    expect([plain.code, quantized.code]).toEqual([0, 0]);
    const settings = (stdout: string) => {
      const [m] = JSON.parse(stdout).models;
      return { kv_cache: m.kv_cache, max_kv_size: m.max_kv_size, adapter: m.adapter };
    };
    expect(settings(plain.stdout)).toEqual({ kv_cache: null, max_kv_size: null, adapter: null });
    expect(settings(quantized.stdout)).toEqual({
      kv_cache: { bits: 8, group_size: 32, start: 0 },
      max_kv_size: 64,
      adapter: null,
    });
    // The table has the column only where a model did not run as loaded.
    const table = await mlx([...args, "--kv-bits", "8", "--kv-group-size", "32", "--max-kv-size", "64"]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/\| KV cache\s+\|/);
    expect(table.stdout).toMatch(/\| 8-bit, group 32, window 64 \|/);
    expect((await mlx(args)).stdout).not.toMatch(/\| KV cache/);
    const csv = await mlx([...args, "--max-kv-size", "64", "--csv"]);
    const [header, row] = csv.stdout
      .trim()
      .split("\n")
      .map((line) => line.split(","));
    expect(row![header!.indexOf("max_kv_size")]).toBe("64");
    expect(row![header!.indexOf("kv_bits")]).toBe("");
  }, 30_000);

  test("bad flags are one-line errors", async () => {
    oneLineError(await mlx(["-m", tiny, "-n", "0"]), /--repetitions must be a whole number/);
    oneLineError(await mlx(["-m", tiny, "-p", "0", "-g", "0"]), /nothing to measure/);
    oneLineError(
      await mlx(["-m", tiny, "-p", "4000", "-g", "1", "-n", "1"]),
      /does not fit the model's context of 256/,
    );
  }, 20_000);

  test("--plot into a missing folder fails before measuring, in one line", async () => {
    const r = await mlx(["-m", tiny, "-n", "1", ...fast, "--plot", join(root, "no-such-folder", "speed.svg")]);
    oneLineError(r, /^error: cannot write the plot to .*speed\.svg: no such directory$/m);
    expect(r.stdout).toBe(""); // nothing was measured
  }, 20_000);

  test("--plot naming a folder, or under a file, fails before measuring too", async () => {
    const aFile = file("not-a-folder.txt", "");
    for (const [plot, reason] of [
      [root, "it is a directory"],
      [join(aFile, "speed.svg"), "a folder on its path is a file"],
    ] as const) {
      const r = await mlx(["-m", tiny, "-n", "1", ...fast, "--plot", plot]);
      oneLineError(r, new RegExp(`^error: cannot write the plot to .*: ${reason}$`, "m"));
      expect(r.stdout).toBe(""); // nothing was measured
    }
  }, 20_000);

  test("--plot with an empty name (--plot '', --plot=) is refused before measuring, not silently left unused", async () => {
    for (const plot of [["--plot", ""], ["--plot="], ["--plot", " "]]) {
      const r = await mlx(["-m", tiny, "-n", "1", ...fast, ...plot]);
      oneLineError(r, /^error: --plot needs a file name$/m);
      expect(r.stdout).toBe(""); // nothing was measured
    }
  }, 20_000);

  test("a flag of another mode is refused, not silently left unused", async () => {
    oneLineError(
      await mlx(["-m", tiny, ...fast, "--requests", "4", "--max-tokens", "9"]),
      /^error: --requests, --max-tokens: not used by model mode/m,
    );
    const prompts = file("refused.txt", "Say hi\n");
    oneLineError(
      await mlx(["--prompts", prompts, "-m", tiny, "-n", "3", "-p", "64"]),
      /^error: --repetitions, --prompt-tokens: not used by the prompt suite/m,
    );
  }, 20_000);
});

describe("mlx bench: prompt suite", () => {
  test("regex and schema expectations: per-model pass counts and per-prompt verdicts", async () => {
    file("answer.schema.json", JSON.stringify({ type: "object", required: ["answer"] }));
    const prompts = file(
      "suite.jsonl",
      [
        JSON.stringify({ prompt: "Say anything", expect_regex: "[\\s\\S]*" }),
        JSON.stringify({ prompt: "Say something impossible", expect_regex: "^IMPOSSIBLE-\\d{9}$" }),
        "",
        JSON.stringify({ prompt: "Answer in JSON", expect_schema: "answer.schema.json" }),
        "A plain line prompt",
      ].join("\n"),
    );
    const r = await mlx(["--prompts", prompts, "-m", tiny, "-m", tinyQ, "--max-tokens", "6", "--json"]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.mode).toBe("prompts");
    expect(out.models.map((m: { model: string }) => m.model)).toEqual(["tiny", "tiny-q4"]);
    for (const m of out.models) {
      expect(m.checked).toBe(3); // the plain line has no expectation
      expect(m.passed).toBe(1); // random weights: only the match-anything regex passes
      expect(m.prompt_tokens_per_second.mean).toBeGreaterThan(0);
    }
    expect(out.prompts.map((p: { line: number }) => p.line)).toEqual([1, 2, 4, 5]);
    expect(out.prompts[0].results.tiny.passed).toBe(true);
    expect(out.prompts[1].results["tiny-q4"].passed).toBe(false);
    expect(out.prompts[1].results.tiny.reasons[0]).toMatch(/does not match/);
    expect(out.prompts[2].expect_schema).toBe("answer.schema.json");
    expect(out.prompts[2].results.tiny.passed).toBe(false);
    expect(out.prompts[3].results.tiny.passed).toBeNull();
    expect(out.prompts[0].results.tiny.generated_tokens).toBeLessThanOrEqual(6);

    const table = await mlx(["--prompts", prompts, "-m", tiny, "--max-tokens", "4", "--expect-regex", "."]);
    expect(table.code).toBe(0);
    expect(table.stdout).toMatch(/\| tiny .*\|\s+2\/4 \|/); // the plain line now has --expect-regex; line 4 keeps only its schema
    expect(table.stdout).toMatch(/\| line \| prompt\s+\| expectation\s+\| tiny \|/);
    expect(table.stdout).toContain("over the 4 prompts (greedy, chat template); peak memory: MLX's (weights, KV");
    expect(table.stdout).toMatch(/\|\s+2 \| Say something impossible\s+\| regex \^IMPOSSIBLE-\\d\{9\}\$\s+\| FAIL \|/);
  }, 20_000);

  test("a one-token answer has no generation speed: null in --json, empty in --csv, as in the summary, not 0", async () => {
    const prompts = file("short.txt", "first prompt\nsecond prompt\n");
    const r = await mlx(["--prompts", prompts, "-m", tiny, "--max-tokens", "1", "--json"]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.models[0].generation_tokens_per_second).toEqual({ mean: null, sd: null });
    for (const p of out.prompts) {
      expect(p.results.tiny.generated_tokens).toBeLessThanOrEqual(1);
      expect(p.results.tiny.generation_tokens_per_second).toBeNull();
      expect(p.results.tiny.prompt_tokens_per_second).toBeGreaterThan(0);
    }
    const csv = await mlx(["--prompts", prompts, "-m", tiny, "--max-tokens", "1", "--csv"]);
    const [header, ...rows] = csv.stdout.trim().split("\n");
    const column = header!.split(",").indexOf("generation_tokens_per_second");
    expect(rows.map((row) => row.split(",")[column])).toEqual(["", ""]);
  }, 20_000);

  test("a prompt with '|' keeps the Markdown table's columns (escaped as \\|)", async () => {
    const prompts = file("pipes.txt", "a | b || c\n");
    const r = await mlx(["--prompts", prompts, "-m", tiny, "--max-tokens", "2", "--expect-regex", "x|y"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/\|\s+1 \| a \\\| b \\\|\\\| c\s+\| regex x\\\|y\s+\| (pass|FAIL) \|/);
    // Every row of the per-prompt table has as many column bars as its header.
    const perPrompt = r.stdout.split("\n").filter((line) => line.startsWith("| line") || /^\|\s+1 \|/.test(line));
    const bars = perPrompt.map((line) => line.replaceAll("\\|", "").split("|").length);
    expect(new Set(bars).size).toBe(1);
  }, 20_000);

  test("a prompt the model cannot answer (longer than its context) is named by its line", async () => {
    const prompts = file("too-long.txt", `Say hi\n\n${"word ".repeat(400)}\n`);
    const r = await mlx(["--prompts", prompts, "-m", tiny, "--max-tokens", "2"]);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(
      /^error: model '.*tiny' failed: prompt on line 3: This model's maximum context length is 256 tokens\. However, the prompt is \d+ tokens/m,
    );
  }, 20_000);

  test("every model failed: their rows alone, without a note on figures or an empty table of verdicts", async () => {
    const prompts = file("all-failed.txt", "Say hi\nSay bye\n");
    const r = await mlx(["--prompts", prompts, "-m", join(root, "missing-model")]);
    expect(r.code).toBe(1);
    expect(r.stdout.trim().split("\n")).toHaveLength(3); // header, rule, the failed row
    expect(r.stdout).toMatch(/^\| missing-model \| -\s+\| +- \| +failed \|/m);
  }, 20_000);

  test("plain lines with --expect-schema on every prompt, and --csv", async () => {
    const schema = file("any.schema.json", JSON.stringify({}));
    const prompts = file("plain.txt", "first prompt\nsecond prompt\n");
    const r = await mlx(["--prompts", prompts, "--expect-schema", schema, "-m", tiny, "--max-tokens", "3", "--csv"]);
    expect(r.code).toBe(0);
    const rows = r.stdout.trim().split("\n");
    expect(rows[0]).toStartWith("model,line,prompt,expectation,passed");
    expect(rows[1]).toStartWith("tiny,1,first prompt,schema any.schema.json,");
    expect(rows).toHaveLength(3);
  }, 20_000);

  test("a prompt file that does not parse: the file and line are named", async () => {
    const bad = file("bad.jsonl", `${JSON.stringify({ prompt: "fine" })}\n{"prompt": "broken",\n`);
    oneLineError(
      await mlx(["--prompts", bad, "-m", tiny]),
      new RegExp(`${bad.replace(/[.]/g, "\\.")} line 2: not valid JSON`),
    );
    const noPrompt = file("noprompt.jsonl", `{"question": "x"}\n`);
    oneLineError(
      await mlx(["--prompts", noPrompt, "-m", tiny]),
      /noprompt\.jsonl line 1: "prompt" must be a non-empty string/,
    );
    oneLineError(await mlx(["--prompts", join(root, "missing.txt"), "-m", tiny]), /prompt file not found/);
  }, 20_000);

  test("an invalid schema, or a schema file that is not JSON: a clear error", async () => {
    const prompts = file("p.txt", "hello\n");
    const invalid = file("invalid.schema.json", JSON.stringify({ type: "no-such-type" }));
    oneLineError(
      await mlx(["--prompts", prompts, "--expect-schema", invalid, "-m", tiny]),
      /invalid\.schema\.json: invalid JSON schema: .*type/,
    );
    const notJson = file("notjson.schema.json", "{ type: object");
    oneLineError(
      await mlx(["--prompts", prompts, "--expect-schema", notJson, "-m", tiny]),
      /notjson\.schema\.json: not valid JSON/,
    );
    oneLineError(
      await mlx(["--prompts", prompts, "--expect-regex", "(unclosed", "-m", tiny]),
      /--expect-regex: invalid regular expression/,
    );
  }, 20_000);
});

describe("bench library", () => {
  test("generation speed counts the decode steps timed: the end-of-sequence's too, the first token's not", async () => {
    // Greedy answer: "A", "B", "C", "D", then <|im_end|> (its end-of-sequence).
    const dir = join(root, "scripted");
    writeScriptedModel(dir, ["A", "B", "C", "D"]);
    const lm = loadModel(dir);
    try {
      const answer = (maxTokens: number) =>
        complete(soloScheduler(lm), {
          prompt: { kind: "text", text: "Say it.", template: true },
          sampling: { ...defaultSampling, temperature: 0 },
          maxTokens,
        });
      // tokens/s × seconds: the tokens the speed counted over the time it timed.
      const counted = (s: { generationTokensPerSecond: number; generationSeconds: number }) =>
        s.generationTokensPerSecond * s.generationSeconds;
      // Ended by its end-of-sequence: four tokens, the first from the prefill, then four decode
      // steps (B, C, D and <|im_end|>), the last of which the answer's count leaves out.
      const ended = await answer(32);
      expect([ended.finishReason, ended.stats.generatedTokens]).toEqual(["stop", 4]);
      expect(counted(ended.stats)).toBeCloseTo(4, 6);
      // Cut by max tokens: three tokens, two decode steps after the first.
      const cut = await answer(3);
      expect([cut.finishReason, cut.stats.generatedTokens]).toEqual(["length", 3]);
      expect(counted(cut.stats)).toBeCloseTo(2, 6);
    } finally {
      lm.free();
    }
  });

  test("statistics: sample standard deviation, percentiles", () => {
    expect(sd([2, 4, 4, 4, 5, 5, 7, 9])).toBeCloseTo(2.138, 3);
    expect(sd([3])).toBe(0);
    expect(percentile([1, 2, 3, 4], 50)).toBe(2.5);
    expect(
      percentile(
        Array.from({ length: 101 }, (_, i) => i),
        99,
      ),
    ).toBe(99);
    expect(summarize([1, Number.NaN, 3]).mean).toBe(2);
  });

  test("statistics of a load test's millions of inter-token gaps: min and max too", () => {
    const gaps = Array.from({ length: 2_000_000 }, (_, i) => (i * 7919) % 1000);
    const s = summarize(gaps);
    expect([s.min, s.max, s.n]).toEqual([0, 999, 2_000_000]);
    expect(s.median).toBe(499.5);
  });

  test("a /g or /y expectation judges every answer alike, not from where the last match ended", () => {
    for (const flags of ["g", "y", "gi"]) {
      const regex = { source: `/the/${flags}`, test: compileRegex(`/the/${flags}`, "x") };
      const verdicts = ["the answer is 4", "the answer is 4", "the answer is 4"].map(
        (answer) => checkAnswer(answer, { regex }).passed,
      );
      expect(verdicts).toEqual([true, true, true]);
    }
  });

  test("answers: JSON found in fences or prose; regex with /flags/", () => {
    expect(extractJson('Sure:\n```json\n{"a": 1}\n```').value).toEqual({ a: 1 });
    expect(extractJson('The answer is {"a": [1, 2]} as asked.').value).toEqual({ a: [1, 2] });
    expect(extractJson("no json here").found).toBe(false);
    expect(compileRegex("/paris/i", "x").test("PARIS")).toBe(true);
    const schema = readSchemaFile(
      file(
        "city.schema.json",
        JSON.stringify({ type: "object", properties: { city: { type: "string" } }, required: ["city"] }),
      ),
    );
    expect(checkAnswer('{"city": "Paris"}', { schema }).passed).toBe(true);
    const wrong = checkAnswer('{"city": 3}', { schema });
    expect(wrong.passed).toBe(false);
    expect(wrong.reasons[0]).toMatch(/\/city must be string/);
    expect(checkAnswer("anything", {}).passed).toBeUndefined();
  });

  test("JSON in prose: the outermost value, an array of one object too (not the object inside it)", () => {
    expect(extractJson('Here is the list: [{"city": "Paris"}]').value).toEqual([{ city: "Paris" }]);
    expect(extractJson('Here: {"cities": [1, 2]} done').value).toEqual({ cities: [1, 2] });
    const schema = { source: "list", validate: compileSchema({ type: "array", items: { type: "object" } }, "x") };
    expect(checkAnswer('Sure, the cities: [{"city": "Paris"}]', { schema }).passed).toBe(true);
  });

  test("prompt files: inline schemas, unknown keys named", () => {
    const p = parsePromptFile(
      file("inline.jsonl", `${JSON.stringify({ prompt: "x", expect_schema: { type: "array" } })}\n`),
    );
    expect(p[0]!.schema!.validate([1])).toBe(true);
    expect(() =>
      parsePromptFile(file("typo.jsonl", `${JSON.stringify({ prompt: "x", "expect-regex": "a" })}\n`)),
    ).toThrow(/typo\.jsonl line 1: unknown key "expect-regex"/);
    expect(() => parsePromptFile(file("empty.txt", "\n\n"))).toThrow(/no prompts/);
  });

  test("-d with a draft model: the draft's catch-up on the context is untimed, as the model's prefill is", async () => {
    const lm = loadModel(tiny);
    const draft = loadModel(tiny);
    lm.speculation = { draft, numDraft: 2 };
    // The draft model reads the context at its first draft (its cache catches up then), many
    // positions at once: made slow here, 1.5 s, so that it shows if it is timed.
    const layers = draft.model.layers.bind(draft.model);
    let catchUps = 0;
    draft.model.layers = (h, caches, start, end) => {
      if (h.shape[1]! > 16) {
        catchUps++;
        Bun.sleepSync(1500);
      }
      return layers(h, caches, start, end);
    };
    try {
      const r = await benchLoadedModel(lm, "tiny", { repetitions: 1, promptTokens: 0, genTokens: 8, depth: 100 });
      expect(catchUps).toBe(2); // the warm-up's and the run's
      expect(r.speculation!.drafted).toBeGreaterThan(0);
      // 8 tokens of a tiny model after the context: well under the catch-up's 1.5 s.
      expect(r.generationTokensPerSecond.mean).toBeGreaterThan(8);
    } finally {
      lm.free();
      draft.free();
    }
  }, 30_000);

  test("a prompt or schema file that is a directory: an error that says so, not a JSON one", () => {
    expect(() => parsePromptFile(root)).toThrow(`cannot read prompt file ${root}: it is a directory`);
    const schemaIsFolder = file("folder-schema.jsonl", `${JSON.stringify({ prompt: "x", expect_schema: "." })}\n`);
    expect(() => parsePromptFile(schemaIsFolder)).toThrow(`cannot read schema file ${root}: it is a directory`);
  });
});
