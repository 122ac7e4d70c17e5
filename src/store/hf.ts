// Models from a Hugging Face hub repository: "hf:<org>/<repo>[@revision][:<quantization>]", spoken
// over the hub's plain HTTP protocol (so any mirror that speaks it works, through $HF_ENDPOINT):
//   GET  {endpoint}/api/models/{repo}/revision/{rev}   -> { sha, siblings: [{ rfilename }] }
//   HEAD {endpoint}/{repo}/resolve/{sha}/{file}        -> X-Linked-Etag (sha256 of LFS files), X-Linked-Size,
//                                                         and for LFS files a redirect to their storage
// Files are fetched at the listing's commit sha, so a push during the pull cannot mix revisions.
// A repository of MLX or transformers weights gives its config, tokenizer and safetensors; one of
// GGUF files (llama.cpp's, as Ollama pulls from hf.co/<org>/<repo>:<quantization>) gives the one
// file of the quantization asked for, Q4_K_M by default as Ollama's.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { homedir } from "node:os";
import { basename, join } from "node:path";
import { addBlob, blobPresent, type BlobRef } from "./blobs";
import {
  describeNetworkError,
  DownloadError,
  downloadToFile,
  ensureFreeSpace,
  partialBytes,
  retryDelayMs,
  sleep,
  withoutCredentials,
  type DownloadOptions,
  type DownloadProgress,
  type DownloadResult,
} from "./download";
import { withLock } from "./lock";
import { NO_TOKENIZER, TOKENIZER_FILE, writeJsonAtomic, type ManifestFile } from "./manifest";
import { neededFiles, WEIGHT_INDEX } from "./model-files";
import { blobPath, downloadsDir, isSha256Hex, locksDir, refsDir } from "./paths";

export interface HFSpec {
  repo: string;
  revision: string;
  /** Which GGUF file of a repository of several: its quantization as the file names it (Q4_K_M). */
  quantization?: string;
}

/** The quantization Ollama pulls from a GGUF repository when none is named. */
const DEFAULT_GGUF_QUANTIZATION = "Q4_K_M";

export interface HFPullOptions {
  /** Progress over all the files of the model together. */
  onProgress?: (progress: DownloadProgress) => void;
  signal?: AbortSignal;
  /** A request to the hub (the listing, a file's lookup) that answers nothing for this long fails (default 30 s). */
  hubTimeoutMs?: number;
  /**
   * The files of the revision stored before (an update's): a git-stored file (config, tokenizer)
   * the hub names by the same git blob id is kept, not downloaded again; LFS files are kept by
   * their sha256 as any stored blob is.
   */
  previous?: ManifestFile[];
}

interface RemoteFile {
  name: string;
  /** Where the bytes are: the resolve URL, or the storage it redirects to. */
  url: string;
  /** The file's URL on the hub, which answers with `url`. */
  resolveUrl: string;
  sha256?: string;
  size?: number;
  /** The hub's ETag for the file (for a file kept in git, its git hash): another where the file changed. */
  etag?: string;
  /** Asks the hub again: the storage's links are signed and expire. */
  relocate: () => Promise<RemoteFile>;
}

