// A prompt's keys and values in a file, as mlx_lm.cache_prompt saves them: MLX's own
// safetensors, one tensor per layer and stored part, and in its metadata the token ids, the
// model's content digest, how the cache stores keys and values, and a checksum of the tensors.
// Encoding copies the tensors out of MLX (on the engine thread); writing the bytes is async
// file I/O, so the engine thread never waits for the disk. Written to a temporary file, synced
// and renamed, so a reader never sees half a file; a file that fails its checksum, or belongs to
// another model or cache layout, is refused.
// A model split across processes (mlx launch) saves each process's layers' share: rank 0's in
// the file, rank R's beside it in FILE.rankR; each records the split, and the file and its
// shares one random save id, so a share is only ever used with the file it was saved with.
import {
  closeSync,
  fsyncSync,
  openSync,
  readdirSync,
  readSync,
  realpathSync,
  renameSync,
  statSync,
  writeSync,
} from "node:fs";
import { randomUUID } from "node:crypto";
import { open, readdir, rename, rm } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import * as mx from "../mlx";
import { cacheState, freeCaches, makeCaches } from "../models";
import { quantStartBound, type KvQuantization, type Stored } from "../models/cache";
import { perChannelKeys } from "../models/channel-keys";
import { directoryWeightFiles, type LoadedModel } from "../models/load";
import { RotatingKVCache } from "../models/rotating-cache";
import { removeQuietly } from "../files";
import { isProcessAlive } from "../store/lock";
import { neededOf } from "../store/model-files";
import { fileErrorReason } from "../format";
import type { Tokenizer } from "../tokenizer/tokenizer";
import { DEFAULT_PREFILL_CHUNK } from "./batch";
import { promptTokens } from "./prompt";
import { shortestPrefix, snapshotRow, type PrefixCache } from "./prefix-cache";

const FORMAT = "mlx-prompt-cache/1";

/** What a prompt cache holds: `tokens`, of which the last `tokens.length - dropped` positions per layer. */
export interface PromptCacheEntry {
  tokens: number[];
  /** Positions a rotating cache (--max-kv-size) no longer held. */
  dropped: number;
  /**
   * The shortest prefix of its tokens it can serve, when positions were dropped: how far back
   * its rotating cache could go (RotatingKVCache.shortestTrim). Unsaid, all its tokens.
   */
  shortest?: number;
  keys: Stored[];
  values: Stored[];
  /** The document, for `mlx run --prompt-cache` to build its prompt from (mlx cache-prompt). */
  text?: string;
  /** A split model's save id: the other processes' shares of this entry carry it too. */
  save?: string;
}

/** Who may use a file: the model (its content digest) and the cache layout. */
export interface PromptCacheOwner {
  model: string;
  kv: string;
  /** How the model is split across processes (RemoteLayers.split); undefined for one process. */
  split?: string;
  /**
   * The key and value heads each layer's cache holds (one process): a file whose tensors are not
   * one row of as many is damaged, though its checksum, which covers the bytes, passes.
   */
  heads?: number;
}

/** One process's share of a split model's entry: its rank, and the save it belongs to. */
export interface PromptCacheShare {
  rank: number;
  save: string;
}

/** Where rank `rank` (> 0) of a split model keeps its share of the prompt cache file `file`. */
export const shareFile = (file: string, rank: number): string => `${file}.rank${rank}`;

/** A prompt cache file that cannot be used: damaged, or made for another model or cache layout. */
export class PromptCacheFileError extends Error {
  override name = "PromptCacheFileError";
}

/** How a cache stores keys and values, as one string: files made under another layout are refused. */
export function kvLayout(quantization: KvQuantization | undefined, maxKvSize: number | undefined): string {
  // Quantized keys are stored per channel, or per row rotated (the rotating cache's): files from
  // before either are refused.
  const keys = maxKvSize === undefined && perChannelKeys(quantization) ? "channel" : "rotated";
  const stored = quantization
    ? `q${quantization.bits}g${quantization.groupSize}s${quantization.start ?? 0}-${keys}-keys`
    : "float";
  return maxKvSize === undefined ? stored : `${stored}-rotating${maxKvSize}`;
}

