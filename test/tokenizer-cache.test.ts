// The tokenizer files rebuilt from a GGUF, kept on disk (src/tokenizer/gguf-cache.ts): read back
// instead of rebuilt, never used for a changed file, rebuilt over a damaged entry, and never in
// the way of a load when the disk refuses them.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";
import { tokenizerFilesFromGGUF } from "../src/tokenizer/gguf";
import { cachedTokenizerFiles, forgetTokenizerFiles } from "../src/tokenizer/gguf-cache";
import { Tokenizer } from "../src/tokenizer/tokenizer";

const meta: Record<string, unknown> = JSON.parse(
  gunzipSync(readFileSync(join(import.meta.dir, "fixtures", "tokenizer-smollm2-gguf-meta.json.gz"))).toString("utf8"),
);
// Metadata no tokenizer can be built from: a call given it succeeds only from the cache.
const unbuildable = {};

let root: string;
let gguf: string;
const savedHome = process.env.MLX_HOME;
const entries = () => readdirSync(join(root, "home", "tokenizers")).filter((name) => name.endsWith(".json"));

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "mlx-tokenizer-cache-"));
  process.env.MLX_HOME = join(root, "home");
  gguf = join(root, "model.gguf"); // the cache reads only its identity: path, size, time, inode
  writeFileSync(gguf, "first version");
});
afterAll(() => {
  process.env.MLX_HOME = savedHome;
  rmSync(root, { recursive: true, force: true });
});

describe("the GGUF tokenizer cache", () => {
  test("the first load writes the files built; the next reads them back without building", () => {
    const built = cachedTokenizerFiles(gguf, meta);
    expect(built).toEqual(tokenizerFilesFromGGUF(meta));
    expect(entries()).toHaveLength(1);
    expect(cachedTokenizerFiles(gguf, unbuildable)).toEqual(built);
    // The tokenizer made from them encodes as the one built directly.
    const text = "Caching 12,345 tokenizers: naïve? ✓ <|im_start|>";
    expect(Tokenizer.fromGGUFMetadata(unbuildable, gguf).encode(text)).toEqual(
      Tokenizer.fromGGUFMetadata(meta).encode(text),
    );
  });

  test("a rewritten GGUF never reads an old entry; a GGUF keeps its two most recently used", () => {
    const file = join(root, "rewritten.gguf");
    const own = () => entries().filter((name) => !before.includes(name));
    const before = entries();
    writeFileSync(file, "first version");
    cachedTokenizerFiles(file, meta);
    const [first] = own();
    writeFileSync(file, "second, longer version");
    expect(() => cachedTokenizerFiles(file, unbuildable)).toThrow("no tokenizer.ggml.tokens");
    expect(cachedTokenizerFiles(file, meta)).toEqual(tokenizerFilesFromGGUF(meta));
    expect(own()).toHaveLength(2); // as two builds in use side by side would have them
    writeFileSync(file, "a third version, longer still");
    expect(cachedTokenizerFiles(file, meta)).toEqual(tokenizerFilesFromGGUF(meta));
    expect(own()).toHaveLength(2);
    expect(own()).not.toContain(first);
    expect(cachedTokenizerFiles(file, unbuildable)).toEqual(tokenizerFilesFromGGUF(meta));
  });

  test("a damaged entry is rebuilt and written again", () => {
    cachedTokenizerFiles(gguf, meta);
    const entry = join(root, "home", "tokenizers", entries()[0]!);
    for (const damage of ['{"tokenizerJson": {', '{"tokenizerJson": [], "tokenizerConfig": {}, "eosTokenIds": []}']) {
      writeFileSync(entry, damage);
      expect(cachedTokenizerFiles(gguf, meta)).toEqual(tokenizerFilesFromGGUF(meta));
      expect(cachedTokenizerFiles(gguf, unbuildable)).toEqual(tokenizerFilesFromGGUF(meta));
    }
  });

  test("a GGUF's entries go when it is forgotten (its blob removed), no other's", () => {
    cachedTokenizerFiles(gguf, meta);
    const other = join(root, "other.gguf");
    writeFileSync(other, "another model");
    cachedTokenizerFiles(other, meta);
    const count = entries().length;
    forgetTokenizerFiles(gguf);
    expect(entries()).toHaveLength(count - 1);
    expect(() => cachedTokenizerFiles(gguf, unbuildable)).toThrow("no tokenizer.ggml.tokens");
    expect(cachedTokenizerFiles(other, unbuildable)).toEqual(tokenizerFilesFromGGUF(meta));
  });

  test("the cache keeps the 32 most recently used entries, whatever GGUFs they are of (those outside the store are never forgotten)", () => {
    // Entries of 40 GGUFs long gone, the older the higher their number.
    const dir = join(root, "home", "tokenizers");
    const gone = Array.from({ length: 40 }, (_, i) => `${String(i).padStart(32, "0")}-gone.json`);
    gone.forEach((name, i) => {
      writeFileSync(join(dir, name), "{}");
      const used = new Date(Date.now() - (i + 1) * 60_000);
      utimesSync(join(dir, name), used, used);
    });
    const fresh = join(root, "fresh.gguf");
    writeFileSync(fresh, "a model loaded for the first time");
    cachedTokenizerFiles(fresh, meta);
    expect(entries()).toHaveLength(32);
    // The newest stays, with the most recently used of the rest.
    expect(cachedTokenizerFiles(fresh, unbuildable)).toEqual(tokenizerFilesFromGGUF(meta));
    expect(entries()).not.toContain(gone.at(-1));
    expect(entries()).toContain(gone[0]);
  });

  test("a cache the disk refuses (its directory is a file) leaves loads working", () => {
    process.env.MLX_HOME = join(root, "refused");
    try {
      writeFileSync(join(root, "refused"), "not a directory");
      expect(cachedTokenizerFiles(gguf, meta)).toEqual(tokenizerFilesFromGGUF(meta));
      expect(() => cachedTokenizerFiles(gguf, unbuildable)).toThrow("no tokenizer.ggml.tokens");
    } finally {
      process.env.MLX_HOME = join(root, "home");
    }
  });
});
