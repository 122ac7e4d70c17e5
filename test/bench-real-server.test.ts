// `mlx bench` against a real `mlx serve` on loopback (in this process, port 0, a tiny model):
// a remote model (models.toml provider) measured side by side with a local one.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { prose } from "../src/bench/model";
import type { RunningServer } from "../src/server/app";
import { cliRunner } from "./helpers/cli";
import { wellFormed } from "./helpers/svg";
import { serve, tinyModel } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const home = join(mkdtempSync(join(tmpdir(), "mlx-bench-real-")), "home");
const mlx = cliRunner(home);
let server: RunningServer;
let model: string;

beforeAll(() => {
  model = tinyModel();
  server = serve({ defaultModel: model });
  mkdirSync(home, { recursive: true });
  writeFileSync(
    join(home, "models.toml"),
    `[models.far]\nprovider = "openai"\nbase_url = "${server.url}/v1"\nmodel = "${model}"\n`,
  );
});
afterAll(() => server.stop());

/** The cells of the table row that starts with `name`. */
const rowOf = (table: string, name: string) =>
  table
    .split("\n")
    .find((line) => line.startsWith(`| ${name} `))!
    .split("|")
    .map((cell) => cell.trim());

describe("mlx bench -m remote -m local", () => {
  test("the headers name the tests asked for; the remote row shows the prompt tokens its provider counted", async () => {
    const r = await mlx(["bench", "-m", "far", "-m", model, "-p", "16", "-g", "4", "-n", "1"]);
    expect(r.code).toBe(0);
    const lines = r.stdout.split("\n");
    const header = lines[0]!.split("|").map((cell) => cell.trim());
    const pp = header.indexOf("pp16 tokens/s");
    expect(pp).toBeGreaterThan(0); // the asked 16, not the remote's count (its chat template adds tokens)
    // The provider counted more than 16 (the chat template): the remote row says how many.
    const counted = /\(pp(\d+)\)$/.exec(rowOf(r.stdout, "far")[pp]!);
    expect(Number(counted?.[1])).toBeGreaterThan(16);
    // The local model ran exactly what was asked: a plain measurement.
    expect(rowOf(r.stdout, "tiny")[pp]).toMatch(/^\d+\.\d+ ± \d+\.\d+$/);
    // The note says why a remote row's counts differ: a generation may end at its end-of-sequence.
    expect(r.stdout).toContain("tg: up to its end-of-sequence, where it does not take ignore_eos");
  }, 60_000);

  test("--plot: the panels are the tests asked for, not the prompt tokens a remote model's provider counted", async () => {
    const plot = join(home, "speed.svg");
    const r = await mlx([
      "bench",
      "-m",
      "far",
      "-m",
      model,
      "-p",
      "16",
      "-g",
      "4",
      "-d",
      "8",
      "-n",
      "1",
      "--plot",
      plot,
    ]);
    expect(r.code).toBe(0);
    const svg = readFileSync(plot, "utf8");
    expect(wellFormed(svg)).toBe(true);
    const titles = [...svg.matchAll(/font-size="15"[^>]*>([^<]*)</g)].map((m) => m[1]);
    expect(titles).toEqual(["Prompt processing (16-token prompt)", "Generation (4 tokens after 8 of context)"]);
  }, 60_000);

  test("--json: a remote model's size and memory, unseen from here, are null, not 0 bytes", async () => {
    const r = await mlx(["bench", "-m", "far", "-m", model, "-p", "16", "-g", "4", "-n", "1", "--json"]);
    expect(r.code).toBe(0);
    const [far, local] = JSON.parse(r.stdout).models;
    for (const key of ["size_bytes", "peak_memory_bytes", "prompt_peak_memory_bytes", "generation_peak_memory_bytes"]) {
      expect(far[key]).toBeNull();
      expect(local[key]).toBeGreaterThan(0);
    }
  }, 60_000);

  test("--json: the prompt test counts the tokens the provider prefilled, not those it had cached", async () => {
    const r = await mlx(["bench", "-m", "far", "-p", "16", "-g", "0", "-n", "1", "--json"]);
    expect(r.code).toBe(0);
    const [far] = JSON.parse(r.stdout).models;
    // A prompt of the bench's shape (a fresh 8-character prefix, then 16 tokens' worth of its
    // prose): the chat template's start is served from the prefix cache.
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused" });
    const { usage } = await client.chat.completions.create({
      model,
      messages: [{ role: "user", content: `${crypto.randomUUID().slice(0, 8)} ${prose.slice(0, 64)}` }],
      max_tokens: 1,
    });
    const cached = usage!.prompt_tokens_details!.cached_tokens!;
    expect(cached).toBeGreaterThan(12);
    // Eight random hex digits take from 1 to 8 tokens: the two prompts differ by up to 7 (counting
    // the cached tokens too would be off by more than 12).
    expect(Math.abs(far.prompt_tokens - (usage!.prompt_tokens - cached))).toBeLessThanOrEqual(7);
    const [rate] = far.prompt_tokens_per_second.samples;
    const [seconds] = far.time_to_first_token_seconds.samples;
    expect(rate * seconds).toBeCloseTo(far.prompt_tokens, 6);
  }, 60_000);

  test("a one-token answer has no decode time to measure: its generation speed is '-' and null, not 0 tokens/s", async () => {
    const table = await mlx(["bench", "-m", "far", "-p", "0", "-g", "1", "-n", "2"]);
    expect(table.code).toBe(0);
    expect(rowOf(table.stdout, "far").at(-3)).toBe("-"); // the tg1 column, before peak memory
    expect(table.stdout).not.toContain("peak memory: MLX's"); // the provider's memory is not shown: nothing to explain
    const r = await mlx(["bench", "-m", "far", "-p", "0", "-g", "1", "-n", "2", "--json"]);
    expect(r.code).toBe(0);
    const [far] = JSON.parse(r.stdout).models;
    expect(far.gen_tokens).toBe(1);
    expect(far.generation_tokens_per_second.mean).toBeNull();
    expect(far.generation_tokens_per_second.samples).toEqual([null, null]);
    // Two tokens give one decode interval: a figure again.
    const two = JSON.parse((await mlx(["bench", "-m", "far", "-p", "0", "-g", "2", "-n", "1", "--json"])).stdout);
    expect(two.models[0].generation_tokens_per_second.mean).toBeGreaterThan(0);
  }, 60_000);
});