/** A layout (kvLayout) as the flags that give it, for a refusal to name: "--kv-bits 8 --max-kv-size 512". */
function layoutFlags(kv: string): string {
  const match = /^(?:q(\d+)g(\d+)s(\d+)-\w+-keys|float)(?:-rotating(\d+))?$/.exec(kv);
  if (!match) return `the layout of an earlier build (${kv})`;
  const [, bits, group, start, window] = match;
  const flags = [
    bits && `--kv-bits ${bits}`,
    group && group !== "64" && `--kv-group-size ${group}`,
    start && start !== "0" && `--kv-quant-start ${start}`,
    window && `--max-kv-size ${window}`,
  ].filter(Boolean);
  return flags.length > 0 ? flags.join(" ") : "neither --kv-bits nor --max-kv-size";
}

/** sha256 over each tensor's name and bytes, in name order. */
function checksum(tensors: Map<string, Uint8Array>): string {
  const hasher = new Bun.CryptoHasher("sha256");
  for (const name of [...tensors.keys()].sort()) hasher.update(name).update(tensors.get(name)!);
  return hasher.digest("hex");
}

/** Safetensors' names of MLX's dtypes. */
const SAFETENSORS_DTYPES: Partial<Record<mx.DtypeName, string>> = {
  bool: "BOOL",
  uint8: "U8",
  uint16: "U16",
  uint32: "U32",
  uint64: "U64",
  int8: "I8",
  int16: "I16",
  int32: "I32",
  int64: "I64",
  float16: "F16",
  bfloat16: "BF16",
  float32: "F32",
  float64: "F64",
};

/**
 * `entry` as the bytes of a safetensors file (header, then each tensor's data), copied out of
 * MLX: the arrays may be freed or written over once this returns. `source`: the model's path.
 */
export function encodePromptCache(
  entry: PromptCacheEntry,
  owner: PromptCacheOwner,
  source = "",
  share?: PromptCacheShare,
): Uint8Array[] {
  const arrays = new Map<string, mx.MxArray>();
  entry.keys.forEach((parts, layer) => parts.forEach((t, i) => arrays.set(`layers.${layer}.keys.${i}`, t)));
  entry.values.forEach((parts, layer) => parts.forEach((t, i) => arrays.set(`layers.${layer}.values.${i}`, t)));
  mx.evaluate(...arrays.values());
  const data = new Map([...arrays].map(([name, t]) => [name, t.bytes()] as const));
  const metadata: Record<string, string> = {
    format: FORMAT,
    model: owner.model,
    kv: owner.kv,
    source,
    tokens: JSON.stringify(entry.tokens),
    dropped: String(entry.dropped),
    ...(entry.shortest === undefined ? {} : { shortest: String(entry.shortest) }),
    checksum: checksum(data),
    // Layers held elsewhere (a split model) have no tensors: the count says how many there are.
    layers: String(entry.keys.length),
    ...(entry.text === undefined ? {} : { text: entry.text }),
    ...(owner.split === undefined ? {} : { split: owner.split }),
    ...(share === undefined ? {} : { rank: String(share.rank), save: share.save }),
  };
  const header: Record<string, unknown> = { __metadata__: metadata };
  let offset = 0;
  for (const [name, t] of arrays) {
    const dtype = SAFETENSORS_DTYPES[t.dtypeName];
    if (!dtype) throw new Error(`a prompt cache cannot hold ${t.dtypeName} tensors`);
    const bytes = data.get(name)!.byteLength;
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + bytes] };
    offset += bytes;
  }
  // The header is padded with spaces to 8 bytes, as safetensors writers do, so the data stays aligned.
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8);
  const head = Buffer.alloc(8 + Buffer.byteLength(json));
  head.writeBigUInt64LE(BigInt(head.byteLength - 8));
  head.write(json, 8, "utf8");
  return [head, ...data.values()];
}

/** Temporary files being written, removed if the process exits first (Ctrl-C), which runs no writer's `finally`. */
const unfinished = new Set<string>();
let exitHookInstalled = false;

/** A temporary file to write `path` through, removed at exit unless the write ends first. */
function unfinishedFile(path: string): string {
  if (!exitHookInstalled) {
    process.on("exit", () => unfinished.forEach(removeQuietly));
    exitHookInstalled = true;
  }
  const temporary = `${path}.${process.pid}.${Date.now()}.tmp.safetensors`;
  unfinished.add(temporary);
  return temporary;
}

/**
 * Temporary files of `path` that a process killed mid-write left (SIGKILL runs no exit hook):
 * those whose writer, named in the file's name, is gone. A live one's write is under way.
 */
