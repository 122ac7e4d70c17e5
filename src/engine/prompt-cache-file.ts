// A prompt's keys and values in a file, as mlx_lm.cache_prompt saves them: MLX's own
// safetensors, one tensor per layer and stored part, and in its metadata the token ids, the
// model's content digest, how the cache stores keys and values, and a checksum of the tensors.
// Written to a temporary file and renamed, so a reader never sees half a file; a file that
// fails its checksum, or belongs to another model or cache layout, is refused.
import { closeSync, openSync, readdirSync, readSync, realpathSync, renameSync, rmSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import * as mx from "../mlx";
import { cacheState, freeCaches, makeCaches } from "../models";
import type { KvQuantization, Stored } from "../models/cache";
import type { LoadedModel } from "../models/load";
import { RotatingKVCache } from "../models/rotating-cache";

const FORMAT = "mlx-prompt-cache/1";

/** What a prompt cache holds: `tokens`, of which the last `tokens.length - dropped` positions per layer. */
export interface PromptCacheEntry {
  tokens: number[];
  /** Positions a rotating cache (--max-kv-size) no longer held. */
  dropped: number;
  keys: Stored[];
  values: Stored[];
  /** The document, for `mlx run --prompt-cache` to build its prompt from (mlx cache-prompt). */
  text?: string;
}

/** Who may use a file: the model (its content digest) and the cache layout. */
export interface PromptCacheOwner {
  model: string;
  kv: string;
}

/** A prompt cache file that cannot be used: damaged, or made for another model or cache layout. */
export class PromptCacheFileError extends Error {
  override name = "PromptCacheFileError";
}

/** How a cache stores keys and values, as one string: files made under another layout are refused. */
export function kvLayout(quantization: KvQuantization | undefined, maxKvSize: number | undefined): string {
  const stored = quantization ? `q${quantization.bits}g${quantization.groupSize}s${quantization.start ?? 0}` : "float";
  return maxKvSize === undefined ? stored : `${stored}-rotating${maxKvSize}`;
}

function checksum(tensors: Map<string, mx.MxArray>): string {
  const hasher = new Bun.CryptoHasher("sha256");
  for (const name of [...tensors.keys()].sort()) hasher.update(name).update(tensors.get(name)!.bytes());
  return hasher.digest("hex");
}

/** Writes `entry` to `path` (through a temporary file in the same directory); `source`: the model's path. */
export function savePromptCache(path: string, entry: PromptCacheEntry, owner: PromptCacheOwner, source = ""): void {
  const tensors = new Map<string, mx.MxArray>();
  entry.keys.forEach((parts, layer) => parts.forEach((t, i) => tensors.set(`layers.${layer}.keys.${i}`, t)));
  entry.values.forEach((parts, layer) => parts.forEach((t, i) => tensors.set(`layers.${layer}.values.${i}`, t)));
  const metadata: Record<string, string> = {
    format: FORMAT,
    model: owner.model,
    kv: owner.kv,
    source,
    tokens: JSON.stringify(entry.tokens),
    dropped: String(entry.dropped),
    checksum: checksum(tensors),
    ...(entry.text === undefined ? {} : { text: entry.text }),
  };
  // MLX adds ".safetensors" to a name without it.
  const temporary = `${path}.${process.pid}.${Date.now()}.tmp.safetensors`;
  try {
    mx.saveSafetensors(temporary, tensors, metadata);
    renameSync(temporary, path);
  } finally {
    rmSync(temporary, { force: true });
  }
}

/** The metadata of a prompt cache file, read from its header alone (no tensors loaded). */
export function readPromptCacheHeader(path: string): Record<string, string> {
  let fd: number;
  try {
    fd = openSync(path, "r");
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new PromptCacheFileError(
      `cannot read ${path}: ${code === "ENOENT" ? "no such file" : (error as Error).message}`,
    );
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
    return metadata;
  } catch (error) {
    if (error instanceof PromptCacheFileError) throw error;
    throw new PromptCacheFileError(`${path}: not a prompt cache file (${(error as Error).message})`);
  } finally {
    closeSync(fd);
  }
}

/** Reads a prompt cache made for `owner`; throws PromptCacheFileError when it is not usable. */
export function loadPromptCache(path: string, owner: PromptCacheOwner): PromptCacheEntry {
  const metadata = readPromptCacheHeader(path);
  if (metadata.model !== owner.model) throw new PromptCacheFileError(`${path} was made with another model`);
  if (metadata.kv !== owner.kv)
    throw new PromptCacheFileError(`${path} was made with another KV cache layout (${metadata.kv}, not ${owner.kv})`);
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
    if (checksum(tensors) !== metadata.checksum) throw new PromptCacheFileError(`${path} fails its checksum`);
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
  for (let layer = 0; tensors.has(`layers.${layer}.keys.0`); layer++) {
    keys.push(parts(layer, "keys"));
    values.push(parts(layer, "values"));
  }
  return {
    tokens: JSON.parse(metadata.tokens!) as number[],
    dropped: Number(metadata.dropped ?? 0),
    keys,
    values,
    text: metadata.text,
  };
}

/** Prefills `tokens` (as the scheduler would, in chunks, with the model's KV cache settings) into an entry to save. */
export function prefillPrompt(lm: LoadedModel, tokens: number[], chunk = 2048): PromptCacheEntry {
  const { model } = lm;
  const caches = makeCaches(model, { windowed: false, quantization: lm.kvQuantization, maxKvSize: lm.maxKvSize });
  try {
    for (let done = 0; done < tokens.length; done += chunk) {
      const ids = tokens.slice(done, done + chunk);
      mx.scope(() => model.layers(model.embed(mx.array(Int32Array.from(ids), [1, ids.length])), caches));
      mx.evaluate(...cacheState(caches));
    }
    const held = (stored: Stored) =>
      stored.map((t) =>
        mx.keep(mx.scope(() => mx.contiguous(mx.slice(t, [0, 0, 0], [1, t.shape[1]!, caches[0]!.offset])))),
      );
    const first = caches[0];
    return {
      tokens,
      dropped: first instanceof RotatingKVCache ? first.dropped[0]! : 0,
      keys: caches.map((c) => held(c.keys!)),
      values: caches.map((c) => held(c.values!)),
    };
  } finally {
    freeCaches(caches);
  }
}

/** Who may use prompt caches of `lm`: its content digest, with its KV cache settings. */
export function promptCacheOwner(lm: LoadedModel): PromptCacheOwner {
  return { model: modelDigest(lm.path), kv: kvLayout(lm.kvQuantization, lm.maxKvSize) };
}

/**
 * The content digest of a model (a file, or a directory's files): a store blob is named by its
 * sha256 already; anything else is hashed, once per load.
 */
export function modelDigest(path: string): string {
  const real = realpathSync(path);
  if (statSync(real).isDirectory()) {
    const hasher = new Bun.CryptoHasher("sha256");
    for (const name of readdirSync(real).sort()) {
      const file = join(real, name);
      if (statSync(file).isFile()) hasher.update(`${name}\0${modelDigest(file)}\n`);
    }
    return hasher.digest("hex");
  }
  const named = basename(real).match(/^sha256-([0-9a-f]{64})$/)?.[1];
  if (named) return named;
  const hasher = new Bun.CryptoHasher("sha256");
  const chunk = Buffer.alloc(16 * 1024 * 1024);
  const fd = openSync(real, "r");
  try {
    for (let n = readSync(fd, chunk); n > 0; n = readSync(fd, chunk)) hasher.update(chunk.subarray(0, n));
  } finally {
    closeSync(fd);
  }
  return hasher.digest("hex");
}
