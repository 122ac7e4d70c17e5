// Fetches a URL into a file without ever leaving a half-written file at the destination.
// Bytes land in "<dest>.partial", which survives interruptions so the next attempt (in this
// process or a later run) resumes with an HTTP Range request; the file is renamed to <dest>
// only once its size and SHA-256 check out.
import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { mkdir, open, rename, stat, truncate, unlink } from "node:fs/promises";
import { dirname, join } from "node:path";
import { requireFreeSpace } from "../files";
import { noSpaceLeft } from "../format";
import { retryAfterMs } from "../retry-after";
import { withLock } from "./lock";
import { locksDir, storeRoot } from "./paths";
import { syncToDisk } from "./sync";

export interface DownloadProgress {
  /** Bytes on disk so far, including any resumed from an earlier attempt. */
  received: number;
  /** Full size when known (from the caller or the server). */
  total?: number;
  /** Set on the update that starts an attempt on a partial file: the bytes of it already on disk, where it resumes. */
  resumedAt?: number;
  /** The file the update is about, where a progress spans several. */
  file?: string;
  /** The bytes this update adds were on disk already (a whole file kept from before), not transferred. */
  onDisk?: boolean;
}

export interface DownloadOptions {
  expectedSha256?: string;
  expectedSize?: number;
  headers?: Record<string, string>;
  onProgress?: (progress: DownloadProgress) => void;
  signal?: AbortSignal;
  /** Consecutive attempts allowed to fail without adding a byte before giving up (default 5). */
  retries?: number;
  /** First pause between attempts; it doubles on each consecutive failure (default 500 ms). */
  retryDelayMs?: number;
  /** A connection that delivers nothing for this long counts as dropped (default 30 s). */
  stallTimeoutMs?: number;
  /**
   * Takes the finished file away (moves it into the store) while the download's lock is still
   * held: moved after the lock went, it could be another process's download of the same path,
   * finished meanwhile, that is moved or removed from under it.
   */
  claim?: (result: DownloadResult) => Promise<void>;
}

export interface DownloadResult {
  path: string;
  sha256: string;
  size: number;
}

/** A failed download; `retryable` marks transient network trouble worth another attempt. */
export class DownloadError extends Error {
  constructor(
    message: string,
    readonly retryable = false,
    readonly status?: number,
    /** The pause the server asked for before the next attempt (its Retry-After). */
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = "DownloadError";
  }
}

const MAX_RETRY_DELAY_MS = 10_000;

/** The pause before asking a busy server again: its Retry-After where it gives one, else `otherwiseMs`; MAX_RETRY_DELAY_MS at most. */
export function retryDelayMs(response: Response, otherwiseMs: number): number {
  return Math.min(retryAfterMs(response.headers.get("retry-after")) ?? otherwiseMs, MAX_RETRY_DELAY_MS);
}

// Another process fetching the same file may take as long as the download does.
const DOWNLOAD_LOCK_TIMEOUT_MS = 6 * 3600_000;

/**
 * One download of `destPath` at a time, across processes: two pulls that want the same file
 * (two models sharing a blob, two servers) would otherwise append to one partial file, each
 * hashing only its own bytes, and keep a file whose name does not match its content.
 */
export function downloadToFile(url: string, destPath: string, options: DownloadOptions = {}): Promise<DownloadResult> {
  const lock = join(locksDir(), `download-${createHash("sha256").update(destPath).digest("hex").slice(0, 16)}.lock`);
  return withLock(
    lock,
    async () => {
      const result = (await finishedMeanwhile(destPath, options)) ?? (await downloadUnlocked(url, destPath, options));
      await options.claim?.(result);
      return result;
    },
    { timeoutMs: DOWNLOAD_LOCK_TIMEOUT_MS, signal: options.signal },
  );
}