async function removeLeftovers(path: string): Promise<void> {
  const [prefix, suffix] = [`${basename(path)}.`, ".tmp.safetensors"];
  for (const name of await readdir(dirname(path)).catch(() => [])) {
    if (!name.startsWith(prefix) || !name.endsWith(suffix)) continue;
    // `${path}.${pid}.${ms}.tmp.safetensors`, as unfinishedFile names them.
    const [pid, ms, ...rest] = name.slice(prefix.length, -suffix.length).split(".");
    if (rest.length > 0 || !/^\d+$/.test(pid ?? "") || !/^\d+$/.test(ms ?? "")) continue;
    if (!isProcessAlive(Number(pid))) removeQuietly(join(dirname(path), name));
  }
}

/**
 * Writes encoded bytes to `path` through a temporary file in the same directory: written in full,
 * synced to disk, then renamed over `path` (a crash leaves the old file or the new one, never half).
 */
export async function writePromptCacheFile(path: string, parts: Uint8Array[]): Promise<void> {
  await removeLeftovers(path);
  const temporary = unfinishedFile(path);
  try {
    const file = await open(temporary, "wx");
    try {
      let position = 0;
      for (const part of parts)
        for (let done = 0; done < part.byteLength; ) {
          const { bytesWritten } = await file.write(part, done, part.byteLength - done, position);
          done += bytesWritten;
          position += bytesWritten;
        }
      await file.sync();
    } finally {
      await file.close();
    }
    await rename(temporary, path);
  } finally {
    // Never in place of the write's own error (a read-only directory refuses this too).
    await rm(temporary, { force: true }).catch(() => {});
    unfinished.delete(temporary);
  }
}

/**
 * writePromptCacheFile's synchronous twin, for a rank of a split model: its loop serves the
 * ring without returning to the event loop, so async I/O would never run.
 */