describe("mlx bench: flags of a model loaded here, with a remote model", () => {
  test("a remote model alone refuses them, as run and chat do", async () => {
    const hostfile = join(home, "hosts.json");
    writeFileSync(hostfile, JSON.stringify([["127.0.0.1:1"], ["127.0.0.1:2"]]));
    for (const flags of [["--kv-bits", "8"], ["--max-kv-size", "64"], ["--prompt-lookup"], ["--hostfile", hostfile]]) {
      const r = await mlx(["bench", "-m", "far", ...flags, "-p", "16", "-g", "0", "-n", "1"]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr.trim()).toBe(
        `error: ${flags[0]} is for a model loaded here; 'far' is served by a remote provider (models.toml)`,
      );
    }
    const suite = join(home, "one-prompt.txt");
    writeFileSync(suite, "Say hi.\n");
    const r = await mlx(["bench", "--prompts", suite, "-m", "far", "--kv-bits", "8", "--max-tokens", "2"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toMatch(/^error: --kv-bits is for a model loaded here; 'far' is served/);
  }, 60_000);

  test("beside a local model they apply to it, and one line on stderr names the remote model they skip", async () => {
    const r = await mlx([
      "bench",
      "-m",
      "far",
      "-m",
      model,
      "--max-kv-size",
      "64",
      "--prompt-lookup",
      "-p",
      "16",
      "-g",
      "4",
      "-n",
      "1",
      "--json",
    ]);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    const warnings = r.stderr.split("\n").filter((line) => line.startsWith("warning:"));
    expect(warnings).toEqual([
      "warning: --max-kv-size, --prompt-lookup apply to the models loaded here, not to 'far' (served by a remote provider)",
    ]);
    const [far, local] = JSON.parse(r.stdout).models;
    // The local row speculated; the remote row does not claim drafts it never made.
    expect(local.speculation.method).toBe("prompt-lookup");
    expect(far.speculation).toBeUndefined();
    expect(far.generation_tokens_per_second.mean).toBeGreaterThan(0);
  }, 60_000);
});

describe("mlx bench --url", () => {
  test("model-mode flags (-p, -g, -d, -n) are refused rather than ignored", async () => {
    const r = await mlx(["bench", "--url", server.url, "-m", model, "-p", "64", "-g", "8", "--requests", "1"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe("error: --prompt-tokens, --gen-tokens: not used by server mode (--url)");
    expect(r.stdout).toBe("");
  }, 60_000);

  test("the flags of a model loaded here, or split across processes, are refused rather than ignored", async () => {
    for (const flags of [["--kv-bits", "8"], ["--max-kv-size", "64"], ["--adapter", home], ["--tensor-parallel"]]) {
      const r = await mlx(["bench", "--url", server.url, "--concurrency", "1", "--requests", "1", ...flags]);
      expect(r.code).toBe(1);
      expect(r.stdout).toBe("");
      expect(r.stderr.trim()).toBe(
        `error: ${flags[0]}: not used by server mode (--url): a server runs its model as it was started`,
      );
    }
  }, 30_000);

  test("no request is answered from the server's prefix cache: each prefills its whole prompt", async () => {
    // A server of its own, so that its counters hold this bench's requests only.
    const fresh = serve({ defaultModel: model });
    try {
      const words = "the lighthouse keeper watched the storm roll over the grey sea all night long ".repeat(5);
      const file = join(home, "one-prompt.txt");
      writeFileSync(file, `${words.trim()}\n`);
      const r = await mlx([
        "bench",
        "--url",
        fresh.url,
        "--prompts",
        file,
        "--requests",
        "3",
        "--concurrency",
        "1",
        "--max-tokens",
        "2",
      ]);
      expect(r.code).toBe(0);
      const metrics = await (await fetch(`${fresh.url}/metrics`)).text();
      const value = (series: string) => Number(metrics.match(new RegExp(`^${series} (\\S+)$`, "m"))![1]);
      const prefilled =
        value("mlx_prompt_tokens_total") - value(`mlx_prefix_cache_hit_tokens_total\\{model="${model}"\\}`);
      // The warm-up and 3 requests of the same prompt: each prefills at least its 75 words.
      expect(prefilled).toBeGreaterThanOrEqual(4 * 75);
    } finally {
      await fresh.stop();
    }
  }, 60_000);

  test("requests that failed at a level where others completed are said on stderr with the server's reason", async () => {
    // The second prompt does not fit the tiny model's context of 256 tokens: the server refuses it.
    const file = join(home, "one-too-long.txt");
    writeFileSync(file, `hello there\n${"a long prompt ".repeat(200)}\n`);
    const args = ["--url", server.url, "-m", model, "--prompts", file, "--max-tokens", "2"];
    const r = await mlx(["bench", ...args, "--requests", "4", "--concurrency", "1"]);
    expect(r.code).toBe(0);
    expect(r.stderr).toMatch(/^warning: concurrency 1: 2 of 4 requests failed \(HTTP 400: .*context/m);
  }, 60_000);

  test("a request the server refuses: its error message in full, not its JSON cut short", async () => {
    const r = await mlx(["bench", "--url", server.url, "-m", "no-such-model", "--requests", "1", "--concurrency", "1"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    expect(r.stderr).toMatch(/failed: HTTP 404: unknown model 'no-such-model' \(.*\)[^{}]*$/);
    expect(r.stderr).not.toContain('{"error"');
  }, 60_000);

  test("--csv: a figure without samples (one-token answers have no inter-token latency) is an empty cell", async () => {
    const r = await mlx(["bench", "--url", server.url, "-m", model, "--requests", "2", "--max-tokens", "1", "--csv"]);
    expect(r.code).toBe(0);
    const [header, row] = r.stdout
      .trim()
      .split("\n")
      .map((line) => line.split(","));
    const cell = (name: string) => row![header!.indexOf(name)];
    expect(cell("itl_ms_median")).toBe("");
    expect(cell("tpot_ms_mean")).toBe("");
    expect(Number(cell("ttft_ms_median"))).toBeGreaterThan(0);
    expect(row!.filter((c) => c !== "" && !Number.isFinite(Number(c)))).toEqual([]);
  }, 60_000);

  test("--api-key: a server that requires a key is measured; without the key the 401 is the error", async () => {
    const locked = serve({ defaultModel: model, apiKey: "bench-key" });
    try {
      const args = ["bench", "--url", locked.url, "--requests", "2", "--concurrency", "1", "--max-tokens", "2"];
      const refused = await mlx(args);
      expect(refused.code).toBe(1);
      expect(refused.stderr).toContain("HTTP 401");
      expect(refused.stderr).toContain("(the server wants a key: give it with --api-key or $MLX_API_KEY)");
      const r = await mlx([...args, "--api-key", "bench-key", "--json"]);
      expect(r.code).toBe(0);
      const [level] = JSON.parse(r.stdout).levels;
      expect(level.completed).toBe(2);
      expect(level.failed).toBe(0);
    } finally {
      await locked.stop();
    }
  }, 60_000);

  test("a base model (no chat template) is measured through /v1/completions, and the report says so", async () => {
    const base = join(home, "..", "tiny-base");
    writeTinyModel(base, { contextLength: 256 });
    const configFile = join(base, "tokenizer_config.json");
    const { chat_template: _, ...withoutTemplate } = JSON.parse(readFileSync(configFile, "utf8"));
    writeFileSync(configFile, JSON.stringify(withoutTemplate));
    const plain = serve({ defaultModel: base });
    try {
      const args = ["bench", "--url", plain.url, "--requests", "2", "--concurrency", "1", "--max-tokens", "4"];
      const r = await mlx([...args, "--json"]);
      expect(r.code).toBe(0);
      const report = JSON.parse(r.stdout);
      expect(report.endpoint).toBe("/v1/completions");
      expect(report.levels[0].completed).toBe(2);
      expect(report.levels[0].output_tokens).toBe(8);
      const table = await mlx(args);
      expect(table.stdout).toContain("streaming /v1/completions");
    } finally {
      await plain.stop();
    }
  }, 60_000);

  test("a chat model is measured through /v1/chat/completions", async () => {
    const r = await mlx([
      "bench",
      "--url",
      server.url,
      "--requests",
      "1",
      "--concurrency",
      "1",
      "--max-tokens",
      "2",
      "--json",
    ]);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).endpoint).toBe("/v1/chat/completions");
  }, 60_000);
});

describe("mlx bench --prompts -m remote -m local", () => {
  test("a remote model runs the prompt suite as a local one: pass counts, verdicts, timings from the stream", async () => {
    const prompts = join(home, "suite.jsonl");
    writeFileSync(
      prompts,
      [
        JSON.stringify({ prompt: "Say something.", expect_regex: "[\\s\\S]" }),
        JSON.stringify({ prompt: "Say nothing at all.", expect_regex: "^never answered$" }),
        "Count to three.",
      ].join("\n"),
    );
    const args = ["bench", "--prompts", prompts, "-m", "far", "-m", model, "--max-tokens", "6"];
    const r = await mlx([...args, "--json"]);
    expect(r.stderr).not.toMatch(/error/);
    expect(r.code).toBe(0);
    const report = JSON.parse(r.stdout);
    const [far, local] = report.models;
    expect(far).toMatchObject({ model: "far", format: "remote", passed: 1, checked: 2, size_bytes: null });
    expect(far.peak_memory_bytes).toBeNull();
    expect(local).toMatchObject({ passed: 1, checked: 2 });
    for (const p of report.prompts) {
      const [remote, here] = [p.results.far, p.results[local.model]];
      // The same weights, greedy, through the same chat template: the same answer and verdict.
      expect(remote.answer).toBe(here.answer);
      expect(remote.passed).toBe(here.passed);
      expect(remote.generated_tokens).toBe(6);
      expect(remote.prompt_tokens).toBeGreaterThan(0);
      expect(remote.time_to_first_token_seconds).toBeGreaterThan(0);
      expect(remote.generation_tokens_per_second).toBeGreaterThan(0);
      // Its speed is the tokens it prefilled over the wait for its first token.
      expect(remote.prompt_tokens_per_second * remote.time_to_first_token_seconds).toBeCloseTo(remote.prompt_tokens, 6);
    }
    expect(far.generation_tokens_per_second.mean).toBeGreaterThan(0);
    const table = await mlx(args);
    expect(table.code).toBe(0);
    const summary = rowOf(table.stdout, "far");
    expect(summary.at(-2)).toBe("1/2"); // passed
    expect(summary[3]).toBe("-"); // size, unseen from here
    const verdicts = table.stdout.split("\n").filter((line) => /^\|\s+[12] \|/.test(line));
    expect(verdicts[0]).toMatch(/\| pass \| pass \|$/);
    expect(verdicts[1]).toMatch(/\| FAIL \| FAIL \|$/);
  }, 60_000);
});
