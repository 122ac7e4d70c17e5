// Prompt caches on disk: `serve --prompt-cache-dir` writes what the prefix cache lets go (and
// what it holds at shutdown), a restarted server reloads the longest stored prefix (reported as
// cached tokens, the answer unchanged); damaged files and those of another version of the model
// are removed, never used; the directory keeps to its bound. And `mlx cache-prompt` + `mlx run
// --prompt-cache` answer as a run without them does.
import { describe, expect, test } from "bun:test";
import {
  chmodSync,
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { BackgroundWrites, DiskPrefixCache } from "../src/engine/disk-prefix-cache";
import { DEFAULT_PREFILL_CHUNK } from "../src/engine/batch";
import { promptTokens } from "../src/engine/prompt";
import { prefillPrompt, promptCacheOwner, writePromptCacheFile } from "../src/engine/prompt-cache-file";
import { loadModel } from "../src/models/load";
import type { ServerOptions } from "../src/server/app";
import { cliRunner } from "./helpers/cli";
import { lastLayers, writeRandomAdapter } from "./helpers/random-adapter";
import { eventually, post, serve } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const root = mkdtempSync(join(tmpdir(), "mlx-prompt-cache-"));
const model = join(root, "tiny");
writeTinyModel(model, { contextLength: 1024, seed: 11 });

/** Whether this process may mount a tmpfs (a full disk, in a test): as root, where the system lets it. */
const tmpfsMountable = (() => {
  if (process.getuid?.() !== 0) return false;
  const probe = mkdtempSync(join(tmpdir(), "mlx-tmpfs-"));
  const mounted = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", probe], { stderr: "ignore" });
  if (mounted.exitCode === 0) Bun.spawnSync(["umount", probe]);
  rmSync(probe, { recursive: true, force: true });
  return mounted.exitCode === 0;
})();

const system = Array.from({ length: 120 }, (_, i) => `rule ${i % 17}`).join("; ");
const files = (dir: string) => readdirSync(dir).filter((f) => f.endsWith(".safetensors"));
const dirBytes = (dir: string) => files(dir).reduce((n, f) => n + statSync(join(dir, f)).size, 0);

/** One question under the shared system prompt, to a running server: its answer and prompt counts. */
async function ask(url: string, question: string, maxTokens = 8) {
  const r = await post(`${url}/v1/chat/completions`, {
    model,
    messages: [
      { role: "system", content: system },
      { role: "user", content: question },
    ],
    max_tokens: maxTokens,
    temperature: 0,
  });
  expect(r.status).toBe(200);
  return {
    text: r.json.choices[0].message.content as string,
    prompt: r.json.usage.prompt_tokens as number,
    cached: r.json.usage.prompt_tokens_details.cached_tokens as number,
  };
}

/** One request on a fresh server, which stops afterwards (writing what it holds to its directory). */
async function askOnce(o: ServerOptions, question = "What is rule 3?") {
  const server = serve({ prefixCacheBytes: 64 * 1024 * 1024, ...o });
  try {
    return await ask(server.url, question);
  } finally {
    await server.stop();
  }
}

describe("serve --prompt-cache-dir", () => {
  test("after a restart the prompt comes back from disk: cached tokens reported, the same greedy answer", async () => {
    const dir = join(root, "restart");
    const first = await askOnce({ promptCacheDir: dir });
    expect(first.cached).toBe(0);
    expect(files(dir).length).toBeGreaterThan(0); // written at shutdown
    const again = await askOnce({ promptCacheDir: dir });
    expect(again.text).toBe(first.text);
    expect(again.cached).toBeGreaterThanOrEqual(first.prompt - 1);
    // Another question with the same system prompt reuses it from disk too.
    const other = await askOnce({ promptCacheDir: dir }, "And rule 5?");
    expect(other.cached).toBeGreaterThan(system.length / 10);
    const fresh = await askOnce({}, "And rule 5?");
    expect(other.text).toBe(fresh.text);
  }, 60_000);

  test("with --max-kv-size, the prompt rotated while prefilled comes back from disk too: all but its last token, a fresh server's answer", async () => {
    const dir = join(root, "restart-rotating");
    const rotating = { maxKvSize: 64, prefillChunk: 32 };
    const first = await askOnce({ ...rotating, promptCacheDir: dir });
    expect(first.prompt).toBeGreaterThan(200);
    const again = await askOnce({ ...rotating, promptCacheDir: dir });
    expect(again.cached).toBe(first.prompt - 1);
    expect(again.text).toBe(first.text);
  }, 60_000);

  test("a damaged file is ignored and removed", async () => {
    const dir = join(root, "damaged");
    const first = await askOnce({ promptCacheDir: dir });
    for (const f of files(dir)) {
      const path = join(dir, f);
      const bytes = readFileSync(path);
      bytes[bytes.length - 100]! ^= 0xff; // a flipped byte in the tensors
      writeFileSync(path, bytes);
    }
    // Named as the cache names its files, so its own, however damaged.
    writeFileSync(join(dir, `${"0".repeat(64)}.safetensors`), "not a prompt cache");
    const damaged = files(dir);
    // Files the cache did not name are someone else's (a model's weights in a directory given by
    // mistake): never read nor removed.
    writeFileSync(join(dir, "junk.safetensors"), "not a prompt cache");
    copyFileSync(join(model, "model.safetensors"), join(dir, "model.safetensors"));
    const logged: string[] = [];
    const again = await askOnce({ promptCacheDir: dir, logError: (e) => logged.push((e as Error).message) });
    expect(again.cached).toBe(0);
    expect(again.text).toBe(first.text);
    // Each was removed (the same prompt may be written again at shutdown, sound this time).
    for (const f of damaged) expect(logged.some((m) => m.includes(`removing ${join(dir, f)}`))).toBe(true);
    // Each warning names its file once, with the reason.
    expect(logged).toContain(
      `prompt cache: removing ${join(dir, `${"0".repeat(64)}.safetensors`)}: not a prompt cache file`,
    );
    expect(files(dir)).toContain("junk.safetensors");
    expect(readFileSync(join(dir, "model.safetensors"))).toEqual(readFileSync(join(model, "model.safetensors")));
    expect(logged.some((m) => m.includes("junk") || m.includes("model.safetensors"))).toBe(false);
  }, 60_000);

  test("files of another version of the model are removed", async () => {
    const dir = join(root, "versions");
    const other = join(root, "tiny-v1");
    writeTinyModel(other, { contextLength: 1024, seed: 11 });
    const askOther = async () => {
      const server = serve({ promptCacheDir: dir });
      try {
        await post(`${server.url}/v1/completions`, { model: other, prompt: system, max_tokens: 2 });
      } finally {
        await server.stop();
      }
    };
    await askOther();
    const old = files(dir);
    expect(old.length).toBeGreaterThan(0);
    writeTinyModel(other, { contextLength: 1024, seed: 12 }); // new weights at the same path
    await askOther();
    for (const f of old) expect(files(dir)).not.toContain(f);
  }, 60_000);

  test("the directory keeps within --prompt-cache-max-gb, least recently used out", async () => {
    const dir = join(root, "bounded");
    await askOnce({ promptCacheDir: dir });
    const one = dirBytes(dir);
    const bound = Math.floor(one * 2.5);
    // Another's file, the least recently used: neither counted nor removed.
    const foreign = join(dir, "model.safetensors");
    copyFileSync(join(model, "model.safetensors"), foreign);
    utimesSync(foreign, new Date(0), new Date(0));
    // A small memory budget: every new prompt evicts the last to disk.
    for (const q of ["one", "two", "three", "four", "five"])
      await askOnce({ promptCacheDir: dir, promptCacheMaxBytes: bound, prefixCacheBytes: 1024 }, `Question ${q}?`);
    expect(existsSync(foreign)).toBe(true);
    expect(dirBytes(dir) - statSync(foreign).size).toBeLessThanOrEqual(bound);
    expect(files(dir).length).toBeGreaterThanOrEqual(2);
  }, 60_000);

  test("a stored prefix is not read for the few tokens a prompt shares with it (its chat template's first ones)", async () => {
    const dir = join(root, "few-shared");
    await askOnce({ promptCacheDir: dir });
    const long = new Date(0);
    for (const f of files(dir)) utimesSync(join(dir, f), long, long);
    const server = serve({ promptCacheDir: dir, prefixCacheBytes: 64 * 1024 * 1024 });
    try {
      const r = await post(`${server.url}/v1/chat/completions`, {
        model,
        messages: [
          { role: "system", content: "Be brief." },
          { role: "user", content: "What is rule 3?" },
        ],
        max_tokens: 2,
      });
      // It was: the whole file read into memory (marked used) to skip three tokens.
      expect(r.json.usage.prompt_tokens_details.cached_tokens).toBe(0);
      for (const f of files(dir)) expect(statSync(join(dir, f)).mtimeMs).toBe(0);
      // A prompt that shares the long system prompt still starts from it.
      expect((await ask(server.url, "And rule 5?")).cached).toBeGreaterThan(system.length / 10);
    } finally {
      await server.stop();
    }
  }, 60_000);

  test("a bound lowered since the files were written holds from the start, least recently used out", async () => {
    const dir = join(root, "lowered");
    // Memory holds no prefix: each question's goes straight to disk.
    for (const q of ["one", "two", "three"])
      await askOnce({ promptCacheDir: dir, prefixCacheBytes: 1024 }, `Question ${q}?`);
    const written = files(dir);
    expect(written.length).toBeGreaterThanOrEqual(3);
    written.forEach((f, i) =>
      utimesSync(join(dir, f), new Date(), new Date(Date.now() - (written.length - i) * 60_000)),
    );
    const newest = written.at(-1)!;
    const bound = dirBytes(dir) - statSync(join(dir, written[0]!)).size;
    // A server that neither writes (its prompt stays in memory) nor reads (no stored prefix fits it).
    const server = serve({ promptCacheDir: dir, promptCacheMaxBytes: bound, prefixCacheBytes: 64 * 1024 * 1024 });
    try {
      const r = await post(`${server.url}/v1/completions`, { model, prompt: "Hello", max_tokens: 2 });
      expect(r.json.usage.prompt_tokens_details.cached_tokens).toBe(0);
      await eventually(() => dirBytes(dir) <= bound);
      expect(files(dir)).not.toContain(written[0]);
      expect(files(dir)).toContain(newest);
    } finally {
      await server.stop();
    }
  }, 60_000);
});

/** Rewrites the metadata of a prompt cache file's header (the tensors untouched). */
function editMetadata(path: string, edit: (metadata: Record<string, string>) => void): void {
  const bytes = readFileSync(path);
  const length = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + length).toString("utf8"));
  edit(header.__metadata__);
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.alloc(8);
  head.writeBigUInt64LE(BigInt(Buffer.byteLength(json)));
  writeFileSync(path, Buffer.concat([head, Buffer.from(json), bytes.subarray(8 + length)]));
}