/** The file the process we waited for completed: it was renamed into place only once verified. */
async function finishedMeanwhile(destPath: string, options: DownloadOptions): Promise<DownloadResult | undefined> {
  const { expectedSha256, expectedSize } = options;
  if (expectedSha256 === undefined || expectedSize === undefined) return undefined;
  const size = await stat(destPath).then(
    (s) => s.size,
    () => undefined,
  );
  return size === expectedSize ? { path: destPath, sha256: expectedSha256.toLowerCase(), size } : undefined;
}

async function downloadUnlocked(url: string, destPath: string, options: DownloadOptions): Promise<DownloadResult> {
  const shownUrl = withoutQuery(withoutCredentials(url));
  const resuming = (await partialBytes(destPath)) > 0;
  const retries = options.retries ?? 5;
  const baseDelay = options.retryDelayMs ?? 500;
  await mkdir(dirname(destPath), { recursive: true });
  const partial = new PartialFile(`${destPath}.partial`);

  let failures = 0;
  for (;;) {
    options.signal?.throwIfAborted();
    await partial.syncWithDisk(options.expectedSize);
    const sizeBefore = partial.size;
    try {
      await fetchRemainder(url, shownUrl, partial, options);
      break;
    } catch (error) {
      if (!(error instanceof DownloadError && error.retryable)) throw error;
      failures = partial.size > sizeBefore ? 1 : failures + 1;
      if (failures > retries)
        throw new DownloadError(
          `${error.message} (gave up after ${retries} ${retries === 1 ? "retry" : "retries"})`,
          false,
          error.status,
        );
      // A busy server's Retry-After is honoured (asked again sooner, a rate limit only refuses again).
      const backoff = error.retryAfterMs ?? baseDelay * 2 ** (failures - 1);
      await sleep(Math.min(backoff, MAX_RETRY_DELAY_MS), options.signal);
    }
  }

  const sha256 = partial.digest();
  if (options.expectedSize !== undefined && partial.size !== options.expectedSize) {
    await partial.remove();
    throw new DownloadError(
      `size mismatch for ${shownUrl}: expected ${options.expectedSize} bytes, got ${partial.size}`,
    );
  }
  if (options.expectedSha256 !== undefined && sha256 !== options.expectedSha256.toLowerCase()) {
    await partial.remove();
    // The bytes at fault may be those an earlier run left (a crash can leave a tail unwritten): once more, from zero.
    if (resuming) return downloadUnlocked(url, destPath, options);
    throw new DownloadError(
      `checksum mismatch for ${shownUrl}: expected sha256 ${options.expectedSha256}, got ${sha256}`,
    );
  }
  await partial.flushToDisk();
  await rename(partial.path, destPath);
  return { path: destPath, sha256, size: partial.size };
}

/** Fails before a download that cannot fit in the store, rather than filling the disk and failing halfway. */
export async function ensureFreeSpace(bytes: number, what: string): Promise<void> {
  requireFreeSpace(storeRoot(), bytes, what);
}

/** The bytes of a partial download of `destPath` already on disk (what a resume need not fetch again). */
export function partialBytes(destPath: string): Promise<number> {
  return stat(`${destPath}.partial`).then(
    (s) => s.size,
    () => 0,
  );
}

