// Prompt cache files on a model split across processes: each rank saves and loads its own
// layers' share (rank 0's in FILE, rank R's in FILE.rankR), tied to the file by one save id and
// to the split; a run from the file answers as one process does from its own, a served
// --prompt-cache-dir comes back after a restart, and a file of another split is refused.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, utimesSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { cliRunner } from "./helpers/cli";
import { launchServe } from "./helpers/launch";
import { post, serve } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const home = process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home");
const mlx = cliRunner(home);
/** `mlx <args>` split over two ranks (`mlx launch -n 2 -- <args>`). */
const onTwoRanks = (args: string[], stdin?: string) => mlx(["launch", "-n", "2", "--", ...args], stdin);
let dir: string;
let tiny: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mlx-prompt-cache-split-"));
  tiny = join(dir, "tiny");
  writeTinyModel(tiny, { layers: 3, seed: 7, contextLength: 1024 });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const document = Array.from({ length: 30 }, (_, i) => `Line ${i}: item ${i} is worth ${(i * 7) % 13}.`).join("\n");
const question = ["--json", "--temp", "0", "--max-tokens", "12", "What is item 3 worth?"];

describe("mlx launch -n 2 -- cache-prompt, then -- run --prompt-cache", () => {
  test("tensor parallel and pipeline stages: the single process's tokens from its own file; cached tokens counted", async () => {
    const alone = join(dir, "alone.cache");
    expect((await mlx(["cache-prompt", "-m", tiny, alone], document)).code).toBe(0);
    const expected = JSON.parse((await mlx(["run", "-m", tiny, "--prompt-cache", alone, ...question])).stdout);
    expect(expected.stats.cached_tokens).toBeGreaterThan(100);
    for (const [name, split] of [
      ["tp", ["--tensor-parallel"]],
      ["stages", ["--layers", "0,1-2"]],
    ] as const) {
      const file = join(dir, `${name}.cache`);
      const saved = await onTwoRanks(["cache-prompt", "-m", tiny, ...split, file], document);
      expect(saved.code).toBe(0);
      // Rank 0's share in the file, rank 1's beside it.
      expect(
        readdirSync(dir)
          .filter((f) => f.startsWith(`${name}.cache`))
          .sort(),
      ).toEqual([`${name}.cache`, `${name}.cache.rank1`]);
      const run = await onTwoRanks(["run", "-m", tiny, ...split, "--prompt-cache", file, ...question]);
      expect(run.stderr).toBe("");
      const answer = JSON.parse(run.stdout);
      expect(answer.token_ids).toEqual(expected.token_ids);
      expect(answer.stats.cached_tokens).toBe(expected.stats.cached_tokens);
    }
  }, 180_000);

  test("a file of another split, or one whose share is gone, is refused in one line", async () => {
    const file = join(dir, "tp.cache");
    const stages = await onTwoRanks(["run", "-m", tiny, "--layers", "0,1-2", "--prompt-cache", file, "hi"]);
    expect(stages.code).not.toBe(0);
    expect(stages.stderr).toContain(
      `${file} was made for another split of the model (tensor-parallel 2, not layers 0,1-2)`,
    );
    const alone = await mlx(["run", "-m", tiny, "--prompt-cache", file, "hi"]);
    expect(alone.code).toBe(1);
    expect(alone.stderr.trim()).toBe(
      `error: ${file} was made for another split of the model (tensor-parallel 2, not one process)`,
    );
    rmSync(`${file}.rank1`);
    const missing = await onTwoRanks(["run", "-m", tiny, "--tensor-parallel", "--prompt-cache", file, "hi"]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toContain(
      `a share of ${file} (${file}.rank1, ...) is missing, damaged or from another save`,
    );
  }, 120_000);
});

describe("mlx launch -n 2 -- serve --prompt-cache-dir", () => {
  test("the prompt comes back from every rank's share after a restart: cached tokens, the same answer", async () => {
    const cacheDir = join(dir, "served");
    const system = Array.from({ length: 60 }, (_, i) => `rule ${i % 11}`).join("; ");
    const ask = async () => {
      const server = await launchServe(home, 2, tiny, ["--tensor-parallel", "--prompt-cache-dir", cacheDir]);
      try {
        const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
        const r = await client.chat.completions.create({
          model: tiny,
          messages: [
            { role: "system", content: system },
            { role: "user", content: "What is rule 3?" },
          ],
          max_tokens: 8,
          temperature: 0,
        });
        return { text: r.choices[0]!.message.content, usage: r.usage! };
      } finally {
        server.proc.kill("SIGTERM");
        expect(await server.proc.exited).toBe(0);
      }
    };
    const first = await ask();
    expect(first.usage.prompt_tokens_details?.cached_tokens).toBe(0);
    // Written at shutdown: rank 0's files and rank 1's share of each.
    const written = readdirSync(cacheDir);
    const files = written.filter((f) => f.endsWith(".safetensors"));
    expect(files.length).toBeGreaterThan(0);
    expect(written.filter((f) => f.endsWith(".rank1")).sort()).toEqual(files.map((f) => `${f}.rank1`).sort());
    const again = await ask();
    expect(again.text).toBe(first.text);
    expect(again.usage.prompt_tokens_details?.cached_tokens).toBeGreaterThanOrEqual(first.usage.prompt_tokens - 1);
    // Without rank 1's shares the files are removed, never used: the prompt is prefilled again.
    for (const f of readdirSync(cacheDir)) if (f.endsWith(".rank1")) rmSync(join(cacheDir, f));
    const without = await ask();
    expect(without.text).toBe(first.text);
    expect(without.usage.prompt_tokens_details?.cached_tokens).toBe(0);
  }, 180_000);
});

describe("serve --prompt-cache-dir on a directory a split model wrote to", () => {
  test("files of another split, and shares whose file is gone, are removed when the model loads, never used", async () => {
    const cacheDir = join(dir, "resplit");
    mkdirSync(cacheDir);
    // A tensor-parallel save: rank 0's file and rank 1's share beside it, named as the cache names
    // its own (a SHA-256): it leaves any other file alone.
    const [savedName, goneName] = ["a".repeat(64), "b".repeat(64)].map((hash) => `${hash}.safetensors`);
    const saved = join(cacheDir, savedName!);
    expect((await onTwoRanks(["cache-prompt", "-m", tiny, "--tensor-parallel", saved], document)).code).toBe(0);
    // A share whose file is gone, older than a write in progress.
    const orphan = join(cacheDir, `${goneName}.rank1`);
    copyFileSync(`${saved}.rank1`, orphan);
    const old = new Date(Date.now() - 120_000);
    utimesSync(orphan, old, old);
    const logged: string[] = [];
    const server = serve({
      promptCacheDir: cacheDir,
      logError: (e) => logged.push((e as Error).message),
    });
    try {
      const r = await post(`${server.url}/v1/completions`, { model: tiny, prompt: document, max_tokens: 2 });
      expect(r.status).toBe(200);
      expect(r.json.usage.prompt_tokens_details.cached_tokens).toBe(0);
    } finally {
      await server.stop();
    }
    expect(logged).toContain(
      `prompt cache: removing ${saved}: made for another split of the model (tensor-parallel 2, not one process)`,
    );
    const left = readdirSync(cacheDir);
    for (const gone of [savedName, `${savedName}.rank1`, `${goneName}.rank1`]) expect(left).not.toContain(gone);
  }, 60_000);
});
