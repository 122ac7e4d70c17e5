// The prefix cache's second level (serve --prompt-cache-dir): prefixes that the in-memory
// cache evicts, or still holds when its model unloads or the server stops, are written to a
// directory, one prompt cache file each, named by the model's content digest, the cache
// layout and the tokens; a later request, also after a restart, reloads the longest stored
// prefix instead of prefilling it. The directory is kept under a byte bound, least recently
// used files out first (a load touches its file). Files of several models may share it.
import { existsSync, mkdirSync, readdirSync, rmSync, statSync, utimesSync } from "node:fs";
import { join } from "node:path";
import {
  loadPromptCache,
  PromptCacheFileError,
  readPromptCacheHeader,
  savePromptCache,
  type PromptCacheEntry,
  type PromptCacheOwner,
} from "./prompt-cache-file";

const EXTENSION = ".safetensors";

interface Stored {
  file: string;
  tokens: number[];
  dropped: number;
}

export class DiskPrefixCache {
  /** This model's files, by name. */
  readonly #files = new Map<string, Stored>();
  /** Prompt tokens restored from disk. */
  restoredTokens = 0;

  constructor(
    readonly dir: string,
    readonly maxBytes: number,
    /** The model (its content digest) and cache layout whose files this cache reads and writes. */
    readonly owner: PromptCacheOwner,
    /** The model's path: a file from the same path but another digest is an old version, removed. */
    readonly source: string,
    /** Told about files removed or not written (the engine has no logger of its own). */
    readonly warn: (message: string) => void = (message) => process.stderr.write(`warning: ${message}\n`),
  ) {
    mkdirSync(dir, { recursive: true });
    this.#scan();
  }

  get entries(): number {
    return this.#files.size;
  }

  /** Indexes this model's files; drops damaged ones and those of an older version of this model. */
  #scan(): void {
    for (const name of readdirSync(this.dir)) {
      if (!name.endsWith(EXTENSION)) continue;
      const file = join(this.dir, name);
      if (name.includes(".tmp.")) {
        // A write that never finished (its process died): nobody renames it any more.
        if (Date.now() - statSync(file).mtimeMs > 60_000) rmSync(file, { force: true });
        continue;
      }
      let metadata: Record<string, string>;
      try {
        metadata = readPromptCacheHeader(file);
      } catch (error) {
        this.#discard(file, error as Error);
        continue;
      }
      const mine = metadata.model === this.owner.model && metadata.kv === this.owner.kv;
      if (!mine) {
        if (metadata.source === this.source && metadata.model !== this.owner.model)
          this.#discard(file, new Error("made by another version of the model"));
        continue;
      }
      this.#files.set(name, { file, tokens: JSON.parse(metadata.tokens!), dropped: Number(metadata.dropped) });
    }
  }

  #discard(file: string, why: Error): void {
    this.warn(`prompt cache: removing ${file}: ${why.message}`);
    rmSync(file, { force: true });
    this.#files.delete(file.slice(this.dir.length + 1));
  }

  /** The stored entry sharing the longest prefix with `prompt` (at most `limit` tokens), if longer than `atLeast`. */
  longest(prompt: number[], limit: number, atLeast: number): { name: string; length: number } | undefined {
    let best: { name: string; length: number } | undefined;
    for (const [name, s] of this.#files) {
      let length = 0;
      const most = Math.min(limit, s.tokens.length);
      while (length < most && s.tokens[length] === prompt[length]) length++;
      // A rotated prefix continues exactly its own tokens only.
      if (s.dropped > 0 && length !== s.tokens.length) continue;
      if (length > (best?.length ?? atLeast)) best = { name, length };
    }
    return best;
  }

  /** Reads a stored entry; a damaged file is removed and gives undefined. */
  load(name: string): PromptCacheEntry | undefined {
    const stored = this.#files.get(name);
    if (!stored) return undefined;
    try {
      const entry = loadPromptCache(stored.file, this.owner);
      const now = new Date();
      utimesSync(stored.file, now, now);
      return entry;
    } catch (error) {
      if (!(error instanceof PromptCacheFileError)) throw error;
      this.#discard(stored.file, error);
      return undefined;
    }
  }

  /** Writes an entry unless it is stored already, then keeps the directory within its bound. */
  save(entry: PromptCacheEntry): void {
    const name = `${new Bun.CryptoHasher("sha256")
      .update(`${this.owner.model}\n${this.owner.kv}\n${entry.dropped}\n${entry.tokens.join(",")}`)
      .digest("hex")}${EXTENSION}`;
    const file = join(this.dir, name);
    if (this.#files.has(name) && existsSync(file)) return;
    try {
      savePromptCache(file, entry, this.owner, this.source);
    } catch (error) {
      this.warn(`prompt cache: cannot write ${file}: ${(error as Error).message}`);
      return;
    }
    this.#files.set(name, { file, tokens: entry.tokens, dropped: entry.dropped });
    this.#bound();
  }

  /** Removes the least recently used files (of any model) until the directory fits its bound. */
  #bound(): void {
    const files = readdirSync(this.dir)
      .filter((name) => name.endsWith(EXTENSION) && !name.includes(".tmp."))
      .flatMap((name) => {
        try {
          const s = statSync(join(this.dir, name));
          return [{ name, size: s.size, used: s.mtimeMs }];
        } catch {
          return []; // removed meanwhile by another server
        }
      })
      .sort((a, b) => a.used - b.used);
    let total = files.reduce((n, f) => n + f.size, 0);
    for (const f of files) {
      if (total <= this.maxBytes) break;
      rmSync(join(this.dir, f.name), { force: true });
      this.#files.delete(f.name);
      total -= f.size;
    }
  }
}