/** One HTTP request that appends whatever the partial file still lacks. */
async function fetchRemainder(
  url: string,
  shownUrl: string,
  partial: PartialFile,
  options: DownloadOptions,
): Promise<void> {
  const offset = partial.size;
  if (options.expectedSize !== undefined && offset === options.expectedSize) return;

  const headers = new Headers(options.headers);
  // Ranges count raw bytes; a transparently decompressed body would make offsets meaningless.
  headers.set("Accept-Encoding", "identity");
  if (offset > 0) headers.set("Range", `bytes=${offset}-`);

  const stall = new StallTimer(options.stallTimeoutMs ?? 30_000);
  const signal = options.signal ? AbortSignal.any([options.signal, stall.signal]) : stall.signal;
  try {
    let response: Response;
    try {
      response = await fetch(url, { headers, signal });
    } catch (error) {
      throw asNetworkError(error, shownUrl, options.signal, stall);
    }

    if (response.status === 416 && offset > 0) {
      await response.body?.cancel();
      const total = contentRangeTotal(response.headers.get("content-range"));
      if (total === offset) return; // the partial file already holds everything
      await partial.reset(); // the partial is longer than the remote file: it belongs to something else
      return fetchRemainder(url, shownUrl, partial, options);
    }
    if (response.status === 206) {
      const range = parseContentRange(response.headers.get("content-range"));
      if (range?.start !== offset) {
        await response.body?.cancel();
        await partial.reset();
        throw new DownloadError(`${shownUrl} answered a resume with the wrong byte range; restarting from zero`, true);
      }
    } else if (response.ok && offset > 0) {
      await partial.reset(); // the server ignored Range and is sending the whole file
    }
    if (!response.ok) {
      await response.body?.cancel();
      const retryable = response.status === 408 || response.status === 429 || response.status >= 500;
      throw new DownloadError(
        `GET ${shownUrl}: HTTP ${response.status} ${response.statusText}`.trim(),
        retryable,
        response.status,
        retryAfterMs(response.headers.get("retry-after")),
      );
    }

    const total = remoteTotal(response) ?? options.expectedSize;
    if (total !== undefined && options.expectedSize !== undefined && total !== options.expectedSize) {
      await response.body?.cancel();
      throw new DownloadError(
        `size mismatch for ${shownUrl}: expected ${options.expectedSize} bytes, server has ${total}`,
      );
    }
    // Announces where this attempt starts, so progress can tell resumed bytes from new ones.
    options.onProgress?.({ received: partial.size, total, ...(partial.size > 0 ? { resumedAt: partial.size } : {}) });
    await copyBody(response, partial, total, shownUrl, options, stall);
    if (total !== undefined && partial.size < total) {
      throw new DownloadError(`connection to ${shownUrl} closed early (${partial.size} of ${total} bytes)`, true);
    }
  } finally {
    stall.clear();
  }
}

async function copyBody(
  response: Response,
  partial: PartialFile,
  total: number | undefined,
  shownUrl: string,
  options: DownloadOptions,
  stall: StallTimer,
): Promise<void> {
  if (!response.body) return;
  const reader = response.body.getReader();
  const file = await partial.openForAppend();
  try {
    for (;;) {
      let chunk: Awaited<ReturnType<typeof reader.read>>;
      try {
        chunk = await reader.read();
      } catch (error) {
        throw asNetworkError(error, shownUrl, options.signal, stall);
      }
      if (chunk.done) return;
      stall.restart();
      await file.append(chunk.value);
      options.onProgress?.({ received: partial.size, total });
    }
  } finally {
    // Releases the connection when we stop early (full disk, abort); a no-op once the body is done.
    await reader.cancel().catch(() => {});
    await file.close();
  }
}

/** The .partial file, with a running SHA-256 of exactly the bytes it holds. */
class PartialFile {
  size = 0;
  private hasher = createHash("sha256");

  constructor(readonly path: string) {}

  /** Makes size and hash match what is on disk (a previous run may have left bytes behind). */
  async syncWithDisk(expectedSize: number | undefined): Promise<void> {
    const onDisk = await stat(this.path).then(
      (s) => s.size,
      () => 0,
    );
    if (onDisk === this.size) return;
    if (expectedSize !== undefined && onDisk > expectedSize) return this.reset();
    this.hasher = createHash("sha256");
    this.size = 0;
    for await (const chunk of createReadStream(this.path)) {
      this.hasher.update(chunk);
      this.size += chunk.byteLength;
    }
  }

  async reset(): Promise<void> {
    await truncate(this.path, 0).catch(ignoreMissing);
    this.hasher = createHash("sha256");
    this.size = 0;
  }

