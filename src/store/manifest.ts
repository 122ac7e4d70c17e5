// One JSON manifest per model, <root>/manifests/<key>.json: the truth about a stored model.
// It names the model's files (name inside the model -> blob) and says what the model is; the
// index (model-index.ts) is only a summary of all manifests and is rebuilt from them.
import { mkdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { readGGUFHeader, type GGUFHeader } from "../models/gguf-header";
import { safetensorsFault } from "../models/safetensors-table";
import { blobPath, isSha256Hex, manifestsDir, modelKey, tempPathIn, tmpDir } from "./paths";
import { isModelFileName } from "./model-files";

export type StoredFormat = "gguf" | "mlx";

export interface ManifestFile {
  /** File name inside the model (e.g. "model-00001-of-00002.safetensors", "1_Pooling/config.json"). */
  name: string;
  sha256: string;
  size: number;
}

export interface ModelManifest {
  schemaVersion: 1;
  name: string;
  /** What it was pulled from: a models.toml source (pypi:, hf:, a path), or convert:/fuse:<sha256> for one made here. */
  source: string;
  format: StoredFormat;
  /** config.json's model_type, or a GGUF's general.architecture. */
  architecture?: string;
  /** e.g. "4-bit, group 64" (MLX), "Q4_1" (GGUF), "bf16" (unquantized). */
  quantization?: string;
  files: ManifestFile[];
  totalBytes: number;
  /** The Hugging Face commit the files came from. */
  revision?: string;
  /** For a prepared artifact: the hash of its inputs (see derived.ts). */
  derivedKey?: string;
  /**
   * For one made here, what it was made from as `mlx convert` or `mlx fuse` took it (a GGUF; a
   * base and an adapter directory): a name, or a path made absolute, for the command that makes
   * it again.
   */
  madeFrom?: string[];
  createdAt: string;
  lastUsedAt: string;
}

const SCHEMA_VERSION = 1;

export function manifestPath(name: string): string {
  return join(manifestsDir(), `${modelKey(name)}.json`);
}

/** The manifest of `name`; undefined when there is none or it is unreadable (a pull rewrites it). */
export function readManifest(name: string): ModelManifest | undefined {
  return readManifestFile(manifestPath(name));
}

export function readManifestFile(path: string): ModelManifest | undefined {
  try {
    const m = JSON.parse(readFileSync(path, "utf8")) as ModelManifest;
    return wellFormed(m) ? m : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Whether a parsed manifest has every field the store relies on: one edited by hand or written
 * by another version, with a file's hash missing say, is unreadable (`mlx rm` removes it) rather
 * than an error in every command that lists the store.
 */
function wellFormed(m: ModelManifest): boolean {
  return (
    m?.schemaVersion === SCHEMA_VERSION &&
    typeof m.name === "string" &&
    typeof m.source === "string" &&
    (m.format === "mlx" || m.format === "gguf") &&
    typeof m.lastUsedAt === "string" &&
    Number.isSafeInteger(m.totalBytes) &&
    Array.isArray(m.files) &&
    m.files.every(wellFormedFile) &&
    (m.madeFrom === undefined || (Array.isArray(m.madeFrom) && m.madeFrom.every((s) => typeof s === "string")))
  );
}

/** A file of the model's own directory (or of one folder in it), named by a blob's hash, with its size. */
function wellFormedFile(f: ManifestFile): boolean {
  return (
    typeof f?.name === "string" &&
    isModelFileName(f.name) &&
    typeof f.sha256 === "string" &&
    isSha256Hex(f.sha256) &&
    Number.isSafeInteger(f.size) &&
    f.size >= 0
  );
}

/** Atomic replace: a reader sees the old manifest or the new one, never half of one. */
export function writeManifest(manifest: ModelManifest): void {
  writeJsonAtomic(manifestPath(manifest.name), manifest);
}

export function writeJsonAtomic(path: string, value: unknown): void {
  writeFileAtomic(path, `${JSON.stringify(value, null, 2)}\n`, "json", () => {
    mkdirSync(join(path, ".."), { recursive: true });
    // The store's own record: a directory in its place is damage, which rename() would not replace.
    if (statSync(path, { throwIfNoEntry: false })?.isDirectory()) rmSync(path, { recursive: true, force: true });
  });
}

/**
 * Replaces `path` with `text` through a temporary file in the store's tmp folder (named by
 * `hint`) and a rename: a reader sees the old file or the new one, never half of one.
 * `beforeRename` runs once the text is written.
 */
export function writeFileAtomic(path: string, text: string, hint: string, beforeRename?: () => void): void {
  const tmp = tempPathIn(tmpDir(), hint);
  try {
    writeFileSync(tmp, text);
    beforeRename?.();
    renameSync(tmp, path);
  } catch (error) {
    // A full disk leaves the temporary file empty or cut short: nothing to keep.
    rmSync(tmp, { force: true });
    throw error;
  }
}

export function newManifest(
  fields: Omit<ModelManifest, "schemaVersion" | "totalBytes" | "createdAt" | "lastUsedAt">,
): ModelManifest {
  const now = new Date().toISOString();
  const totalBytes = fields.files.reduce((n, f) => n + f.size, 0);
  return { schemaVersion: SCHEMA_VERSION, ...fields, totalBytes, createdAt: now, lastUsedAt: now };
}

export const TOKENIZER_FILE = "tokenizer.json";
export const NO_TOKENIZER = `no ${TOKENIZER_FILE} beside config.json: mlx reads the model's tokenizer from it`;

/** Format, architecture and quantization, read from the blobs of a model's files. */
export function describeFiles(files: ManifestFile[]): Pick<ModelManifest, "format" | "architecture" | "quantization"> {
  const config = files.find((f) => f.name === "config.json");
  if (config) {
    // Loading it reads the .safetensors beside config.json: without any, a model that cannot load would be stored.
    if (!files.some((f) => f.name.endsWith(".safetensors")))
      throw new Error("no .safetensors weights beside config.json");
    for (const f of files) if (f.name.endsWith(".safetensors")) refuseCutShort(f);
    // And its tokenizer, which only tokenizer.json gives such a model (a sentencepiece
    // tokenizer.model alone is not read).
    if (!files.some((f) => f.name === TOKENIZER_FILE)) throw new Error(NO_TOKENIZER);
    // Likewise the tokenizer's and other JSON files the loader parses: one cut short fails every load.
    for (const f of files)
      if (f.name.endsWith(".json") && f.name !== "config.json")
        try {
          JSON.parse(readFileSync(blobPath(f.sha256), "utf8"));
        } catch (error) {
          throw new Error(`${f.name} is not JSON (cut short?): ${(error as Error).message}`);
        }
    let c: Record<string, unknown>;
    try {
      c = JSON.parse(readFileSync(blobPath(config.sha256), "utf8"));
    } catch (error) {
      throw new Error(`config.json: ${(error as Error).message}`);
    }
    if (!c || typeof c !== "object" || Array.isArray(c)) throw new Error("config.json is not a JSON object");
    const q = (c.quantization ?? c.quantization_config) as { bits?: number; group_size?: number } | undefined;
    const quantization = q?.bits
      ? `${q.bits}-bit${q.group_size ? `, group ${q.group_size}` : ""}`
      : (c.torch_dtype as string | undefined);
    return { format: "mlx", architecture: c.model_type as string | undefined, quantization };
  }
  const gguf = files.find((f) => f.name.endsWith(".gguf"));
  if (!gguf)
    throw new Error(
      `a model needs a config.json or a .gguf file (got ${files.map((f) => f.name).join(", ") || "no files"})`,
    );
  const header = readGGUFHeader(blobPath(gguf.sha256));
  const architecture = header.metadata.get("general.architecture");
  return {
    format: "gguf",
    architecture: typeof architecture === "string" ? architecture : undefined,
    quantization: ggufQuantization(header),
  };
}

/**
 * A .safetensors file cut short (a copy or download interrupted), as the GGUF header check
 * refuses a GGUF: stored, it would fail every load, and `mlx verify` (its hash is of the bytes
 * it has) would find nothing to repair. A file whose table does not read is left to the loader.
 */
function refuseCutShort(file: ManifestFile): void {
  const fault = safetensorsFault(blobPath(file.sha256));
  if (fault?.kind === "truncated") throw new Error(`${file.name} is truncated: ${fault.message}`);
}

/**
 * llama.cpp's llama_ftype names, by value: what general.file_type says a file is, as Ollama
 * shows it. A "Q4_K_M" file holds Q4_K, Q6_K and (for rows no multiple of 256) Q5_0 tensors.
 */
const FILE_TYPES: Record<number, string> = {
  0: "F32",
  1: "F16",
  2: "Q4_0",
  3: "Q4_1",
  7: "Q8_0",
  8: "Q5_0",
  9: "Q5_1",
  10: "Q2_K",
  11: "Q3_K_S",
  12: "Q3_K_M",
  13: "Q3_K_L",
  14: "Q4_K_S",
  15: "Q4_K_M",
  16: "Q5_K_S",
  17: "Q5_K_M",
  18: "Q6_K",
  19: "IQ2_XXS",
  20: "IQ2_XS",
  21: "Q2_K_S",
  22: "IQ3_XS",
  23: "IQ3_XXS",
  24: "IQ1_S",
  25: "IQ4_NL",
  26: "IQ3_S",
  27: "IQ3_M",
  28: "IQ2_S",
  29: "IQ2_M",
  30: "IQ4_XS",
  31: "IQ1_M",
  32: "BF16",
  36: "TQ1_0",
  37: "TQ2_0",
};

/** A GGUF's quantization as Ollama names it: its declared file type, else its most common quantized tensor type. */
export function ggufQuantization(header: GGUFHeader): string | undefined {
  return declaredFileType(header) ?? dominantQuantType(header);
}

function declaredFileType(header: GGUFHeader): string | undefined {
  const fileType = header.metadata.get("general.file_type");
  return typeof fileType === "number" ? FILE_TYPES[fileType] : undefined;
}

/** Without a declared file type: the most common tensor type that is not a plain float (norms stay F32 in quantized files). */
function dominantQuantType(header: GGUFHeader): string | undefined {
  const types = [...header.tensorTypes].sort((x, y) => y[1] - x[1]);
  return (types.find(([t]) => t !== "F32") ?? types[0])?.[0];
}