/** Redirects within the hub followed for one file's lookup (a repository renamed more than once). */
const MAX_HUB_REDIRECTS = 5;
const REPO = /^[A-Za-z0-9][A-Za-z0-9_.-]*\/[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const HUB_TIMEOUT_MS = 30_000;

/** Whether `name` reads as a hub repository, "org/repo[@revision]" (what mlx-lm's --model takes). */
export function looksLikeHubRepo(name: string): boolean {
  const repo = name.split("@")[0]!;
  return REPO.test(repo) && !repo.includes("..");
}

/**
 * The hub repository `typed` names the way mlx-lm (org/repo) or Ollama (hf.co/org/repo[:Q4_K_M],
 * or its huggingface.co URL) users write one, with its quantization; undefined when it names none.
 */
export function hubRepoNamed(typed: string): string | undefined {
  const [repo, quantization] = typed.replace(/^(https?:\/\/)?(hf\.co|huggingface\.co)\//, "").split(":");
  if (!looksLikeHubRepo(repo!)) return undefined;
  return quantization ? `${repo}:${quantization}` : repo;
}

export function parseHFSpec(spec: string): HFSpec {
  const match = spec.match(/^hf:([^@:]+)(?:@([^:]+))?(?::([A-Za-z0-9_.-]+))?$/);
  if (!match || !REPO.test(match[1]!) || match[1]!.includes("..")) {
    throw new Error(`invalid source '${spec}': expected hf:<org>/<repo>[@revision][:<quantization>]`);
  }
  // Half of a UTF-16 pair (JSON lets a request send one) names no branch, tag or commit; the
  // revision's URL could not be written (encodeURIComponent throws), which read as the hub failing.
  if (!spec.isWellFormed())
    throw new Error(`invalid source '${spec}': its revision holds a lone UTF-16 surrogate, which is not a character`);
  const revision = match[2] ?? "main";
  if (!isRevisionName(revision))
    throw new Error(
      `invalid source: the revision ${JSON.stringify(revision)} is not a branch, tag or commit (those have no spaces, control characters, "..", "@{" or any of ~^?*[\\)`,
    );
  return { repo: match[1]!, revision, ...(match[3] ? { quantization: match[3] } : {}) };
}

/**
 * Whether `revision` may name a branch, tag or commit, as git's check-ref-format allows ("v1.0",
 * "refs/pr/1"): a server logs the pulls its requests make, and a revision with a line end or a
 * terminal escape in it would write lines of the client's own into the operator's log.
 */
function isRevisionName(revision: string): boolean {
  return /^[^\u0000-\u0020\u007f~^?*[\\]+$/.test(revision) && !revision.includes("..") && !revision.includes("@{");
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
  // Its older name, which huggingface_hub still reads (and Docker images and guides still set).
  if (process.env.HUGGING_FACE_HUB_TOKEN)
    return { token: process.env.HUGGING_FACE_HUB_TOKEN, named: "HUGGING_FACE_HUB_TOKEN" };
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

/**
 * huggingface_hub's offline mode ($HF_HUB_OFFLINE, or transformers' $TRANSFORMERS_OFFLINE, set to
 * 1/ON/YES/TRUE): what is stored is used and the hub is never asked, so a model that is not
 * stored (or whose files are damaged) fails at once instead of reaching for the network.
 */
export function hubOffline(): string | undefined {
  const set = (name: string) => ["1", "ON", "YES", "TRUE"].includes((process.env[name] ?? "").trim().toUpperCase());
  return ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].find(set);
}

function hubHeaders(): Record<string, string> {
  const token = hubToken()?.token;
  return token ? { Authorization: `Bearer ${token}` } : {};
}

/** Whether `spec` names a commit (40 hex digits), which never moves, rather than a branch or tag. */
export function pinsCommit(spec: string): boolean {
  return /^[0-9a-f]{40}$/i.test(parseHFSpec(spec).revision);
}

/** The commit the hub's revision of `spec` (its branch, or tag) is at now: undefined where the hub names none (a mirror's). */
export async function hubCommit(spec: string, options: HFPullOptions = {}): Promise<string | undefined> {
  const { repo, revision } = parseHFSpec(spec);
  return (await fetchListing(spec, repo, revision, hfEndpoint(), options)).sha;
}

/** Downloads what the model needs into blobs; returns its files and the commit they came from. */
export async function pullHFRepo(
  spec: string,
  options: HFPullOptions = {},
): Promise<{ files: ManifestFile[]; revision: string }> {
  const { repo, revision, quantization } = parseHFSpec(spec);
  // Said of the source alone: the model may be missing, or stored with a file damaged.
  const offline = hubOffline();
  if (offline)
    throw new Error(
      `${spec}: ${offline} is set, so the hub is not asked for the model's files (unset ${offline} to pull it)`,
    );
  const endpoint = hfEndpoint();
  const listing = await fetchListing(spec, repo, revision, endpoint, options);
  const commit = listing.sha ?? revision;
  const available = listing.siblings.map((s) => s.rfilename);
  const locate = (name: string) =>
    locateFile(
      spec,
      `${endpoint}/${repo}/resolve/${encodeURIComponent(commit)}/${name.split("/").map(encodeURIComponent).join("/")}`,
      name,
      options,
    );
  const ggufs = available.filter((name) => name.endsWith(".gguf") && !isProjector(name));
  const hasWeights = available.includes("config.json") && available.some((name) => name.endsWith(".safetensors"));
  if (quantization !== undefined || (!hasWeights && ggufs.length > 0)) {
    // A GGUF is the whole model, in one file: stored by its own name, whatever folder the
    // repository keeps it in (Q8_0/...).
    const located = await locate(chooseGGUF(spec, ggufs, quantization));
    const file = { ...located, name: basename(located.name) };
    await ensureFreeSpace(await bytesStillNeeded([file]), spec);
    return { files: await fetchFiles([file], commit, options), revision: commit };
  }
  if (!available.includes("config.json")) {
    throw new Error(
      `${spec} has no config.json: mlx pulls MLX or transformers model repositories, or GGUF ones (files: ${available.slice(0, 6).join(", ") || "none"})`,
    );
  }

  // Refused before gigabytes of weights are fetched, not when they are stored (describeFiles).
  if (!available.includes(TOKENIZER_FILE)) throw new Error(`${spec}: ${NO_TOKENIZER}`);

  const stored = new Map<string, ManifestFile>();
  // The files that say which others are needed are fetched first, and kept.
  const readFetched = async (name: string) => {
    const file = await fetchFile(await locate(name), commit, options);
    stored.set(name, file);
    return readFile(blobPath(file.sha256), "utf8");
  };
  const wanted = (await neededFiles(available, readFetched, spec)).filter((name) => !stored.has(name));
  if (!wanted.some((name) => name.endsWith(".safetensors"))) throw new Error(`${spec} has no .safetensors weights`);
  const missing = wanted.filter((name) => !available.includes(name));
  if (missing.length > 0)
    throw new Error(`${spec}: ${WEIGHT_INDEX} names files the repository lacks: ${missing.join(", ")}`);

  const remote = await Promise.all(wanted.map(locate));
  await ensureFreeSpace(await bytesStillNeeded(remote), spec);
  return { files: [...stored.values(), ...(await fetchFiles(remote, commit, options))], revision: commit };
}

/**
 * A vision model's projector: no language model of its own. Repositories name it mmproj-*.gguf
 * or after the model (llava-v1.5-7b-mmproj-model-f16.gguf), its quantization in the name too.
 */
const isProjector = (name: string) => /mmproj/i.test(basename(name));

/**
 * The GGUF file of `quantization` (by default Q4_K_M, else a repository's only file): the one
 * whose name holds it as a word, in any case (Q4_K names Q4_K, not Q4_K_M), or whose file name it
 * is. A model split in parts (-00001-of-00003.gguf) is refused: it loads from one file.
 */
function chooseGGUF(spec: string, ggufs: string[], quantization: string | undefined): string {
  const { repo } = parseHFSpec(spec);
  const wanted = quantization ?? DEFAULT_GGUF_QUANTIZATION;
  if (ggufs.length === 0)
    throw new Error(`${spec}: ${repo} has no GGUF files to choose a quantization from: pull it without ':${wanted}'`);
  const stem = (name: string) => name.replace(/\.gguf$/, "");
  const exact = ggufs.filter((name) => basename(stem(name)).toLowerCase() === wanted.toLowerCase());
  const word = new RegExp(`(^|[-_./])${wanted.replace(/[.]/g, "\\.")}([-./]|$)`, "i");
  const matching = exact.length > 0 ? exact : ggufs.filter((name) => word.test(stem(name)));
  if (matching.length === 0 && quantization === undefined && ggufs.length === 1) return ggufs[0]!;
  if (matching.length === 0)
    throw new Error(
      `${spec}: ${repo} has no ${wanted} GGUF file: name one as hf:${repo}:<quantization>, or by its file name without .gguf (${ggufs.join(", ")})`,
    );
  if (matching.some((name) => /-\d{5}-of-\d{5}\.gguf$/.test(name)))
    throw new Error(
      `${spec}: the ${wanted} model is split in several GGUF files, which mlx cannot load (one file only)`,
    );
  if (matching.length > 1)
    throw new Error(
      `${spec}: several GGUF files are ${wanted} (${matching.join(", ")}): name one by its file name without .gguf`,
    );
  return matching[0]!;
}

/** Each file into its blob, with progress over all of them together. */
async function fetchFiles(remote: RemoteFile[], commit: string, options: HFPullOptions): Promise<ManifestFile[]> {
  const total = remote.every((f) => f.size !== undefined) ? remote.reduce((n, f) => n + f.size!, 0) : undefined;
  const fetched: ManifestFile[] = [];
  let done = 0;
  for (const file of remote) {
    let downloaded = false;
    const onProgress =
      options.onProgress &&
      ((p: DownloadProgress) => {
        downloaded = true;
        options.onProgress!({ ...p, received: done + p.received, total, file: file.name });
      });
    const blob = await fetchFile(file, commit, { ...options, onProgress });
    fetched.push(blob);
    done += blob.size;
    options.onProgress?.({ received: done, total, ...(downloaded ? {} : { onDisk: true }) });
  }
  return fetched;
}

/**
 * A request to the hub, asked again while the hub says it is busy (429: its rate limit, which
 * anonymous pulls reach first; 5xx: a node or gateway down for a moment), as huggingface_hub
 * does, rather than failing a pull that its downloads would have retried.
 */
async function hubRequest(
  url: string,
  init: HubRequestInit,
  options: HFPullOptions,
  reaching: string,
): Promise<Response> {
  for (let attempt = 1; ; attempt++) {
    const response = await hubRequestOnce(url, init, options, reaching);
    if (!hubBusy(response.status) || attempt > HUB_RETRIES) return response;
    await response.body?.cancel();
    await sleep(retryDelayMs(response, HUB_RETRY_DELAY_MS * 2 ** (attempt - 1)), options.signal);
  }
}

const HUB_RETRIES = 4;
/** The first pause, doubled at each retry, where the hub gives no Retry-After. */
const HUB_RETRY_DELAY_MS = 500;
const hubBusy = (status: number) => status === 429 || status >= 500;

/** A request's options, its headers as a plain record (the token's is added to them). */
type HubRequestInit = Omit<RequestInit, "headers"> & { headers?: Record<string, string> };

/** One request to the hub, which fails when no answer comes in time rather than hanging the pull. */
async function hubRequestOnce(
  url: string,
  init: HubRequestInit,
  options: HFPullOptions,
  reaching: string,
): Promise<Response> {
  const timeoutMs = hubTimeoutMs(options);
  const timeout = AbortSignal.timeout(timeoutMs);
  try {
    return await fetch(url, {
      ...init,
      headers: { ...init.headers, ...hubHeaders() },
      signal: options.signal ? AbortSignal.any([options.signal, timeout]) : timeout,
    });
  } catch (error) {
    if (options.signal?.aborted) throw options.signal.reason;
    const reason = timeout.aborted ? `no answer in ${timeoutMs / 1000} s` : describeNetworkError(error);
    throw new Error(`cannot reach ${reaching}: ${reason}`);
  }
}

const hubTimeoutMs = (options: HFPullOptions) => options.hubTimeoutMs ?? HUB_TIMEOUT_MS;

async function fetchListing(spec: string, repo: string, revision: string, endpoint: string, options: HFPullOptions) {
  const url = `${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}`;
  const reaching = `the Hugging Face hub at ${shownEndpoint()}`;
  const response = await hubRequest(url, {}, options, reaching);
  if (!response.ok) throw hubError(response, spec, url);
  const body = (await listingJson(response, options, reaching)) as
    | { sha?: string; siblings?: { rfilename?: string }[] }
    | undefined;
  if (!body || !Array.isArray(body.siblings)) {
    // A web page where the hub's JSON should be: what a network's login page (a hotel's, a
    // captive portal) or a proxy's block page answers every request with.
    const page = /\bhtml\b/i.test(response.headers.get("content-type") ?? "")
      ? ": it answered a web page (a network's login page or a proxy in the way? or HF_ENDPOINT not a hub)"
      : " (JSON with siblings)";
    throw new Error(`${withoutCredentials(url)} did not answer with a repository listing${page}`);
  }
  const siblings = body.siblings.filter((s): s is { rfilename: string } => typeof s.rfilename === "string");
  return { sha: typeof body.sha === "string" ? body.sha : undefined, siblings };
}

/**
 * The listing's JSON, undefined when it is none. Its body comes under the request's timeout: a
 * hub that goes quiet halfway, or whose connection drops halfway, is said to, not taken for one
 * that answered something else.
 */
async function listingJson(response: Response, options: HFPullOptions, reaching: string): Promise<unknown> {
  let text: string;
  try {
    text = await response.text();
  } catch (error) {
    if (options.signal?.aborted) throw options.signal.reason;
    if (error instanceof DOMException && error.name === "TimeoutError")
      throw new Error(`cannot reach ${reaching}: no complete answer in ${hubTimeoutMs(options) / 1000} s`);
    throw new Error(
      `cannot reach ${reaching}: the connection closed before the listing was complete (${describeNetworkError(error)})`,
    );
  }
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

/**
 * A HEAD request that stops at the redirect to storage: that redirect is what carries the LFS
 * file's sha256 and size. One to the hub itself without them (a renamed repository's, to its
 * new name) is followed to the answer that has them, as huggingface_hub follows it.
 */
async function locateFile(
  spec: string,
  url: string,
  name: string,
  options: HFPullOptions,
  hops = 0,
): Promise<RemoteFile> {
  // Uncompressed: a CDN that may gzip the file would tell its compressed size, which the download (identity) never matches.
  const lookup = { method: "HEAD", redirect: "manual", headers: { "Accept-Encoding": "identity" } } as const;
  const response = await hubRequest(url, lookup, options, withoutCredentials(url));
  const redirected = response.status >= 300 && response.status < 400 && response.headers.has("location");
  // A Location naming no host is on the hub (huggingface_hub's test too); storage is elsewhere.
  const location = response.headers.get("location") ?? "";
  const withinHub = !/^([a-z][a-z\d+.-]*:)?\/\//i.test(location);
  if (redirected && withinHub && !response.headers.has("x-linked-etag") && hops < MAX_HUB_REDIRECTS)
    return locateFile(spec, new URL(location, url).href, name, options, hops + 1);
  if (!redirected && !response.ok) throw hubError(response, spec, url);
  const sha256 = etagSha256(response.headers.get("x-linked-etag") ?? response.headers.get("etag"));
  const sizeHeader =
    response.headers.get("x-linked-size") ?? (redirected ? null : response.headers.get("content-length"));
  return {
    name,
    url: redirected ? new URL(location, url).href : url,
    resolveUrl: url,
    relocate: () => locateFile(spec, url, name, options),
    sha256,
    etag: response.headers.get("etag") ?? undefined,
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
  const download = {
    expectedSha256: file.sha256,
    expectedSize: file.size,
    onProgress: options.onProgress,
    signal: options.signal,
  };
  if (file.sha256) {
    const result = await downloadFromStorage(file, blobPath(file.sha256), download);
    return { name: file.name, sha256: result.sha256, size: result.size };
  }
  const gitBlob = gitBlobIdOf(file);
  if (gitBlob) return fetchGitFile(file, gitBlob, download, options.previous);
  // Named after the hub's URL, which stays the same where a storage link changes each time, and
  // the file's ETag: where the listing names no commit (a mirror's), that URL is a branch's, and a
  // file changed on it since a download was cut short must not be resumed from the old one's bytes.
  const key = `${file.resolveUrl}\n${file.etag ?? ""}`;
  const staging = join(
    downloadsDir(),
    "hf",
    `${commit}-${createHash("sha256").update(key).digest("hex").slice(0, 16)}`,
  );
  // Into blobs before another pull of the same file (another model's name for it) may download it again there.
  let blob: BlobRef | undefined;
  const claim = async () => void (blob = await addBlob(staging, { move: true }));
  await downloadFromStorage(file, staging, { ...download, claim });
  return { name: file.name, ...blob! };
}

/** A git-stored file's git blob id (a sha1 of its content), as the hub's ETag for it gives it; undefined for any other ETag. */
function gitBlobIdOf(file: RemoteFile): string | undefined {
  const etag = file.etag?.replace(/^W\//, "").replace(/"/g, "").toLowerCase();
  return etag && /^[0-9a-f]{40}$/.test(etag) ? etag : undefined;
}

/** What git names a file's content by. */
async function gitBlobIdOfFile(path: string): Promise<string> {
  const content = await readFile(path);
  return createHash("sha1").update(`blob ${content.length}\0`).update(content).digest("hex");
}

// Another process fetching the same file may take as long as its download does.
const GIT_FILE_LOCK_TIMEOUT_MS = 6 * 3600_000;

/**
 * A git-stored file (a config, a tokenizer) by what it is, its git blob id: two pulls fetching the
 * same content, under two names or from two repositories, download it once, the second waiting
 * for the first and taking its blob, as two pulls of an LFS file share its blob's download; and
 * an update keeps the stored revision's file (`previous`) whose content did not change.
 */
async function fetchGitFile(
  file: RemoteFile,
  gitBlob: string,
  download: Omit<DownloadOptions, "headers">,
  previous: ManifestFile[] | undefined,
): Promise<ManifestFile> {
  const earlier = await heldGitFile(file, gitBlob, previous);
  if (earlier) return earlier;
  return withLock(
    join(locksDir(), `git-file-${gitBlob}.lock`),
    async () => {
      const meanwhile = await heldGitFile(file, gitBlob, undefined);
      if (meanwhile) return meanwhile;
      const staging = join(downloadsDir(), "hf", `git-${gitBlob}`);
      let blob: BlobRef | undefined;
      let named = false;
      const claim = async () => {
        named = (await gitBlobIdOfFile(staging)) === gitBlob;
        blob = await addBlob(staging, { move: true });
      };
      await downloadFromStorage(file, staging, { ...download, claim });
      // A mirror's ETag that is not the content's git blob id records nothing: the file is stored all the same.
      if (named) writeJsonAtomic(gitFileRef(gitBlob), { sha256: blob!.sha256, size: blob!.size });
      return { name: file.name, ...blob! };
    },
    { timeoutMs: GIT_FILE_LOCK_TIMEOUT_MS, signal: download.signal },
  );
}

/** Where the blob a git blob id was stored as is recorded, once its content is checked to be what the id names. */
const gitFileRef = (gitBlob: string) => join(refsDir(), "hf-git", `${gitBlob}.json`);

/**
 * The blob the store holds already for git blob id `gitBlob`, as `file`: the one recorded for it
 * (gitFileRef), else the file of that name in `previous` (the revision an update replaces) where
 * its content has that id; undefined where there is none on disk.
 */
async function heldGitFile(
  file: RemoteFile,
  gitBlob: string,
  previous: ManifestFile[] | undefined,
): Promise<ManifestFile | undefined> {
  let recorded: BlobRef | undefined;
  try {
    recorded = JSON.parse(await readFile(gitFileRef(gitBlob), "utf8"));
  } catch {
    // none yet, or unreadable: looked for in the previous revision, else downloaded again and recorded anew
  }
  if (typeof recorded?.sha256 === "string" && isSha256Hex(recorded.sha256) && (await blobPresent(recorded)))
    return { name: file.name, sha256: recorded.sha256, size: recorded.size };
  // A file stored before its git blob id was recorded (an earlier mlx's pull) is known by hashing
  // it: git-stored files are small (configs, tokenizers), hashing one is cheaper than asking for it.
  const before = previous?.find((f) => f.name === file.name);
  if (!before || (file.size !== undefined && file.size !== before.size)) return undefined;
  if (before.size > GIT_FILE_MAX_BYTES || !(await blobPresent(before))) return undefined;
  return (await gitBlobIdOfFile(blobPath(before.sha256))) === gitBlob ? before : undefined;
}

/** Larger files than this are LFS's on the hub, named by their sha256. */
const GIT_FILE_MAX_BYTES = 50_000_000;

/**
 * downloadToFile from where the hub sends it. The storage's links are signed and expire (within
 * an hour on the hub's CDN): files located together wait for those before them, and a resume may
 * come after the expiry. A link the storage refuses is asked of the hub again and the download
 * resumes from the fresh one; a fresh link refused before it gave a byte is a refusal meant.
 */
async function downloadFromStorage(
  file: RemoteFile,
  destPath: string,
  download: Omit<DownloadOptions, "headers">,
): Promise<DownloadResult> {
  for (let link = file; ; ) {
    const bytesBefore = await partialBytes(destPath);
    const onHub = new URL(link.url).origin === new URL(hfEndpoint()).origin;
    try {
      // Credentials go to the hub only, never to the storage it redirects to (its URLs are signed).
      return await downloadToFile(link.url, destPath, { ...download, headers: onHub ? hubHeaders() : {} });
    } catch (error) {
      // The hub's own refusal is a verdict on the token, not an expired link.
      const expired = !onHub && error instanceof DownloadError && LINK_REFUSED.has(error.status ?? 0);
      if (!expired || (link !== file && (await partialBytes(destPath)) === bytesBefore)) {
        // Its URL is the storage's, named by hash: the repository's name of the file says which it is.
        if (error instanceof DownloadError) error.message = `${file.name}: ${error.message}`;
        throw error;
      }
      link = await link.relocate();
    }
  }
}

/** What a storage answers a signed link past its expiry (S3 and CloudFront: 403). */
const LINK_REFUSED = new Set([401, 403, 410]);

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
  const retried = hubBusy(response.status) ? ` (gave up after ${HUB_RETRIES} retries)` : "";
  return new Error(
    `GET ${withoutCredentials(url)}: HTTP ${response.status} ${response.statusText}${hubMessage ? `: ${hubMessage}` : ""}`.trim() +
      retried,
  );
}