  async openForAppend(): Promise<{ append(bytes: Uint8Array): Promise<void>; close(): Promise<void> }> {
    const handle = await open(this.path, "a").catch((error) => {
      throw fileError(error, this.path);
    });
    return {
      append: async (bytes) => {
        let written = 0;
        try {
          while (written < bytes.byteLength) {
            const { bytesWritten } = await handle.write(bytes, written);
            written += bytesWritten;
          }
        } catch (error) {
          // The hash now trails the file; syncWithDisk re-reads it before any resume.
          throw fileError(error, this.path);
        }
        this.hasher.update(bytes);
        this.size += bytes.byteLength;
      },
      close: () => handle.close(),
    };
  }

  digest(): string {
    return this.hasher.copy().digest("hex");
  }

  /** fsync before rename, so a crash cannot leave a complete-looking name over missing data. */
  flushToDisk(): Promise<void> {
    return syncToDisk(this.path);
  }

  async remove(): Promise<void> {
    await unlink(this.path).catch(ignoreMissing);
  }
}

/** Aborts a request that has gone quiet for too long. */
class StallTimer {
  private readonly controller = new AbortController();
  private timer: ReturnType<typeof setTimeout> | undefined;
  readonly signal = this.controller.signal;

  constructor(readonly ms: number) {
    this.restart();
  }

  get fired(): boolean {
    return this.signal.aborted;
  }

  restart(): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.controller.abort(), this.ms);
  }

  clear(): void {
    clearTimeout(this.timer);
  }
}

function asNetworkError(
  error: unknown,
  shownUrl: string,
  callerSignal: AbortSignal | undefined,
  stall: StallTimer,
): unknown {
  if (callerSignal?.aborted) return callerSignal.reason;
  if (stall.fired)
    return new DownloadError(`no data from ${shownUrl} for ${stall.ms / 1000} s; connection considered dropped`, true);
  return new DownloadError(`connection to ${shownUrl} failed: ${describeNetworkError(error)}`, true);
}

/** Bun's fetch errors run to several sentences of advice; the first one says what happened. */
export function describeNetworkError(error: unknown): string {
  const message = error instanceof Error ? error.message : String(error);
  return message.split(/\.(\s|$)/)[0]!;
}

function fileError(error: unknown, path: string): Error {
  if (noSpaceLeft(error))
    return Object.assign(
      new DownloadError(`no space left on device while writing ${path}; free some space and run again to resume`),
      { code: (error as NodeJS.ErrnoException).code },
    );
  const reason = error instanceof Error ? error.message : String(error);
  return new DownloadError(`cannot write ${path}: ${reason}`);
}

function ignoreMissing(error: NodeJS.ErrnoException): void {
  if (error.code !== "ENOENT") throw error;
}

function remoteTotal(response: Response): number | undefined {
  if (response.status === 206) return contentRangeTotal(response.headers.get("content-range"));
  const length = response.headers.get("content-length");
  return length !== null && /^\d+$/.test(length) ? Number(length) : undefined;
}

function parseContentRange(header: string | null): { start: number; total?: number } | undefined {
  const match = header?.match(/^bytes (\d+)-\d+\/(\d+|\*)$/);
  if (!match) return undefined;
  return { start: Number(match[1]), total: match[2] === "*" ? undefined : Number(match[2]) };
}

function contentRangeTotal(header: string | null): number | undefined {
  const match = header?.match(/\/(\d+)$/);
  return match ? Number(match[1]) : undefined;
}

/** The URL as it may appear in messages: index URLs often carry a token as user:password. */
export const withoutCredentials = (url: string): string =>
  edited(url, (u) => {
    u.username = "";
    u.password = "";
  });

/**
 * The URL without its query and fragment, as a download's messages show it: a storage link
 * (the hub's CDN, S3) carries its signature there, a credential of an hour, and a thousand characters.
 */
const withoutQuery = (url: string): string =>
  edited(url, (u) => {
    u.search = "";
    u.hash = "";
  });

/** `url` as `edit` leaves it; as it is where it is not a URL. */
function edited(url: string, edit: (parsed: URL) => void): string {
  try {
    const parsed = new URL(url);
    edit(parsed);
    return parsed.href;
  } catch {
    return url;
  }
}

/** A pause that an abort ends early, rejecting with its reason. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}
