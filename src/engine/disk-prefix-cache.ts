// The prefix cache's second level (serve --prompt-cache-dir): prefixes that the in-memory
// cache evicts, or still holds when its model unloads or the server stops, are written to a
// directory, one prompt cache file each, named by the model's content digest, the cache
// layout and the tokens; a later request, also after a restart, reloads the longest stored
// prefix instead of prefilling it, where it spares enough of the prefill to be worth reading.
// The directory is kept under a byte bound, from the start and before each write, least
// recently used files out first (a load touches its file). Files of several models may share it.
// A save copies the entry's bytes out of MLX on the engine thread and writes them with async
// file I/O, one file at a time, so decoding never waits for the disk; the file is looked up only
// once it is complete.
// A model split across processes keeps each process's layers' share of an entry beside its
// file (shareFile); rank 0 decides, and tells the others (the mirror) what to write, read back
// and remove. A file whose shares cannot all be read back is removed, never used.
import { existsSync, mkdirSync, readdirSync, rmSync, statSync } from "node:fs";
import { randomUUID } from "node:crypto";
import { mkdir, readdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import type { RemoteLayers } from "../models/model";
import { markUsed } from "../files";
import { shortestServed } from "./prefix-cache";
import { fileErrorReason, writeErrorReason } from "../format";
import {
  encodePromptCache,
  loadPromptCache,
  PromptCacheFileError,
  readPromptCacheHeader,
  writePromptCacheFile,
  type PromptCacheEntry,
  type PromptCacheOwner,
} from "./prompt-cache-file";

const EXTENSION = ".safetensors";

/**
 * Whether `name` is this cache's: a file named by fileName (a SHA-256), or a share or temporary
 * beside one. Nothing else in the directory is read or removed (it may be a model's weights).
 */
const ownName = (name: string) => /^[0-9a-f]{64}\.safetensors/.test(name);

/**
 * File writes in the background, one at a time, in the order queued (shared by a server's disk
 * caches). Bounded: past `maxBytes` waiting, a write is refused rather than queued, so a disk
 * slower than evictions cannot grow memory without end; one write is always taken when nothing
 * waits, however large.
 */
export class BackgroundWrites {
  #waiting = 0;
  #count = 0;
  #chain: Promise<void> = Promise.resolve();

  constructor(readonly maxBytes = 1024 ** 3) {}

  /** Writes queued or running. */
  get pending(): number {
    return this.#count;
  }

  /** Queues `write` (holding `bytes` until it is done); false, and nothing queued, past the bound. */
  add(bytes: number, write: () => Promise<void>): boolean {
    if (this.#count > 0 && this.#waiting + bytes > this.maxBytes) return false;
    this.#waiting += bytes;
    this.#count++;
    const settle = () => {
      this.#waiting -= bytes;
      this.#count--;
    };
    // `write` reports its own failures; a rejection still settles, so later writes run.
    this.#chain = this.#chain.then(write).then(settle, settle);
    return true;
  }

  /** Resolves once every write queued so far is done. */
  flush(): Promise<void> {
    return this.#chain;
  }
}

/** Whether a write failed because the directory takes none (read-only, or not ours to write). */
const refusesWrites = (error: unknown) => ["EACCES", "EPERM", "EROFS"].includes((error as NodeJS.ErrnoException).code!);

/** The file whose share (shareFile) `name` is, if it is one. */
const shareOf = (name: string) => /^(.*)\.rank\d+$/.exec(name)?.[1];

/**
 * The most positions a file is read for (all it holds, into memory) per prompt token it spares
 * the prefill: a file of a long document shares its chat template's first tokens with every
 * request, and reading it for those would cost far more than they do, and push out of memory
 * the prefixes held there.
 */
const READ_FOR_SKIPPED = 8;

/** Whether a file nobody finished (or whose file is gone) is old enough to be no write in progress. */
const stale = (file: string) => {
  const since = statSync(file, { throwIfNoEntry: false })?.mtimeMs;
  return since !== undefined && Date.now() - since > 60_000;
};

interface Stored {
  file: string;
  tokens: number[];
  dropped: number;
  /** The shortest prefix of its tokens it serves (shortestServed). */
  shortest: number;
}

export class DiskPrefixCache {
  /** This model's files, by name. */
  readonly #files = new Map<string, Stored>();
  /** Files queued or being written. */
  readonly #writing = new Set<string>();
  /** Prompt tokens restored from disk. */
  restoredTokens = 0;
  /** Why the directory cannot be used at all (it cannot be made or listed): then nothing is read or written. */
  readonly unusable?: string;
  /** Why the directory refuses writes (read-only): then its files are still read, and nothing more is written. */
  #readOnly?: string;
  /** The other processes of a split model: each writes, reads and removes its share of every file. */
  mirror?: Pick<RemoteLayers, "savePrefixFile" | "loadPrefixFile" | "removePrefixFile">;

  constructor(
    readonly dir: string,
    readonly maxBytes: number,
    /** The model (its content digest) and cache layout whose files this cache reads and writes. */
    readonly owner: PromptCacheOwner,
    /** The model's path: a file from the same path but another digest is an old version, removed. */
    readonly source: string,
    /** Told about files removed or not written (the engine has no logger of its own). */
    readonly warn: (message: string) => void = (message) => process.stderr.write(`warning: ${message}\n`),
    /** Where files are written (a server shares one among its models, and waits for it when stopping). */
    readonly writes = new BackgroundWrites(),
  ) {
    // A directory that cannot be made or read costs the server its second level, not its answers.
    try {
      mkdirSync(dir, { recursive: true });
      this.#scan();
    } catch (error) {
      this.#files.clear();
      this.unusable = writeErrorReason(error);
      this.warn(`prompt cache: cannot use ${dir}, going on without it: ${this.unusable}`);
      return;
    }
    // A bound lowered since the files were written holds from the start, not from the next
    // write (a server that only reads would keep the directory over it for its whole life).
    this.writes.add(0, () =>
      this.#bound().catch((error) => this.warn(`prompt cache: cannot keep ${dir} within its bound: ${error.message}`)),
    );
  }

  get entries(): number {
    return this.#files.size;
  }

  /**
   * Indexes this model's files; drops damaged ones, those of an older version of this model or
   * of another split of it (other ranks or --layers: their shares no longer fit), and shares
   * whose file is gone.
   */
  #scan(): void {
    for (const name of readdirSync(this.dir)) {
      if (!name.endsWith(EXTENSION) || !ownName(name)) continue;
      const file = join(this.dir, name);
      if (name.includes(".tmp.")) {
        // A write that never finished (its process died): nobody renames it any more.
        if (stale(file)) this.#remove(file);
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
      if (metadata.split !== this.owner.split) {
        const split = (split?: string) => split ?? "one process";
        this.#discard(
          file,
          new Error(`made for another split of the model (${split(metadata.split)}, not ${split(this.owner.split)})`),
        );
        continue;
      }
      const stored = {
        tokens: JSON.parse(metadata.tokens!) as number[],
        dropped: Number(metadata.dropped ?? 0),
        shortest: metadata.shortest === undefined ? undefined : Number(metadata.shortest),
      };
      this.#files.set(name, { file, ...stored, shortest: shortestServed(stored) });
    }
    // Shares whose file is gone. A share is written before its file is renamed into place: only
    // an old one is an orphan.
    for (const name of readdirSync(this.dir)) {
      const whose = shareOf(name);
      const share = join(this.dir, name);
      if (whose?.endsWith(EXTENSION) && ownName(whose) && !existsSync(join(this.dir, whose)) && stale(share))
        this.#remove(share);
    }
  }

  /** Removes the file of `entry`, where there is one: what it holds failed a step it was used in. */
  discard(entry: Pick<PromptCacheEntry, "tokens" | "dropped">, why: Error): void {
    const name = this.fileName(entry);
    if (this.#files.has(name)) this.#discard(join(this.dir, name), why);
  }

  /** Forgets a damaged or unusable file and removes it (with its shares) where the directory lets us. */
  #discard(file: string, why: Error): void {
    // A PromptCacheFileError names the file already: once is enough.
    const reason = why.message.startsWith(file) ? why.message.slice(file.length).replace(/^:? /, "") : why.message;
    this.warn(`prompt cache: removing ${file}: ${reason}`);
    this.#files.delete(file.slice(this.dir.length + 1));
    this.#remove(file);
    this.#removeShares(file);
  }

  /**
   * Removes a file of ours; one that stays (a read-only directory) is a warning: it is not
   * indexed, so never used, and the server goes on.
   */
  #remove(file: string): void {
    try {
      rmSync(file, { force: true });
    } catch (error) {
      this.warn(`prompt cache: cannot remove ${file}: ${fileErrorReason(error)}`);
    }
  }

  /** The other processes' shares of `file`: theirs, and those beside it here (ranks on this machine). */
  #removeShares(file: string): void {
    this.mirror?.removePrefixFile(file);
    const name = file.slice(this.dir.length + 1);
    let names: string[];
    try {
      names = readdirSync(this.dir);
    } catch {
      return; // the directory is gone or unreadable: no share beside it to remove
    }
    for (const other of names) if (shareOf(other) === name) this.#remove(join(this.dir, other));
  }

  /**
   * The stored entry sharing the longest prefix with `prompt` (at most `limit` tokens), if longer
   * than `atLeast` by a share of its file worth reading (READ_FOR_SKIPPED).
   */
  longest(prompt: number[], limit: number, atLeast: number): { name: string; length: number } | undefined {
    if (this.unusable !== undefined) return undefined;
    let best: { name: string; length: number } | undefined;
    for (const [name, s] of this.#files) {
      let length = 0;
      const most = Math.min(limit, s.tokens.length);
      while (length < most && s.tokens[length] === prompt[length]) length++;
      // A rotated prefix serves those its rotating cache could go back to only.
      if (length < s.shortest) continue;
      if ((length - atLeast) * READ_FOR_SKIPPED < s.tokens.length - s.dropped) continue;
      if (length > (best?.length ?? atLeast)) best = { name, length };
    }
    return best;
  }

  /**
   * On a split model, every other process reads its share of stored entry `name` as prefix
   * entry `id`; when one cannot, the file is removed and false returned (nothing is used).
   */
  loadShares(name: string, id: number, loaded: PromptCacheEntry): boolean {
    if (!this.mirror) return true;
    const file = join(this.dir, name);
    if (loaded.save !== undefined && this.mirror.loadPrefixFile(id, file, loaded.save)) return true;
    this.#discard(file, new Error("a share of another process is missing or damaged"));
    return false;
  }

  /** Reads a stored entry; a damaged file is removed and gives undefined. */
  load(name: string): PromptCacheEntry | undefined {
    const stored = this.#files.get(name);
    if (!stored) return undefined;
    try {
      const entry = loadPromptCache(stored.file, this.owner);
      markUsed(stored.file);
      return entry;
    } catch (error) {
      if (!(error instanceof PromptCacheFileError)) throw error;
      // Another server on this directory removed it to keep within its bound: gone, not damaged.
      if (!existsSync(stored.file)) this.#files.delete(name);
      else this.#discard(stored.file, error);
      return undefined;
    }
  }

  /** The file an entry is stored in (in `dir`). */
  fileName(entry: Pick<PromptCacheEntry, "tokens" | "dropped">): string {
    return `${new Bun.CryptoHasher("sha256")
      .update(`${this.owner.model}\n${this.owner.kv}\n${entry.dropped}\n${entry.tokens.join(",")}`)
      .digest("hex")}${EXTENSION}`;
  }

  /**
   * Queues an entry's file unless it is stored or queued already; the bytes are copied now, so
   * the entry's arrays may be freed as soon as this returns (on a split model, after the other
   * processes were told to write their shares of prefix entry `id`). In the background
   * (writes.flush() waits for it), room is made within the directory's bound, then the file is
   * written; a file larger than the bound, or a failed write, is a warning, and leaves no file.
   */
  save(entry: PromptCacheEntry, id = 0): void {
    if (this.unusable !== undefined || this.#readOnly !== undefined) return;
    const name = this.fileName(entry);
    const file = join(this.dir, name);
    if (this.#writing.has(name) || (this.#files.has(name) && existsSync(file))) return;
    // A split model's file and the other processes' shares of it carry one save id.
    const share = this.mirror && { rank: 0, save: randomUUID() };
    let parts: Uint8Array[];
    try {
      parts = encodePromptCache(entry, this.owner, this.source, share);
    } catch (error) {
      this.warn(`prompt cache: cannot write ${file}: ${(error as Error).message}`);
      return;
    }
    const bytes = parts.reduce((n, p) => n + p.byteLength, 0);
    // Room for it would take every other file out, and still not be enough.
    if (bytes > this.maxBytes) {
      this.warn(`prompt cache: not writing ${file}: it is larger than the directory's bound`);
      return;
    }
    const queued = this.writes.add(bytes, async () => {
      try {
        // Queued before the directory refused an earlier write: not tried.
        if (this.#readOnly !== undefined) {
          if (share) this.#removeShares(file);
          return;
        }
        // The directory may have been removed since (a cache cleared by hand while the server runs).
        await mkdir(this.dir, { recursive: true });
        // Room first: on a disk no larger than the bound, the file would not fit beside the others.
        await this.#bound(bytes);
        await writePromptCacheFile(file, parts);
        this.#files.set(name, { file, tokens: entry.tokens, dropped: entry.dropped, shortest: shortestServed(entry) });
      } catch (error) {
        if (refusesWrites(error)) {
          // Said once: every later write would fail alike.
          this.#readOnly = writeErrorReason(error);
          this.warn(`prompt cache: cannot write to ${this.dir}, going on reading it only: ${this.#readOnly}`);
        } else this.warn(`prompt cache: cannot write ${file}: ${(error as Error).message}`);
        if (share) this.#removeShares(file);
      } finally {
        this.#writing.delete(name);
      }
    });
    if (!queued) {
      this.warn(`prompt cache: not writing ${file}: too much is still waiting for the disk`);
      return;
    }
    this.#writing.add(name);
    if (share) this.mirror!.savePrefixFile(id, file, share.save);
  }

  /**
   * Removes the least recently used files (of any model, with their shares) until the directory,
   * and `incoming` bytes about to be written to it, fit its bound.
   */
  async #bound(incoming = 0): Promise<void> {
    const all = await readdir(this.dir);
    const names = all.filter((name) => name.endsWith(EXTENSION) && ownName(name) && !name.includes(".tmp."));
    const sizeOf = async (name: string) => (await stat(join(this.dir, name))).size;
    const files = (
      await Promise.all(
        names.map(async (name) => {
          try {
            const s = await stat(join(this.dir, name));
            // With the shares of a split model's ranks on this machine.
            const shares = await Promise.all(all.filter((other) => shareOf(other) === name).map(sizeOf));
            return [{ name, size: s.size + shares.reduce((n, b) => n + b, 0), used: s.mtimeMs }];
          } catch {
            return []; // removed meanwhile by another server
          }
        }),
      )
    )
      .flat()
      .sort((a, b) => a.used - b.used);
    let total = files.reduce((n, f) => n + f.size, incoming);
    for (const f of files) {
      if (total <= this.maxBytes) break;
      await rm(join(this.dir, f.name), { force: true });
      this.#removeShares(join(this.dir, f.name));
      this.#files.delete(f.name);
      total -= f.size;
    }
  }
}
