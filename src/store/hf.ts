// Models from a Hugging Face hub repository: "hf:<org>/<repo>[@revision]", spoken over the
// hub's plain HTTP protocol (so any mirror that speaks it works, through $HF_ENDPOINT):
//   GET  {endpoint}/api/models/{repo}/revision/{rev}   -> { sha, siblings: [{ rfilename }] }
//   HEAD {endpoint}/{repo}/resolve/{sha}/{file}        -> X-Linked-Etag (sha256 of LFS files), X-Linked-Size,
//                                                         and for LFS files a redirect to their storage
// Files are fetched at the listing's commit sha, so a push during the pull cannot mix revisions.
import { readFileSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { addBlob, blobPresent } from "./blobs";
import {
  describeNetworkError,
  downloadToFile,
  ensureFreeSpace,
  partialBytes,
  withoutCredentials,
  type DownloadProgress,
} from "./download";
import type { ManifestFile } from "./manifest";
import { indexedWeightFiles, neededFiles, WEIGHT_INDEX } from "./model-files";
import { blobPath, downloadsDir, isSha256Hex } from "./paths";

export interface HFSpec {
  repo: string;
  revision: string;
}

export interface HFPullOptions {
  /** Progress over all the files of the model together. */
  onProgress?: (progress: DownloadProgress) => void;
  signal?: AbortSignal;
  /** A request to the hub (the listing, a file's lookup) that answers nothing for this long fails (default 30 s). */
  hubTimeoutMs?: number;
}

interface RemoteFile {
  name: string;
  /** Where the bytes are: the resolve URL, or the storage it redirects to. */
  url: string;
  sha256?: string;
  size?: number;
}

const REPO = /^[A-Za-z0-9][A-Za-z0-9_.-]*\/[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const HUB_TIMEOUT_MS = 30_000;

/** Whether `name` reads as a hub repository, "org/repo[@revision]" (what mlx-lm's --model takes). */
export function looksLikeHubRepo(name: string): boolean {
  const repo = name.split("@")[0]!;
  return REPO.test(repo) && !repo.includes("..");
}

export function parseHFSpec(spec: string): HFSpec {
  const match = spec.match(/^hf:([^@]+)(?:@(.+))?$/);
  if (!match || !REPO.test(match[1]!) || match[1]!.includes("..")) {
    throw new Error(`invalid source '${spec}': expected hf:<org>/<repo>[@revision]`);
  }
  return { repo: match[1]!, revision: match[2] ?? "main" };
}

export function hfEndpoint(): string {
  return (process.env.HF_ENDPOINT || "https://huggingface.co").replace(/\/+$/, "");
}

/** The hub's address as messages show it: without the credentials a mirror's URL may hold. */
const shownEndpoint = () => withoutCredentials(hfEndpoint()).replace(/\/+$/, "");

/**
 * The token huggingface_hub would send, and what to call it in messages: $HF_TOKEN, else the
 * file `huggingface-cli login` writes ($HF_TOKEN_PATH, or "token" in $HF_HOME, ~/.cache/huggingface).
 */
function hubToken(): { token: string; named: string } | undefined {
  if (process.env.HF_TOKEN) return { token: process.env.HF_TOKEN, named: "HF_TOKEN" };
  const path =
    process.env.HF_TOKEN_PATH || join(process.env.HF_HOME || join(homedir(), ".cache", "huggingface"), "token");
  let token = "";
  try {
    token = readFileSync(path, "utf8").trim();
  } catch {
    // not logged in
  }
  return token ? { token, named: `the token in ${path}` } : undefined;
}

function hubHeaders(): Record<string, string> {
  const token = hubToken()?.token;
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Downloads what the model needs into blobs; returns its files and the commit they came from. */
export async function pullHFRepo(
  spec: string,
  options: HFPullOptions = {},
): Promise<{ files: ManifestFile[]; revision: string }> {
  const { repo, revision } = parseHFSpec(spec);
  const endpoint = hfEndpoint();
  const listing = await fetchListing(spec, repo, revision, endpoint, options);
  const commit = listing.sha ?? revision;
  const available = listing.siblings.map((s) => s.rfilename);
  if (!available.includes("config.json")) {
    throw new Error(
      `${spec} has no config.json: mlx pulls MLX or transformers model repositories (files: ${available.slice(0, 6).join(", ") || "none"})`,
    );
  }
  const locate = (name: string) =>
    locateFile(
      spec,
      `${endpoint}/${repo}/resolve/${encodeURIComponent(commit)}/${encodeURIComponent(name)}`,
      name,
      options,
    );

  const stored = new Map<string, ManifestFile>();
  let indexed: string[] | undefined;
  if (available.includes(WEIGHT_INDEX)) {
    const index = await fetchFile(await locate(WEIGHT_INDEX), commit, options);
    stored.set(WEIGHT_INDEX, index);
    indexed = indexedWeightFiles(await Bun.file(blobPath(index.sha256)).text(), spec);
  }
  const wanted = neededFiles(available, indexed).filter((name) => !stored.has(name));
  if (!wanted.some((name) => name.endsWith(".safetensors"))) throw new Error(`${spec} has no .safetensors weights`);
  const missing = wanted.filter((name) => !available.includes(name));
  if (missing.length > 0)
    throw new Error(`${spec}: ${WEIGHT_INDEX} names files the repository lacks: ${missing.join(", ")}`);

  const remote = await Promise.all(wanted.map(locate));
  await ensureFreeSpace(await bytesStillNeeded(remote), spec);
  const total = remote.every((f) => f.size !== undefined) ? remote.reduce((n, f) => n + f.size!, 0) : undefined;
  let done = 0;
  for (const file of remote) {
    let fetched = false;
    const onProgress =
      options.onProgress &&
      ((p: DownloadProgress) => {
        fetched = true;
        options.onProgress!({ ...p, received: done + p.received, total, file: file.name });
      });
    const blob = await fetchFile(file, commit, { ...options, onProgress });
    stored.set(file.name, blob);
    done += blob.size;
    options.onProgress?.({ received: done, total, ...(fetched ? {} : { onDisk: true }) });
  }
  return { files: [...stored.values()], revision: commit };
}

/** A request to the hub that fails when no answer comes in time, rather than hanging the pull. */
async function hubRequest(url: string, init: RequestInit, options: HFPullOptions, reaching: string): Promise<Response> {
  const timeoutMs = options.hubTimeoutMs ?? HUB_TIMEOUT_MS;
  const timeout = AbortSignal.timeout(timeoutMs);
  try {
    return await fetch(url, {
      ...init,
      headers: hubHeaders(),
      signal: options.signal ? AbortSignal.any([options.signal, timeout]) : timeout,
    });
  } catch (error) {
    if (options.signal?.aborted) throw options.signal.reason;
    const reason = timeout.aborted ? `no answer in ${timeoutMs / 1000} s` : describeNetworkError(error);
    throw new Error(`cannot reach ${reaching}: ${reason}`);
  }
}

async function fetchListing(spec: string, repo: string, revision: string, endpoint: string, options: HFPullOptions) {
  const url = `${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}`;
  const response = await hubRequest(url, {}, options, `the Hugging Face hub at ${shownEndpoint()}`);
  if (!response.ok) throw hubError(response, spec, url);
  const body = (await response.json().catch(() => undefined)) as
    | { sha?: string; siblings?: { rfilename?: string }[] }
    | undefined;
  if (!body || !Array.isArray(body.siblings))
    throw new Error(`${withoutCredentials(url)} did not answer with a repository listing (JSON with siblings)`);
  const siblings = body.siblings.filter((s): s is { rfilename: string } => typeof s.rfilename === "string");
  return { sha: typeof body.sha === "string" ? body.sha : undefined, siblings };
}

/** A HEAD request that stops at the redirect: the redirect is what carries the LFS file's sha256 and size. */
async function locateFile(spec: string, url: string, name: string, options: HFPullOptions): Promise<RemoteFile> {
  const response = await hubRequest(url, { method: "HEAD", redirect: "manual" }, options, withoutCredentials(url));
  const redirected = response.status >= 300 && response.status < 400 && response.headers.has("location");
  if (!redirected && !response.ok) throw hubError(response, spec, url);
  const sha256 = etagSha256(response.headers.get("x-linked-etag") ?? response.headers.get("etag"));
  const sizeHeader =
    response.headers.get("x-linked-size") ?? (redirected ? null : response.headers.get("content-length"));
  return {
    name,
    url: redirected ? new URL(response.headers.get("location")!, url).href : url,
    sha256,
    size: sizeHeader !== null && /^\d+$/.test(sizeHeader) ? Number(sizeHeader) : undefined,
  };
}

/**
 * One file into its blob. With a known sha256 it downloads straight to the blob's path (and
 * skips it when the blob is already there); otherwise (small git-stored files, whose ETag is a
 * git sha1) it downloads to downloads/ and then stores the file by its hash.
 */
async function fetchFile(file: RemoteFile, commit: string, options: HFPullOptions): Promise<ManifestFile> {
  if (file.sha256 && file.size !== undefined && (await blobPresent({ sha256: file.sha256, size: file.size }))) {
    return { name: file.name, sha256: file.sha256, size: file.size };
  }
  // Credentials go to the hub only, never to the storage it redirects to (its URLs are signed).
  const headers = new URL(file.url).origin === new URL(hfEndpoint()).origin ? hubHeaders() : {};
  const download = {
    expectedSha256: file.sha256,
    expectedSize: file.size,
    headers,
    onProgress: options.onProgress,
    signal: options.signal,
  };
  if (file.sha256) {
    const result = await downloadToFile(file.url, blobPath(file.sha256), download);
    return { name: file.name, sha256: result.sha256, size: result.size };
  }
  const staging = join(
    downloadsDir(),
    "hf",
    `${commit}-${new Bun.CryptoHasher("sha256").update(file.url).digest("hex").slice(0, 16)}`,
  );
  await downloadToFile(file.url, staging, download);
  return { name: file.name, ...(await addBlob(staging, { move: true })) };
}

/** What the files still need on disk: nothing for a blob already stored, less what a partial download holds. */
async function bytesStillNeeded(files: RemoteFile[]): Promise<number> {
  const needed = await Promise.all(
    files.map(async ({ sha256, size }) => {
      if (size === undefined) return 0;
      if (!sha256) return size;
      if (await blobPresent({ sha256, size })) return 0;
      return Math.max(0, size - (await partialBytes(blobPath(sha256))));
    }),
  );
  return needed.reduce((n, bytes) => n + bytes, 0);
}

/** The hub's ETags are quoted and may be weak: W/"<hex>". Only a sha256 is of use here. */
function etagSha256(etag: string | null): string | undefined {
  const value = etag?.replace(/^W\//, "").replace(/"/g, "").toLowerCase();
  return value && isSha256Hex(value) ? value : undefined;
}

/** One line that says what is wrong in the user's terms; the hub names the case in X-Error-Code. */
function hubError(response: Response, spec: string, url: string): Error {
  void response.body?.cancel();
  const { repo, revision } = parseHFSpec(spec);
  const code = response.headers.get("x-error-code");
  const hubMessage = response.headers.get("x-error-message");
  const file = decodeURIComponent(url.split("/resolve/")[1]?.split("/").slice(1).join("/") ?? "");
  const token = hubToken();
  if (code === "GatedRepo")
    return new Error(
      `${spec}: ${repo} is gated; accept its terms on the hub${token ? ` with the account ${token.named} belongs to` : " and set HF_TOKEN"}`,
    );
  if (code === "RevisionNotFound") return new Error(`${spec}: revision '${revision}' not found in ${repo}`);
  if (code === "EntryNotFound" || (file && response.status === 404))
    return new Error(`${spec}: ${file} not found in ${repo}@${revision}`);
  // A 401 that is no verdict on the repository is one on the token: invalid or expired.
  if (response.status === 401 && token && code !== "RepoNotFound")
    return new Error(`${spec}: ${shownEndpoint()} refused ${token.named}${hubMessage ? ` (${hubMessage})` : ""}`);
  if (code === "RepoNotFound" || response.status === 401 || response.status === 404) {
    const hint = token ? `or ${token.named} gives no access to it` : "a private one needs HF_TOKEN";
    return new Error(`${spec}: repository ${repo} not found on ${shownEndpoint()} (${hint})`);
  }
  return new Error(
    `GET ${withoutCredentials(url)}: HTTP ${response.status} ${response.statusText}${hubMessage ? `: ${hubMessage}` : ""}`.trim(),
  );
}
