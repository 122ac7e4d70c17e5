// Prepared artifacts: work done once to make a model ready (GGUF -> MLX directory, an adapter
// fused into its base) is stored as a model of its own, found again by the hash of its inputs
// (the input files' sha256 and the code's version), so doing it a second time costs a lookup.
import { createHash } from "node:crypto";
import { existsSync, readFileSync, readdirSync, realpathSync, rmSync, statSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { convertGGUF } from "../models/convert";
import { fuseAdapter, type FuseOptions } from "../models/fuse";
import { shellWord } from "../format";
import { sourceHash } from "./source-hash" with { type: "macro" };
import { hasAlias, loadAliases } from "./aliases";
import { addBlob, hashFile } from "./blobs";
import { describeFiles, newManifest, readManifest, writeJsonAtomic } from "./manifest";
import { withLock } from "./lock";
import { blobPath, locksDir, refsDir, tempPathIn, tmpDir } from "./paths";
import {
  commitModel,
  DEQUANTIZED_FUSE,
  openStoredModel,
  refuseReplacingInUse,
  StoreDamageError,
  storingFailed,
} from "./store";

// Converting a large model takes minutes; a second process asking for it waits that long.
const CONVERT_LOCK_TIMEOUT_MS = 3600_000;

/**
 * The converter's version is the hash of its own source: any change to how a GGUF is turned
 * into a directory makes earlier conversions stale, with no constant to remember to bump.
 */
export const CONVERTER_VERSION = sourceHash(
  "models/convert.ts",
  "models/gguf.ts",
  "models/gguf-tensors.ts",
  "tokenizer/gguf.ts",
);

/** The same for fusing an adapter into its base (which may be converted first). */
export const FUSER_VERSION = sourceHash(
  "models/fuse.ts",
  "models/lora.ts",
  "models/convert.ts",
  "models/gguf.ts",
  "models/gguf-tensors.ts",
  "tokenizer/gguf.ts",
);

export interface ConvertedModel {
  /** The MLX directory (materialized from the store). */
  path: string;
  name: string;
  /** False when an earlier conversion of the same input was reused. */
  converted: boolean;
  /** The models evicted to keep the store under its size limit once it was stored. */
  evicted: string[];
}

/**
 * The MLX directory converted from `ggufPath`, converting only when no earlier conversion of
 * the same bytes by the same converter is stored under `name` (or any other name). `given`: the
 * GGUF as the user named it (see ModelManifest.madeFrom).
 */
export async function convertedModel(ggufPath: string, name: string, given = ggufPath): Promise<ConvertedModel> {
  const { inputSha256, key } = await conversionInput(ggufPath);
  return derivedModel(name, key, `convert:sha256-${inputSha256}`, [given], (staging) => convertGGUF(ggufPath, staging));
}

/** The key a conversion of `ggufPath` is stored under (its derivedKey): its bytes' hash and the converter's version. */
export async function conversionKey(ggufPath: string): Promise<string> {
  return (await conversionInput(ggufPath)).key;
}

async function conversionInput(ggufPath: string): Promise<{ inputSha256: string; key: string }> {
  const inputSha256 = await fileSha256(ggufPath);
  return { inputSha256, key: sha256(`${inputSha256}\n${CONVERTER_VERSION}`) };
}

/**
 * The MLX directory of `base` (a directory or a GGUF) with the adapter in `adapterDir` fused in,
 * stored under `name`; fusing only when the same base and adapter were not fused before.
 * `givenBase`: the base as the user named it (see ModelManifest.madeFrom).
 */
export async function fusedModel(
  base: string,
  adapterDir: string,
  name: string,
  givenBase = base,
  options: FuseOptions = {},
): Promise<ConvertedModel> {
  const inputs = [await treeSha256(base), await treeSha256(adapterDir)];
  // Dequantized, another model of the same inputs (its key as before when not).
  const variant = options.dequantize ? "\ndequantize" : "";
  const key = sha256(`fuse\n${inputs.join("\n")}\n${FUSER_VERSION}${variant}`);
  const source = `${options.dequantize ? DEQUANTIZED_FUSE : "fuse:"}sha256-${key}`;
  return derivedModel(name, key, source, [givenBase, adapterDir], (staging) =>
    fuseAdapter(base, adapterDir, staging, options),
  );
}

/**
 * A derived model is stored under `name`, replacing what is there: an earlier one of the same
 * kind (made again from its inputs), but never a model that was pulled or derived otherwise, nor
 * an alias, which the next `mlx run` of that name would pull again over it. `remedy` tells the
 * user what to do instead.
 */
export function refuseTakenName(name: string, kind: "convert" | "fuse", remedy: string): void {
  const aliases = loadAliases();
  if (hasAlias(aliases, name)) throw new Error(`'${name}' is an alias in models.toml; ${remedy}`);
  const stored = readManifest(name);
  if (stored && !stored.source.startsWith(`${kind}:`))
    throw new Error(
      `'${name}' is already a stored model (${stored.source}); ${remedy}, or remove that one first (mlx rm ${shellWord(name)})`,
    );
}

const sha256 = (text: string) => createHash("sha256").update(text).digest("hex");

/**
 * Runs `produce` into a staging directory and stores what it wrote as `name`, unless stored before
 * under `key`. `inputs`: what it is made from, as named (a path is recorded absolute).
 */
async function derivedModel(
  name: string,
  key: string,
  source: string,
  inputs: string[],
  produce: (staging: string) => Promise<unknown>,
): Promise<ConvertedModel> {
  const refPath = join(refsDir(), "derived", `${key}.json`);
  const earlier = await openEarlier(refPath, key);
  if (earlier) return earlier;
  // Another process deriving the same model: wait for it and use its result.
  return withLock(
    join(locksDir(), `convert-${key}.lock`),
    async () => {
      const meanwhile = await openEarlier(refPath, key);
      if (meanwhile) return meanwhile;
      // Made from other inputs (a file changed since): the stored one would be replaced.
      if (readManifest(name)?.derivedKey !== key) refuseReplacingInUse(name);
      const staging = tempPathIn(tmpDir(), "convert");
      try {
        await produce(staging);
        const files = [];
        for (const file of readdirSync(staging).sort())
          files.push({ name: file, ...(await addBlob(join(staging, file), { move: true })) });
        const madeFrom = inputs.map((input) => (existsSync(input) ? resolve(input) : input));
        const manifest = newManifest({ name, source, ...describeFiles(files), files, derivedKey: key, madeFrom });
        const { path, evicted } = await commitModel(manifest);
        writeJsonAtomic(refPath, { name, source });
        return { path, name, converted: true, evicted };
      } catch (error) {
        throw storingFailed(name, error);
      } finally {
        rmSync(staging, { recursive: true, force: true });
      }
    },
    { timeoutMs: CONVERT_LOCK_TIMEOUT_MS },
  );
}

/** The stored result of an earlier conversion; undefined when there is none or it was damaged or replaced. */
async function openEarlier(refPath: string, key: string): Promise<ConvertedModel | undefined> {
  let name: unknown;
  try {
    name = (JSON.parse(readFileSync(refPath, "utf8")) as { name?: unknown }).name;
  } catch {
    return undefined;
  }
  if (typeof name !== "string" || readManifest(name)?.derivedKey !== key) return undefined;
  try {
    const path = await openStoredModel(name);
    return path ? { path, name, converted: false, evicted: [] } : undefined;
  } catch (error) {
    if (error instanceof StoreDamageError) return undefined;
    throw error;
  }
}

/** A file's sha256, or a directory's: of its files' names and hashes. */
async function treeSha256(path: string): Promise<string> {
  if (!statSync(path).isDirectory()) return fileSha256(path);
  const lines = [];
  for (const name of readdirSync(path).sort())
    if (statSync(join(path, name)).isFile()) lines.push(`${name} ${await fileSha256(join(path, name))}`);
  return sha256(lines.join("\n"));
}

/** A blob's name is its hash; only a file from elsewhere needs reading. */
async function fileSha256(path: string): Promise<string> {
  const real = realpathSync(path);
  const named = basename(real).match(/^sha256-([0-9a-f]{64})$/)?.[1];
  if (named && existsSync(blobPath(named)) && realpathSync(blobPath(named)) === real) return named;
  return (await hashFile(real)).sha256;
}
