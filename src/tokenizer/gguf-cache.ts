// The tokenizer files a GGUF describes, kept on disk after its first load. Rebuilding them costs
// over a second of CPU for a 262,144-piece SentencePiece vocabulary (its merges are rebuilt from
// scores) at every start; reading them back is one JSON parse. An entry is named by the GGUF
// (its path, size, modification time and inode) and by the code that built it (the compiled
// executable, or these sources when run from them): a changed file or another build never reads
// an entry it did not write. A GGUF keeps the entries of the last two builds that used it (an
// installed executable and a checkout beside it), so that an upgrade's leftovers go, and the
// cache keeps the MAX_ENTRIES most recently used in all. A cache never fails a load: any error
// here only means a rebuild.
import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, realpathSync, renameSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { isJsonObject } from "../exact-json";
import { markUsed, removeQuietly } from "../files";
import { tempPathIn, tmpDir, tokenizersDir } from "../store/paths";
import { type TokenizerFiles, tokenizerFilesFromGGUF } from "./gguf";

/** tokenizerFilesFromGGUF(meta) for the GGUF at `file`, from the cache when it holds them. */
export function cachedTokenizerFiles(file: string, meta: Record<string, unknown>): TokenizerFiles {
  const entry = entryFor(file);
  const cached = entry && readEntry(join(entry.dir, entry.name));
  if (cached) return cached;
  const files = tokenizerFilesFromGGUF(meta);
  if (entry) writeEntry(entry, files);
  return files;
}

/** Removes what the cache holds for the GGUF at `file` (a blob about to be deleted). */
export function forgetTokenizerFiles(file: string): void {
  try {
    const dir = tokenizersDir();
    const prefix = `${digest(realpathSync(file))}-`;
    for (const name of readdirSync(dir)) if (name.startsWith(prefix)) removeQuietly(join(dir, name));
  } catch {} // nothing cached, or a file already gone
}

interface Entry {
  dir: string;
  /** `<the file's digest>-<the file's and code's state digest>.json`. */
  name: string;
  /** The name's first part: every entry of this GGUF starts with it. */
  fileDigest: string;
}

const digest = (value: unknown) => createHash("sha256").update(JSON.stringify(value)).digest("hex").slice(0, 32);

/** Size, modification time and inode: what changes when a file is rewritten or replaced. */
function stateOf(path: string): number[] {
  const s = statSync(path);
  return [s.size, s.mtimeMs, s.ino];
}

/**
 * The code that builds tokenizer files: from source, gguf.ts and what it imports; compiled, the
 * executable (whose sources are not files). Undefined where neither identifies it (the engine as a
 * library under Node): then nothing is cached.
 */
function codeState(): number[][] | undefined {
  try {
    const here = fileURLToPath(new URL(".", import.meta.url));
    return ["gguf.ts", "default-templates.ts"].map((name) => stateOf(join(here, name)));
  } catch {
    return typeof Bun !== "undefined" && Bun.main.startsWith("/$bunfs") ? [stateOf(process.execPath)] : undefined;
  }
}

function entryFor(file: string): Entry | undefined {
  try {
    const code = codeState();
    if (!code) return undefined;
    const path = realpathSync(file);
    const fileDigest = digest(path);
    return { dir: tokenizersDir(), name: `${fileDigest}-${digest([stateOf(path), code])}.json`, fileDigest };
  } catch {
    return undefined;
  }
}

function readEntry(path: string): TokenizerFiles | undefined {
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch {
    return undefined; // not cached yet
  }
  try {
    const files = JSON.parse(text) as TokenizerFiles;
    if (isJsonObject(files.tokenizerJson) && isJsonObject(files.tokenizerConfig) && Array.isArray(files.eosTokenIds)) {
      markUsed(path);
      return files;
    }
  } catch {}
  removeQuietly(path); // damaged: rebuilt and written again
  return undefined;
}

/** Entries a GGUF keeps: the builds that used it last. */
const ENTRIES_PER_FILE = 2;

/**
 * Entries the cache keeps in all, the least recently used going first: a GGUF outside the store
 * (a download folder, a temporary file) is never forgotten with its blob, and its entries (a few
 * megabytes each, tens for a large vocabulary) would stay after the file is gone.
 */
const MAX_ENTRIES = 32;

/** Written whole or not at all (a temporary file renamed); the least recently used entries beyond ENTRIES_PER_FILE (the GGUF's) and MAX_ENTRIES (all) removed. */
function writeEntry(entry: Entry, files: TokenizerFiles): void {
  let temp: string | undefined;
  try {
    // In the store's scratch directory (on the same disk), where what a crash leaves is cleared.
    temp = tempPathIn(tmpDir(), "tokenizer");
    mkdirSync(entry.dir, { recursive: true });
    writeFileSync(temp, JSON.stringify(files));
    renameSync(temp, join(entry.dir, entry.name));
    const used = (name: string) => statSync(join(entry.dir, name), { throwIfNoEntry: false })?.mtimeMs ?? 0;
    const byUse = readdirSync(entry.dir)
      .filter((name) => name.endsWith(".json") && name !== entry.name)
      .map((name) => ({ name, used: used(name) }))
      .sort((a, b) => b.used - a.used)
      .map(({ name }) => name);
    const others = byUse.filter((name) => name.startsWith(`${entry.fileDigest}-`));
    const stale = [...others.slice(ENTRIES_PER_FILE - 1), ...byUse.slice(MAX_ENTRIES - 1)];
    for (const old of new Set(stale)) removeQuietly(join(entry.dir, old));
  } catch {
    if (temp) removeQuietly(temp); // a full or read-only disk: loads go on without a cache
  }
}