export function writePromptCacheFileSync(path: string, parts: Uint8Array[]): void {
  const temporary = unfinishedFile(path);
  try {
    const fd = openSync(temporary, "wx");
    try {
      for (const part of parts)
        for (let done = 0; done < part.byteLength; ) done += writeSync(fd, part, done, part.byteLength - done);
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(temporary, path);
  } finally {
    removeQuietly(temporary);
    unfinished.delete(temporary);
  }
}

/** The metadata of a prompt cache file, read from its header alone (no tensors loaded). */
export function readPromptCacheHeader(path: string): Record<string, string> {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (error) {
    throw new PromptCacheFileError(`cannot read ${path}: ${fileErrorReason(error)}`);
  }
  try {
    const size = Buffer.alloc(8);
    if (readSync(fd, size, 0, 8, 0) !== 8) throw new PromptCacheFileError(`${path}: not a prompt cache file`);
    const length = Number(size.readBigUInt64LE());
    if (length > 64 * 1024 * 1024) throw new PromptCacheFileError(`${path}: not a prompt cache file`);
    const header = Buffer.alloc(length);
    if (readSync(fd, header, 0, length, 8) !== length) throw new PromptCacheFileError(`${path}: truncated`);
    const metadata = (JSON.parse(header.toString("utf8")) as { __metadata__?: Record<string, string> }).__metadata__;
    if (metadata?.format !== FORMAT) throw new PromptCacheFileError(`${path}: not a prompt cache file`);
    const damaged = damagedMetadata(metadata);
    if (damaged) throw new PromptCacheFileError(`${path}: damaged (${damaged})`);
    return metadata;
  } catch (error) {
    if (error instanceof PromptCacheFileError) throw error;
    throw new PromptCacheFileError(`${path}: not a prompt cache file (${(error as Error).message})`);
  } finally {
    closeSync(fd);
  }
}

/** Whether `path` holds a prompt cache file, damaged or not (what mlx cache-prompt may write over). */
export function isPromptCacheFile(path: string): boolean {
  try {
    readPromptCacheHeader(path);
    return true;
  } catch (error) {
    return error instanceof PromptCacheFileError && !error.message.includes(": not a prompt cache file");
  }
}

/**
 * What is wrong with a header's token list, count of dropped positions or layer count, if
 * anything: the checksum covers the tensors only, and a reader must not trip over these later.
 */
function damagedMetadata(metadata: Record<string, string>): string | undefined {
  let tokens: unknown;
  try {
    tokens = JSON.parse(metadata.tokens ?? "");
  } catch {
    return "its token list is not JSON";
  }
  if (!Array.isArray(tokens) || !tokens.every((t) => Number.isInteger(t) && t >= 0))
    return "its token list is not a list of token ids";
  const whole = (value: string | undefined) => value === undefined || /^\d+$/.test(value);
  if (!whole(metadata.dropped) || Number(metadata.dropped ?? 0) > tokens.length)
    return `it drops ${metadata.dropped} of ${tokens.length} positions`;
  if (!whole(metadata.shortest) || Number(metadata.shortest ?? 0) > tokens.length)
    return `it serves prefixes from ${metadata.shortest} of ${tokens.length} positions`;
  if (!whole(metadata.layers)) return `its layer count is '${metadata.layers}'`;
  return undefined;
}

/** Reads a prompt cache made for `owner`; throws PromptCacheFileError when it is not usable. */
export function loadPromptCache(path: string, owner: PromptCacheOwner): PromptCacheEntry {
  const metadata = readPromptCacheHeader(path);
  if (metadata.model !== owner.model) throw new PromptCacheFileError(`${path} was made with another model`);
  if (metadata.kv !== owner.kv)
    throw new PromptCacheFileError(
      `${path} was made with another KV cache layout (${layoutFlags(metadata.kv)}; this run has ${layoutFlags(owner.kv)})`,
    );
  if (metadata.split !== owner.split) {
    const name = (split?: string) => (split === undefined ? "one process" : split);
    throw new PromptCacheFileError(
      `${path} was made for another split of the model (${name(metadata.split)}, not ${name(owner.split)})`,
    );
  }
  return readEntry(path, metadata, owner.heads);
}

/**
 * Reads rank `share.rank`'s share of the file saved as `share.save` with the split `split`;
 * throws PromptCacheFileError when it is missing, damaged, or from another save or split.
 */
export function loadPromptCacheShare(path: string, split: string, share: PromptCacheShare): PromptCacheEntry {
  const metadata = readPromptCacheHeader(path);
  if (metadata.split !== split || metadata.rank !== String(share.rank) || metadata.save !== share.save)
    throw new PromptCacheFileError(`${path} is not rank ${share.rank}'s share of this save of the prompt cache`);
  return readEntry(path, metadata);
}

/** The entry in `path`, whose header is `metadata`: checksummed; `heads`: see PromptCacheOwner. */
function readEntry(path: string, metadata: Record<string, string>, heads?: number): PromptCacheEntry {
  let tensors: Map<string, mx.MxArray>;
  try {
    tensors = mx.loadSafetensors(path).tensors;
  } catch (error) {
    throw new PromptCacheFileError(`${path}: ${(error as Error).message}`);
  }
  const free = () => {
    for (const t of tensors.values()) t.free();
  };
  try {
    const data = new Map([...tensors].map(([name, t]) => [name, t.bytes()] as const));
    if (checksum(data) !== metadata.checksum) throw new PromptCacheFileError(`${path} fails its checksum`);
  } catch (error) {
    free();
    if (error instanceof PromptCacheFileError) throw error;
    throw new PromptCacheFileError(`${path}: ${(error as Error).message}`);
  }
  const parts = (layer: number, kind: string) => {
    const out: mx.MxArray[] = [];
    for (let i = 0; tensors.has(`layers.${layer}.${kind}.${i}`); i++)
      out.push(tensors.get(`layers.${layer}.${kind}.${i}`)!);
    return out;
  };
  const keys: Stored[] = [];
  const values: Stored[] = [];
  // Files from before the layer count hold every layer, up to the first missing one.
  const layers = metadata.layers === undefined ? undefined : Number(metadata.layers);
  for (let layer = 0; layers === undefined ? tensors.has(`layers.${layer}.keys.0`) : layer < layers; layer++) {
    keys.push(parts(layer, "keys"));
    values.push(parts(layer, "values"));
  }
  const entry: PromptCacheEntry = {
    tokens: JSON.parse(metadata.tokens!) as number[],
    dropped: Number(metadata.dropped ?? 0),
    shortest: metadata.shortest === undefined ? undefined : Number(metadata.shortest),
    keys,
    values,
    text: metadata.text,
    save: metadata.save,
  };
  // Another process's share of a split model's entry names no tokens: its file (rank 0's) does.
  const mismatch = shapeMismatch(entry, tensors.size, (metadata.rank ?? "0") === "0", heads);
  if (mismatch) {
    free();
    throw new PromptCacheFileError(`${path}: damaged (${mismatch})`);
  }
  return entry;
}

/**
 * Where an entry read from a file disagrees with its own header (a tensor outside the layer
 * count, or a layer holding another number of positions than its tokens) or with the model (a
 * tensor not of one row of its `heads`): seeding a cache from it would read past its positions,
 * leave layers without any, or give a head another's keys.
 */
function shapeMismatch(
  entry: PromptCacheEntry,
  tensors: number,
  namesTokens: boolean,
  heads?: number,
): string | undefined {
  const read = [...entry.keys, ...entry.values].reduce((n, parts) => n + parts.length, 0);
  if (read !== tensors) return `${tensors - read} of its tensors are outside its ${entry.keys.length} layers`;
  // Seeded into a batch, a tensor of other rows or heads is sliced and broadcast into the
  // batch's shape: another head's keys, in silence, or a failed step.
  for (const [kind, stored] of [["keys", entry.keys] as const, ["values", entry.values] as const])
    for (const [layer, parts] of stored.entries())
      for (const part of parts) {
        const [rows, held] = part.shape;
        if (rows !== 1 || (heads !== undefined && held !== heads))
          return `layer ${layer}'s ${kind} are [${part.shape.join(", ")}], not one row of ${heads ?? "its"} heads`;
      }
  const held = entry.tokens.length - entry.dropped;
  for (const [layer, parts] of entry.values.entries()) {
    // A layer another process of a split model holds has no tensors here.
    const positions = parts[0]?.shape[2];
    if (namesTokens && positions !== undefined && positions !== held)
      return `layer ${layer} holds ${positions} positions for ${held} tokens`;
    if ((parts.length === 0) !== (entry.keys[layer]!.length === 0)) return `layer ${layer} has keys or values only`;
  }
  return undefined;
}

/** Questions of each kind of first character: what follows a document is found as what they all share. */
const QUESTION_PROBES = ["a", "0", "?"];

/**
 * The tokens a prompt of `mlx run --prompt-cache` starts with whatever the question (run puts it
 * after the document and a blank line): what mlx cache-prompt prefills. The document's prompt
 * alone ends with the template's end of turn, which no run's prompt shares; a rotating cache
 * (--max-kv-size) that dropped positions continues exactly its own tokens only, so a file of
 * those was never used.
 */
export function documentTokens(tokenizer: Tokenizer, document: string, o: { system?: string; raw?: boolean }) {
  const [first, ...others] = QUESTION_PROBES.map((q) => promptTokens(tokenizer, `${document}\n\n${q}`, o));
  let length = 0;
  while (length < first!.length && others.every((tokens) => tokens[length] === first![length])) length++;
  return first!.slice(0, length);
}

/**
 * Prefills `tokens` (as the scheduler does, in chunks of its default size, with the model's KV
 * cache settings) into an entry to save. On a model split across processes, the others keep
 * their layers' share as prefix entry PREFILLED, for savePrefilled to write beside the file.
 */
export function prefillPrompt(lm: LoadedModel, tokens: number[], chunk = DEFAULT_PREFILL_CHUNK): PromptCacheEntry {
  const { model } = lm;
  const caches = makeCaches(model, {
    windowed: false,
    quantization: lm.kvQuantization,
    maxKvSize: lm.maxKvSize,
    // As a server's prefill: quantized keys wait in float until the whole prompt is in, so the
    // file holds the very bytes a run given the whole document would compute.
    joining: true,
  });
  try {
    for (let done = 0; done < tokens.length; ) {
      // As the scheduler's chunks, cut at --kv-quant-start (quantStartBound).
      const end = quantStartBound(lm.kvQuantization, done, Math.min(tokens.length, done + chunk));
      const ids = tokens.slice(done, end);
      done = end;
      // Nothing returned from the scope: the hidden state's graph would hold the last layer's buffers (see #prefillPart).
      mx.scope(() => {
        model.layers(model.embed(mx.array(Int32Array.from(ids), [1, ids.length])), caches);
      });
      mx.evaluate(...cacheState(caches));
    }
    const first = caches[0]!;
    const { keys, values } = snapshotRow(caches, 0, 0, first.offset);
    model.remote?.savePrefix(PREFILLED, caches, 0, 0, first.offset);
    const dropped = first instanceof RotatingKVCache ? first.dropped[0]! : 0;
    return { tokens, dropped, shortest: shortestPrefix(caches, 0), keys, values };
  } finally {
    freeCaches(caches);
    model.remote?.release(caches);
  }
}

/**
 * The prefix entry number the other processes of a split model keep a prefilled prompt under
 * until it is saved (a prefix cache numbers its entries from 1).
 */
const PREFILLED = 0;

/**
 * Writes a prefilled entry (prefillPrompt) of `lm` to `path`, with the document `text`; the other
 * processes of a split model write their shares beside it.
 */
export async function savePrefilled(lm: LoadedModel, path: string, entry: PromptCacheEntry, text: string) {
  const remote = lm.model.remote;
  const share = remote && { rank: 0, save: randomUUID() };
  if (remote) {
    const written = remote.savePrefixFile(PREFILLED, path, share!.save);
    remote.dropPrefix(PREFILLED);
    if (!written) throw new Error(`a rank could not write its share of ${path} (${shareFile(path, 1)}, ...)`);
  }
  await writePromptCacheFile(path, encodePromptCache({ ...entry, text }, promptCacheOwner(lm), lm.path, share));
}

/**
 * The prompt cache file `path` as an entry of `prefixCache` (which takes its arrays); on a split
 * model, every other process reads its share too. Throws PromptCacheFileError when it is not usable.
 */
export function openPromptCache(lm: LoadedModel, path: string, prefixCache: PrefixCache): PromptCacheEntry {
  const entry = loadPromptCache(path, promptCacheOwner(lm));
  const adopted = prefixCache.adopt(entry);
  const remote = lm.model.remote;
  if (adopted && remote && !remote.loadPrefixFile(adopted.id, path, entry.save ?? ""))
    throw new PromptCacheFileError(
      `a share of ${path} (${shareFile(path, 1)}, ...) is missing, damaged or from another save: cache the prompt again`,
    );
  return entry;
}

/** Who may use prompt caches of `lm`: its content digest, with its KV cache settings. */
export function promptCacheOwner(lm: LoadedModel): PromptCacheOwner {
  return {
    model: modelDigest(lm.path),
    kv: kvLayout(lm.kvQuantization, lm.maxKvSize),
    split: lm.model.remote?.split,
    heads: lm.model.remote ? undefined : lm.config.numKeyValueHeads,
  };
}

/**
 * The content digest of a model (a file, or the files of a directory that its loader reads): a
 * store blob is named by its sha256 already; anything else is hashed, once per load. Other files
 * in a directory are not the model: a prompt cache saved beside the weights would otherwise
 * change the digest it was saved under, and be refused as another model's.
 * With `sampleBytes`, a file not named by its digest is hashed by its size and its first and last
 * `sampleBytes` only (its header and some of its tensors): cheap enough for every start of a
 * large model, and still another for other weights of the same shapes (another revision).
 */
export function modelDigest(path: string, sampleBytes?: number): string {
  const real = realpathSync(path);
  if (statSync(real).isDirectory()) {
    const hasher = new Bun.CryptoHasher("sha256");
    const weights = directoryWeightFiles(real).map((file) => basename(file));
    for (const name of neededOf(readdirSync(real), weights).sort())
      hasher.update(`${name}\0${modelDigest(join(real, name), sampleBytes)}\n`);
    return hasher.digest("hex");
  }
  const named = basename(real).match(/^sha256-([0-9a-f]{64})$/)?.[1];
  if (named) return named;
  const hasher = new Bun.CryptoHasher("sha256");
  const chunk = Buffer.alloc(16 * 1024 * 1024);
  const fd = openSync(real, "r");
  try {
    const size = statSync(real).size;
    if (sampleBytes !== undefined && size > 2 * sampleBytes) {
      const sample = chunk.subarray(0, sampleBytes);
      hasher.update(`${size}\0`);
      hasher.update(sample.subarray(0, readSync(fd, sample, 0, sampleBytes, 0)));
      hasher.update(sample.subarray(0, readSync(fd, sample, 0, sampleBytes, size - sampleBytes)));
    } else for (let n = readSync(fd, chunk); n > 0; n = readSync(fd, chunk)) hasher.update(chunk.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hasher.digest("hex");
}
