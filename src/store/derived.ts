// Prepared artifacts: work done once to make a model ready (today: GGUF -> MLX directory) is
// stored as a model of its own, found again by the hash of its inputs (the input file's
// sha256 and the converter's version), so doing it a second time costs a lookup.
import { existsSync, readFileSync, readdirSync, realpathSync, rmSync } from "node:fs";
import { basename, join } from "node:path";
import { convertGGUF } from "../models/convert";
import { sourceHash } from "./source-hash" with { type: "macro" };
import { addBlob, hashFile } from "./blobs";
import { describeFiles, newManifest, readManifest, writeJsonAtomic } from "./manifest";
import { withLock } from "./lock";
import { blobPath, locksDir, refsDir, tempPathIn, tmpDir } from "./paths";
import { commitModel, openStoredModel, StoreDamageError } from "./store";

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

export interface ConvertedModel {
  /** The MLX directory (materialized from the store). */
  path: string;
  name: string;
  /** False when an earlier conversion of the same input was reused. */
  converted: boolean;
}

/**
 * The MLX directory converted from `ggufPath`, converting only when no earlier conversion of
 * the same bytes by the same converter is stored under `name` (or any other name).
 */
export async function convertedModel(ggufPath: string, name: string): Promise<ConvertedModel> {
  const inputSha256 = await fileSha256(ggufPath);
  const key = new Bun.CryptoHasher("sha256").update(`${inputSha256}\n${CONVERTER_VERSION}`).digest("hex");
  const refPath = join(refsDir(), "derived", `${key}.json`);
  const earlier = await openEarlier(refPath, key);
  if (earlier) return earlier;
  // Another process converting the same input: wait for it and use its result.
  return withLock(
    join(locksDir(), `convert-${key}.lock`),
    async () => {
      const meanwhile = await openEarlier(refPath, key);
      if (meanwhile) return meanwhile;
      const staging = tempPathIn(tmpDir(), "convert");
      try {
        convertGGUF(ggufPath, staging);
        const files = [];
        for (const file of readdirSync(staging).sort())
          files.push({ name: file, ...(await addBlob(join(staging, file), { move: true })) });
        const manifest = newManifest({
          name,
          source: `convert:sha256-${inputSha256}`,
          ...describeFiles(files),
          files,
          derivedKey: key,
        });
        const { path } = await commitModel(manifest);
        writeJsonAtomic(refPath, { name, input: inputSha256, converter: CONVERTER_VERSION });
        return { path, name, converted: true };
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
    return path ? { path, name, converted: false } : undefined;
  } catch (error) {
    if (error instanceof StoreDamageError) return undefined;
    throw error;
  }
}

/** A blob's name is its hash; only a file from elsewhere needs reading. */
async function fileSha256(path: string): Promise<string> {
  const real = realpathSync(path);
  const named = basename(real).match(/^sha256-([0-9a-f]{64})$/)?.[1];
  if (named && existsSync(blobPath(named)) && realpathSync(blobPath(named)) === real) return named;
  return (await hashFile(real)).sha256;
}
