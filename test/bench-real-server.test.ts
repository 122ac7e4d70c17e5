// `mlx bench` against a real `mlx serve` on loopback (in this process, port 0, a tiny model):
// a remote model (models.toml provider) measured side by side with a local one.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { RunningServer } from "../src/server/app";
import { cliRunner } from "./helpers/cli";
import { serve, tinyModel } from "./helpers/serve";

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
});

describe("mlx bench --url", () => {
  test("model-mode flags (-p, -g, -d, -n) are refused rather than ignored", async () => {
    const r = await mlx(["bench", "--url", server.url, "-m", model, "-p", "64", "-g", "8", "--requests", "1"]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim()).toBe("error: --prompt-tokens, --gen-tokens: not used by server mode (--url)");
    expect(r.stdout).toBe("");
  }, 60_000);
});