describe("serve --prompt-cache-dir, when things go wrong", () => {
  test("a prefix larger than the memory budget comes back from disk for the request that needs it", async () => {
    const dir = join(root, "over-budget");
    // Memory holds no prefix at all: each goes straight to disk, and before was never read back.
    const first = await askOnce({ promptCacheDir: dir, prefixCacheBytes: 1024 });
    expect(first.cached).toBe(0);
    const again = await askOnce({ promptCacheDir: dir, prefixCacheBytes: 1024 });
    expect(again.cached).toBeGreaterThanOrEqual(first.prompt - 1);
    expect(again.text).toBe(first.text);
    // In one server: a second question reuses the first one's prefix from disk.
    const server = serve({ promptCacheDir: join(root, "over-budget-2"), prefixCacheBytes: 1024 });
    try {
      const cached = async (question: string) => (await ask(server.url, question, 4)).cached;
      expect(await cached("What is rule 3?")).toBe(0);
      // Written in the background: the cache offers a file once its write is done, a moment after
      // it is renamed into place. Its file seen (the write queued), the server's writes are awaited.
      for (let i = 0; i < 500 && files(join(root, "over-budget-2")).length === 0; i++) await Bun.sleep(20);
      await server.state.promptCacheWrites();
      expect(await cached("And rule 5?")).toBeGreaterThan(system.length / 10);
    } finally {
      await server.stop();
    }
  }, 60_000);

  test("a directory that cannot be made is a warning: the server answers without it", async () => {
    const blocker = join(root, "a-file");
    writeFileSync(blocker, "not a directory");
    const logged: string[] = [];
    const answer = await askOnce({
      promptCacheDir: join(blocker, "cache"),
      logError: (e) => logged.push((e as Error).message),
    });
    expect(answer.cached).toBe(0);
    expect(logged).toContain(
      `prompt cache: cannot use ${join(blocker, "cache")}, going on without it: a folder on its path is a file`,
    );
  }, 60_000);

  test("a directory removed while the server runs (a cache cleared by hand) is made again for the next write", async () => {
    const dir = join(root, "removed-meanwhile");
    const logged: string[] = [];
    const server = serve({
      promptCacheDir: dir,
      prefixCacheBytes: 64 * 1024 * 1024,
      logError: (e) => logged.push(`${e}`),
    });
    let first: Awaited<ReturnType<typeof ask>>;
    try {
      first = await ask(server.url, "What is rule 3?"); // the model loads: its disk cache opens the directory
      // The prompt's file, which the answer's entry took the place of in memory, written first.
      await eventually(() => files(dir).length > 0 && !files(dir).some((f) => f.includes(".tmp.")));
      rmSync(dir, { recursive: true });
    } finally {
      await server.stop(); // writes what it holds
    }
    expect(logged).toEqual([]);
    expect(files(dir).length).toBeGreaterThan(0);
    const again = await askOnce({ promptCacheDir: dir });
    expect(again.cached).toBeGreaterThanOrEqual(first.prompt - 1);
    expect(again.text).toBe(first.text);
  }, 60_000);
  // Root writes a folder whatever its mode: there, a read-only file system (a tmpfs remounted so).
  test.skipIf(process.getuid?.() === 0 && !tmpfsMountable)(
    "a read-only directory is read, and a warning said once, not once per prefix the server could not write",
    async () => {
      const dir = join(root, "read-only-dir");
      mkdirSync(dir);
      const asRoot = process.getuid?.() === 0;
      if (asRoot) expect(Bun.spawnSync(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", dir]).exitCode).toBe(0);
      try {
        const first = await askOnce({ promptCacheDir: dir });
        if (asRoot) expect(Bun.spawnSync(["mount", "-o", "remount,ro", dir]).exitCode).toBe(0);
        else chmodSync(dir, 0o555);
        const logged: string[] = [];
        // No room in memory: each prefix would go to disk at once.
        const server = serve({ promptCacheDir: dir, prefixCacheBytes: 1024, logError: (e) => logged.push(`${e}`) });
        try {
          const again = await ask(server.url, "What is rule 3?");
          expect(again.cached).toBeGreaterThanOrEqual(first.prompt - 1);
          expect(again.text).toBe(first.text);
          for (const question of ["And rule 5?", "And rule 7?", "And rule 9?"]) await ask(server.url, question);
        } finally {
          await server.stop();
        }
        expect(logged).toHaveLength(1);
        expect(logged[0]).toStartWith(`Error: prompt cache: cannot write to ${dir}, going on reading it only: `);
      } finally {
        if (asRoot) Bun.spawnSync(["umount", dir]);
        else chmodSync(dir, 0o755);
      }
    },
    60_000,
  );

  test("--prompt-cache-max-gb without --prompt-cache-dir, or an empty directory, is a one-line error", async () => {
    // Both once started a server that kept no prompt cache on disk, unsaid.
    const mlx = cliRunner(join(root, "home"));
    const serveWith = (flags: string[]) => mlx(["serve", "--port", "0", ...flags]);
    expect(await serveWith(["--prompt-cache-max-gb", "2"])).toMatchObject({
      code: 1,
      stderr: "error: --prompt-cache-max-gb needs --prompt-cache-dir\n",
    });
    expect(await serveWith(["--prompt-cache-dir", ""])).toMatchObject({
      code: 1,
      stderr: "error: --prompt-cache-dir needs a directory\n",
    });
    const file = join(root, "a-cache-file");
    writeFileSync(file, "");
    expect(await serveWith(["--prompt-cache-dir", file])).toMatchObject({
      code: 1,
      stderr: `error: --prompt-cache-dir ${file} is a file, not a directory\n`,
    });
  }, 30_000); // refused at once; without the check the server would run on

  test("a file whose header is damaged (its token list, or tokens its tensors do not hold) is removed, never used", async () => {
    const dir = join(root, "damaged-header");
    const first = await askOnce({ promptCacheDir: dir });
    const damaged = files(dir);
    expect(damaged.length).toBeGreaterThan(1);
    damaged.forEach((f, i) =>
      editMetadata(join(dir, f), (m) => {
        const tokens = JSON.parse(m.tokens!) as number[];
        m.tokens = i === 0 ? "[1, 2" : JSON.stringify(tokens.slice(0, -3));
      }),
    );
    const logged: string[] = [];
    const again = await askOnce({ promptCacheDir: dir, logError: (e) => logged.push((e as Error).message) });
    expect(again.cached).toBe(0);
    expect(again.text).toBe(first.text);
    expect(logged.some((m) => m.includes("damaged (its token list is not JSON)"))).toBe(true);
    for (const f of damaged) expect(logged.some((m) => m.includes(`removing ${join(dir, f)}`))).toBe(true);
  }, 60_000);
});

describe("serve --prompt-cache-dir, a header that misstates a tensor's shape", () => {
  test("keys said to be of other rows or heads (the bytes, so the checksum, unchanged) are a damaged file: removed, never used", async () => {
    const dir = join(root, "misshapen");
    const first = await askOnce({ promptCacheDir: dir });
    const damaged = files(dir);
    expect(damaged.length).toBeGreaterThan(1);
    damaged.forEach((f, i) => {
      const path = join(dir, f);
      const bytes = readFileSync(path);
      const header = bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString("utf8");
      const { shape } = JSON.parse(header)["layers.0.keys.0"] as { shape: [number, number, number, number] };
      const [rows, heads, positions, dim] = shape;
      // [heads, 1, n, d], or [1, 1, n, heads · d]: as many bytes, a header as long (heads < 10).
      const misstated = i === 0 ? [heads, rows, positions, dim] : [rows, 1, positions, heads * dim];
      const edited = header.replace(`"shape":${JSON.stringify(shape)}`, `"shape":${JSON.stringify(misstated)}`);
      expect(edited).not.toBe(header);
      expect(edited.length).toBe(header.length);
      bytes.write(edited, 8, "utf8");
      writeFileSync(path, bytes);
    });
    const logged: string[] = [];
    // Before, the batch sliced and broadcast such keys into its own shape: the step failed, or
    // (beside other requests) a head attended to another head's keys, in silence.
    const again = await askOnce({ promptCacheDir: dir, logError: (e) => logged.push((e as Error).message) });
    expect(again.cached).toBe(0);
    expect(again.text).toBe(first.text);
    for (const f of damaged)
      expect(
        logged.some((m) => m.startsWith(`prompt cache: removing ${join(dir, f)}: damaged (layer 0's keys are [`)),
      ).toBe(true);
  }, 60_000);
});

describe("disk prefix cache writes", () => {
  test("a save returns before any file I/O; the file appears, whole and loadable, once the writes finish; failures are warnings", async () => {
    const lm = loadModel(model);
    const dir = join(root, "background");
    const warnings: string[] = [];
    const writes = new BackgroundWrites();
    const disk = new DiskPrefixCache(dir, 1024 ** 3, promptCacheOwner(lm), lm.path, (m) => warnings.push(m), writes);
    await writes.flush(); // the directory's bound, checked once it is opened
    const tokens = Array.from({ length: 40 }, (_, i) => 3 + (i % 50));
    const entry = prefillPrompt(lm, tokens);
    const expected = entry.keys[0]![0]!.bytes();
    disk.save(entry);
    // The bytes were copied out: the arrays may go at once. Nothing is on disk yet (the engine
    // thread did not wait for it), and the entry is not offered before its file is complete.
    for (const t of [...entry.keys, ...entry.values].flat()) t.free();
    expect(writes.pending).toBe(1);
    expect(files(dir)).toEqual([]);
    expect(disk.longest(tokens, tokens.length, 0)).toBeUndefined();
    disk.save(entry); // already queued: not twice
    expect(writes.pending).toBe(1);
    await writes.flush();
    expect(writes.pending).toBe(0);
    const name = disk.fileName(entry);
    expect(files(dir)).toEqual([name]);
    expect(disk.longest(tokens, tokens.length, 0)).toEqual({ name, length: tokens.length });
    const loaded = disk.load(name)!;
    expect(loaded.tokens).toEqual(tokens);
    expect(loaded.keys[0]![0]!.bytes()).toEqual(expected);
    for (const t of [...loaded.keys, ...loaded.values].flat()) t.free();

    // A write that fails (its name is taken by a directory) is a warning and leaves no file behind.
    const other = prefillPrompt(lm, tokens.slice(0, 20));
    mkdirSync(join(dir, disk.fileName(other), "taken"), { recursive: true });
    disk.save(other);
    await writes.flush();
    expect(warnings.some((w) => w.includes(`cannot write ${join(dir, disk.fileName(other))}`))).toBe(true);
    expect(readdirSync(dir).filter((f) => f.includes(".tmp."))).toEqual([]);
    expect(disk.load(name)?.tokens).toEqual(tokens); // the stored file is untouched

    // Bounded: while one write waits, another that would pass the bound is dropped with a warning.
    const small = new BackgroundWrites(1);
    const bounded = new DiskPrefixCache(
      join(root, "bounded-writes"),
      1024 ** 3,
      promptCacheOwner(lm),
      lm.path,
      (m) => warnings.push(m),
      small,
    );
    await small.flush();
    const a = prefillPrompt(lm, tokens.slice(0, 10));
    const b = prefillPrompt(lm, tokens.slice(0, 12));
    bounded.save(a);
    bounded.save(b);
    expect(small.pending).toBe(1);
    expect(warnings.at(-1)).toMatch(/not writing .*too much is still waiting for the disk/);
    await small.flush();
    expect(bounded.entries).toBe(1);
    for (const e of [other, a, b]) for (const t of [...e.keys, ...e.values].flat()) t.free();
    lm.free();
  }, 60_000);

  test("cache-prompt prefills as the server does: with --kv-bits 4 its entry holds the bytes a server stores for the same prompt", async () => {
    // A quantized KV cache needs heads as wide as its groups (64 values).
    const wide = join(root, "tiny-wide");
    writeTinyModel(wide, { contextLength: 1024, seed: 11, headDim: 64 });
    const kvQuantization = { bits: 4, groupSize: 64 };
    const dir = join(root, "quantized");
    const server = serve({ promptCacheDir: dir, kvQuantization, prefixCacheBytes: 64 * 1024 * 1024 });
    const document = Array.from({ length: 60 }, (_, i) => `Line ${i}: item ${i} is ${(i * 7) % 13}.`).join("\n");
    try {
      const r = await post(`${server.url}/v1/chat/completions`, {
        model: wide,
        messages: [{ role: "user", content: document }],
        max_tokens: 1,
      });
      expect(r.status).toBe(200);
    } finally {
      await server.stop(); // writes the prompt's entry
    }
    const lm = loadModel(wide);
    lm.kvQuantization = kvQuantization;
    const tokens = promptTokens(lm.tokenizer, document);
    expect(tokens.length).toBeGreaterThan(DEFAULT_PREFILL_CHUNK); // keys of one chunk attended by the next
    const disk = new DiskPrefixCache(dir, 1024 ** 3, promptCacheOwner(lm), lm.path);
    const served = disk.load(disk.fileName({ tokens, dropped: 0 }))!;
    const prefilled = prefillPrompt(lm, tokens);
    const bytes = (e: typeof served) => [...e.keys, ...e.values].flat().map((t) => t.bytes());
    expect(bytes(prefilled)).toEqual(bytes(served));
    for (const e of [served, prefilled]) for (const t of [...e.keys, ...e.values].flat()) t.free();
    lm.free();
  }, 60_000);

  test("a prefix larger than the whole bound is not written: the files within it stay", async () => {
    const lm = loadModel(model);
    const dir = join(root, "too-large");
    const warnings: string[] = [];
    const tokens = Array.from({ length: 200 }, (_, i) => 3 + (i % 50));
    const small = [prefillPrompt(lm, tokens.slice(0, 10)), prefillPrompt(lm, tokens.slice(0, 12))];
    const large = prefillPrompt(lm, tokens);
    const bytes = (e: (typeof small)[number]) => [...e.keys, ...e.values].flat().reduce((n, t) => n + t.nbytes, 0);
    // Room for the small ones (and their headers), not for the large one.
    const bound = bytes(large) - 1;
    const disk = new DiskPrefixCache(dir, bound, promptCacheOwner(lm), lm.path, (m) => warnings.push(m));
    for (const e of small) disk.save(e);
    await disk.writes.flush();
    const kept = files(dir);
    expect(kept).toHaveLength(2);
    // It was: every other file removed to make room for it, then it too.
    disk.save(large);
    await disk.writes.flush();
    expect(files(dir)).toEqual(kept);
    expect(warnings).toEqual([
      `prompt cache: not writing ${join(dir, disk.fileName(large))}: it is larger than the directory's bound`,
    ]);
    for (const e of [...small, large]) for (const t of [...e.keys, ...e.values].flat()) t.free();
    lm.free();
  }, 60_000);

  // A disk of the bound's size (a small tmpfs; mounting one needs root).
  test.skipIf(!tmpfsMountable)(
    "on a disk no larger than the bound, room is made before a file is written, not after",
    async () => {
      const lm = loadModel(model);
      const dir = join(root, "partition");
      const warnings: string[] = [];
      const entries = [3, 4, 5].map((first) =>
        prefillPrompt(
          lm,
          Array.from({ length: 200 }, (_, i) => first + i),
        ),
      );
      const disk = new DiskPrefixCache(dir, 1024 ** 3, promptCacheOwner(lm), lm.path, (m) => warnings.push(m));
      disk.save(entries[0]!);
      await disk.writes.flush();
      // Room for two files, not three (tmpfs counts whole pages).
      const size = 2 * Math.ceil(dirBytes(dir) / 4096) * 4096 + 4096;
      rmSync(dir, { recursive: true });
      mkdirSync(dir);
      expect(Bun.spawnSync(["mount", "-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir]).exitCode).toBe(0);
      try {
        const full = new DiskPrefixCache(dir, size, promptCacheOwner(lm), lm.path, (m) => warnings.push(m));
        for (const [i, e] of entries.entries()) {
          full.save(e);
          await full.writes.flush();
          // The file system's clock may give two quick writes one time: the order of use is set here.
          const used = new Date(Date.now() - (entries.length - i) * 60_000);
          if (i < entries.length - 1) utimesSync(join(dir, full.fileName(e)), used, used);
        }
        // It was: the third write failed for want of space, and the bound, applied after a write, never ran again.
        expect(warnings).toEqual([]);
        expect(files(dir).sort()).toEqual([full.fileName(entries[1]!), full.fileName(entries[2]!)].sort());
      } finally {
        Bun.spawnSync(["umount", dir]);
        for (const e of entries) for (const t of [...e.keys, ...e.values].flat()) t.free();
        lm.free();
      }
    },
    60_000,
  );

  test("a process that exits while writing (Ctrl-C) leaves neither the file nor its temporary", async () => {
    const dir = join(root, "interrupted");
    mkdirSync(dir);
    // As `mlx cache-prompt` ends on Ctrl-C (through exit), once the temporary file is there.
    const writer = `
      import { readdirSync } from "node:fs";
      import { writePromptCacheFile } from "${join(import.meta.dir, "../src/engine/prompt-cache-file")}";
      void writePromptCacheFile("${join(dir, "doc.cache")}", Array.from({ length: 8 }, () => new Uint8Array(16 * 1024 ** 2)));
      while (readdirSync("${dir}").length === 0) await Bun.sleep(1);
      process.exit(130);`;
    const child = Bun.spawn([process.execPath, "-e", writer], { stderr: "pipe" });
    expect(await child.exited).toBe(130);
    expect(readdirSync(dir)).toEqual([]);
  }, 60_000);

  test("a process killed while writing (SIGKILL) leaves its temporary: the next write of that file removes it, not a live writer's", async () => {
    const dir = join(root, "killed");
    mkdirSync(dir);
    const dead = Bun.spawn(["true"]);
    await dead.exited;
    const left = `doc.cache.${dead.pid}.1764800000000.tmp.safetensors`;
    const live = `doc.cache.${process.pid}.1764800000001.tmp.safetensors`;
    const other = `other.cache.${dead.pid}.1764800000002.tmp.safetensors`;
    for (const name of [left, live, other]) writeFileSync(join(dir, name), "partial");
    await writePromptCacheFile(join(dir, "doc.cache"), [new Uint8Array(8)]);
    expect(readdirSync(dir).sort()).toEqual(["doc.cache", live, other].sort());
  });

  test("two servers on one directory: a file the other one's bound removed is forgotten quietly, not reported as damaged", async () => {
    const lm = loadModel(model);
    const dir = join(root, "shared");
    const warnings: string[] = [];
    const open = (maxBytes: number) =>
      new DiskPrefixCache(dir, maxBytes, promptCacheOwner(lm), lm.path, (m) => warnings.push(m));
    const first = open(1024 ** 3);
    const tokens = Array.from({ length: 40 }, (_, i) => 3 + (i % 50));
    const older = prefillPrompt(lm, tokens);
    first.save(older);
    await first.writes.flush();
    const name = first.fileName(older);
    // The second server keeps the directory to about one file: its own write pushes the older one out.
    const second = open(statSync(join(dir, name)).size + 1024);
    const newer = prefillPrompt(
      lm,
      tokens.map((t) => t + 1),
    );
    await Bun.sleep(20); // a later modification time: the first server's file is the least recently used
    second.save(newer);
    await second.writes.flush();
    expect(files(dir)).toEqual([second.fileName(newer)]);
    expect(first.load(name)).toBeUndefined();
    expect(first.longest(tokens, tokens.length, 0)).toBeUndefined();
    expect(warnings).toEqual([]);
    for (const e of [older, newer]) for (const t of [...e.keys, ...e.values].flat()) t.free();
    lm.free();
  }, 60_000);
});

describe("mlx cache-prompt and mlx run --prompt-cache", () => {
  const run = cliRunner(process.env.MLX_HOME ?? join(root, "home"));
  const document = Array.from({ length: 40 }, (_, i) => `Line ${i}: the value of item ${i} is ${(i * 7) % 13}.`).join(
    "\n",
  );

  test("a run from the saved document answers as a run given the whole document, prefilling only the question", async () => {
    const file = join(root, "doc.cache");
    const saved = await run(["cache-prompt", "-m", model, file], document);
    expect(saved.stderr).toBe("");
    expect(saved.code).toBe(0);
    const ask = ["--max-tokens", "8", "--json", "-m", model];
    const fromCache = await run(["run", "--prompt-cache", file, ...ask, "What is item 3?"]);
    expect(fromCache.stderr).toBe("");
    const whole = await run(["run", ...ask, `${document}\n\nWhat is item 3?`]);
    const a = JSON.parse(fromCache.stdout);
    const b = JSON.parse(whole.stdout);
    expect(a.token_ids).toEqual(b.token_ids);
    expect(a.prompt_token_ids).toEqual(b.prompt_token_ids);
    expect(a.stats.cached_tokens).toBeGreaterThan(b.stats.prompt_tokens - 20);
  }, 60_000);

  test("with a --max-kv-size the document overflows, a run from the file starts from all of it and answers as one given the whole document", async () => {
    const file = join(root, "rotating.cache");
    const saved = await run(["cache-prompt", "-m", model, "--max-kv-size", "128", file], document);
    expect(saved).toMatchObject({ code: 0, stderr: "" });
    const ask = ["--max-tokens", "8", "--json", "-m", model, "--max-kv-size", "128"];
    const fromCache = JSON.parse((await run(["run", "--prompt-cache", file, ...ask, "What is item 3?"])).stdout);
    const whole = JSON.parse((await run(["run", ...ask, `${document}\n\nWhat is item 3?`])).stdout);
    expect(whole.stats.prompt_tokens).toBeGreaterThan(2 * 128);
    // A rotating cache continues exactly its own tokens only: the file holds none past the document.
    expect(fromCache.stats.cached_tokens).toBeGreaterThan(whole.stats.prompt_tokens - 20);
    expect(fromCache.token_ids).toEqual(whole.token_ids);
  }, 60_000);

  test("a file saved inside the model's directory (or a note added there) still belongs to the model", async () => {
    const dir = join(root, "tiny-with-files");
    writeTinyModel(dir, { contextLength: 1024, seed: 11 });
    const file = join(dir, "doc.cache");
    expect(await run(["cache-prompt", "-m", dir, file], document)).toMatchObject({ code: 0, stderr: "" });
    writeFileSync(join(dir, "NOTES.md"), "where this model came from");
    // It was "made with another model": the directory's digest counted the file itself.
    const fromCache = await run(["run", "--prompt-cache", file, "-m", dir, "--max-tokens", "4", "--json", "Item 3?"]);
    expect(fromCache).toMatchObject({ code: 0, stderr: "" });
    expect(JSON.parse(fromCache.stdout).stats.cached_tokens).toBeGreaterThan(100);
    // What the model is made of still counts.
    writeFileSync(join(dir, "generation_config.json"), JSON.stringify({ temperature: 0.5 }));
    expect(await run(["run", "--prompt-cache", file, "-m", dir, "Item 3?"])).toMatchObject({
      code: 1,
      stderr: `error: ${file} was made with another model\n`,
    });
  }, 60_000);

  test("a file cached under another --system or --raw is a one-line error, not the document prefilled again unsaid", async () => {
    const file = join(root, "system.cache");
    const saved = await run(["cache-prompt", "-m", model, "--system", "Answer briefly.", file], document);
    expect(saved.code).toBe(0);
    const ask = ["run", "--prompt-cache", file, "-m", model, "--max-tokens", "4", "--json"];
    const same = await run([...ask, "--system", "Answer briefly.", "What is item 3?"]);
    expect(same.code).toBe(0);
    expect(JSON.parse(same.stdout).stats.cached_tokens).toBeGreaterThan(100);
    const refusal = `error: ${file} holds the document under another system prompt or template: give mlx run the --system and --raw that mlx cache-prompt was given\n`;
    for (const other of [[], ["--system", "Answer at length."], ["--raw"]])
      expect(await run([...ask, ...other, "What is item 3?"])).toMatchObject({ code: 1, stdout: "", stderr: refusal });
  }, 60_000);

  test("with an adapter, which the file's base-model keys cannot serve, or with an empty FILE, --prompt-cache is a one-line error", async () => {
    const file = join(root, "base.cache");
    expect((await run(["cache-prompt", "-m", model, file], document)).code).toBe(0);
    const adapter = join(root, "adapter");
    writeRandomAdapter(adapter, { layers: lastLayers(2, 2, { "self_attn.q_proj": [64, 64] }), strength: 0.5 });
    const ask = ["run", "-m", model, "--max-tokens", "4", "--json"];
    // Without the check the run answered, the document prefilled again (cached_tokens 0), unsaid.
    expect(await run([...ask, "--adapter", adapter, "--prompt-cache", file, "What is item 3?"])).toMatchObject({
      code: 1,
      stdout: "",
      stderr: `error: --prompt-cache holds the base model's keys and values, which a run with an adapter (${adapter}) cannot use: give one or the other\n`,
    });
    expect(await run([...ask, "--prompt-cache", "", "What is item 3?"])).toMatchObject({
      code: 1,
      stderr: "error: --prompt-cache needs a file\n",
    });
  }, 60_000);

  test("a damaged file, or one made with another KV cache layout, is a one-line error; so is a FILE that cannot be written", async () => {
    const file = join(root, "doc2.cache");
    await run(["cache-prompt", "-m", model, "--max-kv-size", "100", file], document);
    const layout = await run(["run", "--prompt-cache", file, "-m", model, "hi"]);
    expect(layout.code).not.toBe(0);
    expect(layout.stderr.trim().split("\n")).toHaveLength(1);
    // Named by the flags that give each layout: it was "(float-rotating100, not float)".
    expect(layout.stderr).toBe(
      `error: ${file} was made with another KV cache layout (--max-kv-size 100; this run has neither --kv-bits nor --max-kv-size)\n`,
    );
    const nowhere = join(root, "no-such-dir", "doc.cache");
    const unwritable = await run(["cache-prompt", "-m", model, nowhere], document);
    expect(unwritable).toMatchObject({
      code: 1,
      stderr: `error: cannot write ${nowhere}: its directory does not exist\n`,
    });
    // Once reported by the name of the temporary file written first, after the whole prefill.
    const directory = await run(["cache-prompt", "-m", model, root], document);
    expect(directory).toMatchObject({ code: 1, stderr: `error: cannot write ${root}: it is a directory\n` });
    const unnamed = await run(["cache-prompt", "-m", model, ""], document);
    expect(unnamed).toMatchObject({
      code: 1,
      stderr: "error: give the file to write: mlx cache-prompt FILE < document\n",
    });
    writeFileSync(file, "garbage");
    const damaged = await run(["run", "--prompt-cache", file, "-m", model, "hi"]);
    expect(damaged.code).not.toBe(0);
    expect(damaged.stderr.trim()).toContain("not a prompt cache file");
  }, 60_000);

  test("an existing FILE that is no prompt cache (the document itself, given as FILE) is refused, not overwritten; an earlier cache is", async () => {
    const notes = join(root, "notes.md");
    writeFileSync(notes, document);
    // `mlx cache-prompt notes.md < notes.md` replaced the document with its keys and values.
    expect(await run(["cache-prompt", "-m", model, notes], document)).toMatchObject({
      code: 1,
      stderr: `error: ${notes} exists and is not a prompt cache file: give another FILE to write (mlx cache-prompt FILE < document)\n`,
    });
    expect(readFileSync(notes, "utf8")).toBe(document);
    const file = join(root, "again.cache");
    expect((await run(["cache-prompt", "-m", model, file], document)).code).toBe(0);
    expect(await run(["cache-prompt", "-m", model, file], `${document}\nOne more line.`)).toMatchObject({
      code: 0,
      stderr: "",
    });
  }, 60_000);

  test("a FILE whose folder is a file, or cannot be written, is refused before the model loads, not after the prefill", async () => {
    // No such model: a refusal that names FILE was made before loading it.
    const absent = join(root, "no-such-model");
    const blocker = join(root, "not-a-folder");
    writeFileSync(blocker, "a file");
    const inFile = join(blocker, "doc.cache");
    expect(await run(["cache-prompt", "-m", absent, inFile], document)).toMatchObject({
      code: 1,
      stderr: `error: cannot write ${inFile}: a folder on its path is a file\n`,
    });
    // Root writes a folder whatever its mode: only another user is refused.
    if (process.getuid?.() === 0) return;
    const readOnly = join(root, "read-only");
    mkdirSync(readOnly, { mode: 0o555 });
    const inReadOnly = join(readOnly, "doc.cache");
    expect(await run(["cache-prompt", "-m", absent, inReadOnly], document)).toMatchObject({
      code: 1,
      stderr: `error: cannot write ${inReadOnly}: EACCES: permission denied\n`,
    });
  }, 60_000);

  test("a damaged header is a one-line error; a document over the context is refused before the prefill", async () => {
    const file = join(root, "doc3.cache");
    await run(["cache-prompt", "-m", model, file], document);
    editMetadata(file, (m) => {
      m.tokens = m.tokens!.replace(/,\d+\]$/, "]"); // one token fewer than the tensors hold
    });
    const short = await run(["run", "--prompt-cache", file, "-m", model, "hi"]);
    expect(short.code).toBe(1);
    expect(short.stderr.trim().split("\n")).toHaveLength(1);
    expect(short.stderr).toMatch(/damaged \(layer 0 holds (\d+) positions for \d+ tokens\)/);
    editMetadata(file, (m) => {
      m.tokens = "[1, 2";
    });
    const broken = await run(["run", "--prompt-cache", file, "-m", model, "hi"]);
    expect(broken).toMatchObject({ code: 1, stderr: `error: ${file}: damaged (its token list is not JSON)\n` });

    // The tiny model's context is 1,024 tokens: every run of this file would fail.
    const long = join(root, "long.cache");
    const huge = await run(["cache-prompt", "-m", model, long], `${document}\n`.repeat(12));
    expect(huge.code).toBe(1);
    expect(huge.stderr).toMatch(
      /^error: the document is \d+ tokens, but the model's context is 1024: .*--max-kv-size\n$/,
    );
    expect(existsSync(long)).toBe(false);
    const rotating = await run(["cache-prompt", "-m", model, "--max-kv-size", "256", long], `${document}\n`.repeat(12));
    expect(rotating.code).toBe(0);
    expect(existsSync(long)).toBe(true);
  }, 60_000);
});
