// The HTTP server, composed in one place: request accounting, errors, CORS, the API key, the
// body limit, then the routes of each API family. Data flows one way: routes validate with
// src/api, hold a model from the registry (model-registry.ts), and submit to its scheduler
// (src/engine/scheduler.ts) through server/generation.ts.
import type { KvQuantization } from "../models/cache";
import type { SpeculationChoice } from "../models/load";
import { timingSafeEqual, createHash } from "node:crypto";
import { BlockList, isIP } from "node:net";
import { hostname } from "node:os";
import { Hono, type Context } from "hono";
import { matchedRoutes } from "hono/route";
import { bodyLimit } from "hono/body-limit";
import { cors } from "hono/cors";
import { requestId } from "hono/request-id";
import {
  ApiError,
  apiFamily,
  ClientGoneError,
  errorResponse,
  hostNotAllowed,
  notFound,
  originNotAllowed,
  requestTimeout,
  serverStopping,
  toApiError,
  unauthorized,
  unsupportedContentEncoding,
} from "./errors";
import { serverMetrics } from "./metrics";
import { ModelRegistry, type LoadSettings } from "./model-registry";
import { anthropicRoutes } from "./routes/anthropic";
import { ollamaRoutes } from "./routes/ollama";
import { responsesRoutes } from "./routes/responses";
import { embeddingsRoutes } from "./routes/embeddings";
import { ollamaModelRoutes } from "./routes/ollama-models";
import { tokenRoutes } from "./routes/tokens";
import { openaiRoutes } from "./routes/openai";
import { keylessProbes, opsRoutes, queueFigures } from "./routes/ops";
import { isPublicPage, webRoutes } from "./routes/web";
import { InFlight } from "./inflight";
import { DEFAULT_UNREAD_STREAM_BYTES } from "./respond";
import { memoryFigures } from "../engine/device";
import { DEFAULT_PREFILL_CHUNK } from "../engine/batch";
import { Scheduler } from "../engine/scheduler";
import type { LoadedModel } from "../models/load";
import { PrefixCache } from "../engine/prefix-cache";
import { BackgroundWrites, DiskPrefixCache } from "../engine/disk-prefix-cache";
import { promptCacheOwner } from "../engine/prompt-cache-file";
import { AdaptiveTuner } from "../engine/tuner";
import type { ServerConfig, ServerState } from "./state";
import { activeProviders, remoteModel } from "../providers";
import { MAX_TIMER_MS } from "../event-loop";
import { evictionNote } from "../store/store";
import { AdapterError, ConfigError, ModelLoadError } from "../errors";

export interface ServerOptions extends Partial<ServerConfig> {
  host?: string;
  /** 0 picks a free port. */
  port?: number;
  maxQueue?: number;
  /** Default keep-alive (ms; Infinity keeps models loaded). */
  keepAliveMs?: number;
  maxLoadedModels?: number;
  /** How long the server is idle before freed memory goes back to the system (ms; ModelRegistryOptions.idleMemoryReturnMs). */
  idleMemoryReturnMs?: number;
  /** Sequences decoded together per step (the tuner's starting point when it is on). */
  maxBatch?: number;
  /** Prompt tokens prefilled between two decode steps. */
  prefillChunk?: number;
  /** Turns the adaptive tuner on, aiming at this P99 inter-token latency. */
  targetItlMs?: number;
  /** Budget of the cross-request prefix cache, per model (0 turns it off). */
  prefixCacheBytes?: number;
  /** KV cache quantization for every model (--kv-bits); else each alias's kv_bits. */
  kvQuantization?: KvQuantization;
  /** Extra model names, each a base model (undefined: the default) plus an adapter directory (serve --adapter). */
  adapters?: Map<string, { base: string | undefined; dir: string }>;
  /** Speculative decoding for every model (--draft-model, --prompt-lookup); else each alias's. */
  speculation?: SpeculationChoice;
  /** Rotating KV cache size for every model (--max-kv-size); else each alias's max_kv_size. */
  maxKvSize?: number;
  /** Where prefixes go when the prefix cache lets them go, to be reloaded later (--prompt-cache-dir). */
  promptCacheDir?: string;
  /** Bound of that directory, in bytes (--prompt-cache-max-gb). */
  promptCacheMaxBytes?: number;
  logError?: (error: unknown) => void;
  /** Told what the server works around and goes on (a prompt cache file removed or not written); default: logError. */
  logWarning?: (message: string) => void;
  /**
   * What an operator watching the log wants to see by default, one line an event: the start and
   * end of a pull the server runs (a request's model not stored yet, /api/pull), which may take
   * minutes. Default: nothing.
   */
  logInfo?: (message: string) => void;
  /** A model was loaded; `speculationSkipped` says why the server's draft model does not draft for it, if it does not. */
  onLoad?: (name: string, path: string, seconds: number, speculationSkipped?: string) => void;
  /** A model was unloaded (idle past its keep-alive, asked to, making room, or the server stopping). */
  onUnload?: (name: string) => void;
  /** Loads a model in place of loadModel (a rank of a pipeline loads its part). */
  loadModel?: (path: string, settings: LoadSettings) => LoadedModel | Promise<LoadedModel>;
  /** Throws for a model loadModel cannot load, before a loaded one is unloaded to make room for it. */
  refuseModel?: (path: string, settings: LoadSettings) => void;
  /** The files of the one model loadModel can load (a model split across ranks): no other is listed. */
  onlyModelPath?: string;
  /** Seconds a kept-alive connection may sit idle between requests (default 60). */
  idleConnectionSeconds?: number;
  /**
   * Whether a request may name a model by its path on this machine (serve --model-paths); by
   * default only when listening on loopback, where the clients are this machine's own.
   */
  requestPaths?: boolean;
}

const DEFAULT_HOST = "127.0.0.1";

const LOOPBACK = new BlockList();
LOOPBACK.addSubnet("127.0.0.0", 8, "ipv4");
LOOPBACK.addAddress("::1", "ipv6");

/**
 * Addresses only this machine reaches: all of 127.0.0.0/8, ::1 and localhost, however an address
 * is written (0:0:0:0:0:0:0:1, ::ffff:127.0.0.1, [::1]): one taken for another machine's would
 * leave a server on loopback without its Host check.
 */
function isLoopback(host: string): boolean {
  const address = host.replace(/^\[(.*)\]$/, "$1");
  const family = isIP(address);
  if (family === 0) return address.toLowerCase() === "localhost";
  return LOOPBACK.check(address, family === 6 ? "ipv6" : "ipv4");
}

/**
 * What the operator of a server that others can reach, and that asks them for no key, is told
 * at start (the routes that pull, copy and delete models are as open as the rest); else undefined.
 */
export function keylessExposure(config: Pick<ServerConfig, "loopbackOnly" | "apiKey">): string | undefined {
  if (config.loopbackOnly || config.apiKey) return undefined;
  return "listening beyond this machine without an API key: whoever reaches it can use its models, and pull, copy and delete them (--api-key or $MLX_API_KEY require one)";
}

/**
 * The route a request went to, as registered ("/v1/models/:id"), for /metrics and /stats: a label
 * with as many values as there are routes, whatever paths clients send; "other" where none matched.
 * A middleware that answered first (auth, a body limit) still counts for the route it guarded.
 */
const routeLabel = (c: Context) =>
  // A parameter's pattern ("/v1/models/:id{.+}", for ids with slashes) is left out of the label.
  matchedRoutes(c)
    .findLast((r) => !r.path.includes("*"))
    ?.path.replace(/\{[^}]*\}/g, "") ?? "other";

export function createState(o: ServerOptions = {}): ServerState {
  const maxQueue = o.maxQueue ?? 64;
  const maxBatch = o.maxBatch ?? 8;
  // The adaptive tuner may grow the batch up to this; without it the batch stays at maxBatch.
  const largestBatch = o.targetItlMs ? Math.max(maxBatch, 32) : maxBatch;
  // The most sequences a model's scheduler is sure to hold at once: --max-batch running and
  // --max-queue waiting. Not the tuner's largest batch: it grows the limit only under a full batch,
  // so a request of more choices than this would meet a full queue on an idle server, a 429 no
  // retry clears (the scheduler counts its room from --max-batch however low the tuner cut it).
  const maxSequences = maxBatch + maxQueue;
  const prefillChunk = o.prefillChunk ?? DEFAULT_PREFILL_CHUNK;
  const prefixCacheBytes = o.prefixCacheBytes ?? 512 * 1024 * 1024;
  const logWarning = o.logWarning ?? ((message: string) => o.logError?.(new Error(message)));
  // One queue of file writes for every model's disk cache: a stopping server waits for it.
  const diskWrites = new BackgroundWrites();
  const disk = (lm: LoadedModel) =>
    o.promptCacheDir === undefined
      ? undefined
      : new DiskPrefixCache(
          o.promptCacheDir,
          o.promptCacheMaxBytes ?? 10 * 1024 ** 3,
          promptCacheOwner(lm),
          lm.path,
          logWarning,
          diskWrites,
        );
  // Each loaded model gets its own continuous-batching scheduler.
  const makeScheduler = (lm: LoadedModel) =>
    new Scheduler(lm, {
      maxBatch,
      prefillChunk,
      maxQueue,
      prefixCache:
        prefixCacheBytes > 0 || o.promptCacheDir ? new PrefixCache(prefixCacheBytes, Infinity, disk(lm)) : undefined,
      tuner: o.targetItlMs
        ? new AdaptiveTuner({
            targetItlMs: o.targetItlMs,
            initial: { maxBatch, prefillChunk },
            bounds: {
              minBatch: 1,
              maxBatch: largestBatch,
              minChunk: 32,
              maxChunk: Math.max(prefillChunk, 2048),
            },
          })
        : undefined,
      // Each decode step is one inter-token interval for every running sequence.
      onStep: (ms, running) => {
        for (let i = 0; i < running; i++) state.metrics.itl.observe(ms / 1000);
      },
    });
  const state: ServerState = {
    config: {
      apiKey: o.apiKey || undefined,
      corsOrigins: o.corsOrigins ?? [],
      loopbackOnly: isLoopback(o.host ?? DEFAULT_HOST),
      allowedHosts: (o.allowedHosts ?? []).map((name) => name.toLowerCase()),
      maxBodyBytes: o.maxBodyBytes ?? 4 * 1024 * 1024,
      // A timer fires at once past its longest delay: a longer timeout is that long.
      requestTimeoutMs: Math.min(o.requestTimeoutMs ?? 600_000, MAX_TIMER_MS),
      defaultModel: o.defaultModel,
      storedResponseBytes: o.storedResponseBytes ?? 256 * 1024 * 1024,
      unreadStreamBytes: o.unreadStreamBytes ?? DEFAULT_UNREAD_STREAM_BYTES,
      maxSequences,
      version: o.version ?? "0.0.0",
    },
    models: new ModelRegistry({
      defaultKeepAliveMs: o.keepAliveMs ?? 5 * 60_000,
      maxLoaded: o.maxLoadedModels ?? 1,
      makeScheduler,
      kvQuantization: o.kvQuantization,
      adapters: o.adapters,
      pinned: o.defaultModel,
      requestPaths: o.requestPaths ?? isLoopback(o.host ?? DEFAULT_HOST),
      maxWaiting: maxSequences,
      speculation: o.speculation,
      maxKvSize: o.maxKvSize,
      load: o.loadModel,
      refuseLoad: o.refuseModel,
      onEvicted: (name) => logWarning(evictionNote(name)),
      onPullLog: o.logInfo,
      onlyPath: o.onlyModelPath,
      idleMemoryReturnMs: o.idleMemoryReturnMs,
      onLoad: (e) => o.onLoad?.(e.name, e.path, e.loadMs / 1000, e.speculationSkipped),
      onUnload: (e) => {
        state.metrics.retireModel(e.name, e.scheduler.stats);
        o.onUnload?.(e.name);
      },
    }),
    metrics: undefined!,
    inflight: new InFlight(),
    startedAt: performance.now(),
    stopping: false,
    shutdown: new AbortController(),
    requests: { total: 0, byStatus: {}, byRoute: {} },
    logError: o.logError ?? ((error) => console.error(error)),
    logWarning,
    logInfo: o.logInfo ?? (() => {}),
    promptCacheWrites: () => diskWrites.flush(),
  };
  state.metrics = serverMetrics({
    schedulers: () => state.models.loaded.map((e) => ({ model: e.name, stats: e.scheduler.stats })),
    running: () => queueFigures(state).running,
    waiting: () => queueFigures(state).waiting,
    waitingForModel: () => state.models.acquiring,
    loadedModels: () => state.models.loaded.length,
    loadingModels: () => state.models.loading,
    memory: memoryFigures,
    providers: activeProviders,
  });
  return state;
}

const digest = (s: string) => createHash("sha256").update(s).digest();

export function createApp(s: ServerState): Hono {
  const app = new Hono();

  // 0. Every answer names its request in X-Request-Id, the client's own id when it sent one: the
  // OpenAI client reads it (`_request_id`) and a user reporting a failure can quote it.
  app.use("*", requestId());
  // Anthropic's clients read the same id from its own header's name.
  app.use("*", async (c, next) => {
    if (apiFamily(c.req.path, c.req.header("anthropic-version")) === "anthropic")
      c.header("request-id", c.get("requestId"));
    await next();
  });

  // 1. Accounting: every request by route and status (streams count when their headers go out).
  app.use("*", async (c, next) => {
    await next();
    const route = routeLabel(c);
    const status = String(c.res.status);
    s.requests.total++;
    s.requests.byStatus[status] = (s.requests.byStatus[status] ?? 0) + 1;
    s.requests.byRoute[route] = (s.requests.byRoute[route] ?? 0) + 1;
    s.metrics.requests.inc({ route, status });
  });

  // 2. Errors: one mapping for everything thrown below, and for unknown routes. A broken
  // models.toml, or a model (or adapter) whose files do not load, is the operator's to fix, and its
  // 500 alone tells them nothing: said in the log too, once while it stays broken alike.
  let operatorProblem: string | undefined;
  app.onError((error, c) => {
    const answer = toApiError(error, s.logError);
    const operators = error instanceof ConfigError || error instanceof ModelLoadError || error instanceof AdapterError;
    if (operators && answer.message !== operatorProblem) s.logWarning((operatorProblem = answer.message));
    return errorResponse(c, answer);
  });
  app.notFound((c) => errorResponse(c, notFound(`no route ${c.req.method} ${c.req.path}`)));

  // 2b. On loopback, only requests addressed to this machine: a web page whose own domain was
  // made to resolve to 127.0.0.1 (DNS rebinding) reaches the server with that domain in Host,
  // and as "its own origin" would read the answers (as Ollama's CVE-2024-28224).
  if (s.config.loopbackOnly)
    app.use("*", async (c, next) => {
      const host = c.req.header("host");
      if (host === undefined || isLocalHost(host)) return next();
      const name = hostName(host);
      if (name !== undefined && s.config.allowedHosts.includes(name)) return next();
      throw hostNotAllowed(host, name ?? host);
    });

  // 3. CORS for the origins given and, as Ollama's default origins, this machine's pages (3b lets
  // them through): without it a browser would neither send their JSON requests (the preflight
  // failed) nor let them read an answer.
  const allowed = s.config.corsOrigins;
  // The pages this server answers: the origins given, and this machine's.
  const originAllowed = (origin: string, host: string | undefined) =>
    corsAllows(allowed, origin) || isLocalOrigin(origin, host);
  app.use(
    "*",
    cors({
      origin: (origin, c) =>
        allowed.includes("*") ? "*" : originAllowed(origin, c.req.header("host")) ? origin : null,
      // Whatever headers the preflight asks for (as vLLM allows by default): the OpenAI and
      // Anthropic SDKs in a browser send their own (x-stainless-*, anthropic-dangerous-...).
      // Our own response headers are readable by the page.
      exposeHeaders: ["Retry-After", "X-Mlx-Closed-Early", "X-Request-Id"],
      maxAge: 600,
    }),
  );

  // 3b. Pages on other sites, unless allowed above: a browser sends their "simple" POSTs
  // (text/plain, which our JSON routes read) without a preflight, so any page the user opens
  // could otherwise pull, copy or load models on a server without an API key. API clients
  // send no Origin; our own pages send theirs, which is this server's.
  app.use("*", async (c, next) => {
    const origin = c.req.header("origin");
    if (origin === undefined || originAllowed(origin, c.req.header("host"))) return next();
    throw originNotAllowed(origin);
  });

  // 4. The API key, on every route but the probes (/health, /ready) and the browser pages,
  // compared in constant time.
  if (s.config.apiKey) {
    // Trimmed as a client's key is: one from a CRLF .env file ("k\r") matched no request at all.
    // A key of spaces alone is then "", which no request's key (never empty) matches.
    const expected = digest(s.config.apiKey.trim());
    app.use("*", async (c, next) => {
      if (keylessProbes.has(c.req.path) || c.req.method === "OPTIONS" || isPublicPage(c.req.path)) return next();
      // Bearer (OpenAI, Ollama) or x-api-key (Anthropic's clients).
      const bearer = /^Bearer\s+(.+)$/i.exec(c.req.header("authorization") ?? "")?.[1];
      const key = (bearer ?? c.req.header("x-api-key"))?.trim();
      if (!key || !timingSafeEqual(digest(key), expected)) throw unauthorized();
      return next();
    });
  }

  // 4b. A body is read as sent: one compressed would be read as JSON, and fail as such.
  app.use("*", async (c, next) => {
    const coding = c.req.header("content-encoding")?.trim().toLowerCase();
    if (c.req.raw.body && coding && coding !== "identity") throw unsupportedContentEncoding(coding);
    return next();
  });

  // 5. The body must arrive within the request timeout: a client that stops sending part way
  // gets a 504 instead of holding its request open forever (the server has no idle cut-off);
  // one still sending when a stopping server's grace ends gets its 503, as generations do.
  app.use("*", async (c, next) => {
    if (!c.req.raw.body) return next();
    const body = bodyWithin(c.req.raw.body, s.config.requestTimeoutMs, s.shutdown.signal);
    c.req.raw = new Request(c.req.raw, { body: body.stream, duplex: "half" } as RequestInit);
    try {
      await next();
    } finally {
      body.stopClock(); // read by now, or never
    }
  });

  // 6. The body limit.
  app.use(
    "*",
    bodyLimit({
      maxSize: s.config.maxBodyBytes,
      onError: (c) =>
        errorResponse(
          c,
          new ApiError(
            413,
            `the request body is larger than ${s.config.maxBodyBytes} bytes`,
            "invalid_request_error",
            null,
            "request_too_large",
          ),
        ),
    }),
  );

  // 7. The routes (the web pages first: a browser's GET / is the chat, anyone else's is Ollama's).
  app.route("/", webRoutes(s));
  app.route("/", opsRoutes(s));
  app.route("/", openaiRoutes(s));
  app.route("/", ollamaRoutes(s));
  app.route("/", anthropicRoutes(s));
  app.route("/", responsesRoutes(s));
  app.route("/", embeddingsRoutes(s));
  app.route("/", ollamaModelRoutes(s));
  app.route("/", tokenRoutes(s));
  return app;
}

/** A Host header naming this machine: a loopback address or localhost (and its subdomains), or its own name. */
function isLocalHost(host: string): boolean {
  const name = hostName(host);
  return name !== undefined && (isLoopback(name) || name.endsWith(".localhost") || name === hostname().toLowerCase());
}

/** A Host header's name, lower case and without its port (undefined when it is not a host). */
function hostName(host: string): string | undefined {
  try {
    return new URL(`http://${host}`).hostname;
  } catch {
    return undefined;
  }
}

const corsAllows = (allowed: string[], origin: string) => allowed.includes("*") || allowed.includes(origin);

/** Desktop apps' and editors' pages: Electron's app:, Tauri's, VS Code's webviews. */
const LOCAL_APP_SCHEMES = new Set(["app:", "file:", "tauri:", "vscode-webview:", "vscode-file:"]);

/**
 * Pages of this machine, as Ollama allows them by default: this server as the request reached
 * it (its Host header), a page served from loopback at any port (a local app in development),
 * and desktop apps' and editors' pages.
 */
function isLocalOrigin(origin: string, host: string | undefined): boolean {
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return false; // "null" (a sandboxed page), or not a URL
  }
  if (LOCAL_APP_SCHEMES.has(url.protocol)) return true;
  if (url.protocol !== "http:" && url.protocol !== "https:") return false;
  return url.host === host?.toLowerCase() || isLoopback(url.hostname);
}

/**
 * A request body that fails with the request's TimeoutError (a 504) when it has not all arrived
 * `ms` after the request began, or with the server stopping's 503 when `shutdown` aborts first;
 * with a ClientGoneError (a 499) when its client goes away before sending it all.
 */
function bodyWithin(body: ReadableStream<Uint8Array>, ms: number, shutdown: AbortSignal) {
  const reader = body.getReader();
  let late = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let onShutdown: (() => void) | undefined;
  const stopClock = () => {
    clearTimeout(timer);
    if (onShutdown) shutdown.removeEventListener("abort", onShutdown);
  };
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      const fail = (error: Error) => {
        late = true;
        stopClock();
        controller.error(error);
        reader.cancel().catch(() => {});
      };
      timer = setTimeout(() => fail(requestTimeout()), ms);
      onShutdown = () => fail(serverStopping());
      if (shutdown.aborted) onShutdown();
      else shutdown.addEventListener("abort", onShutdown, { once: true });
    },
    async pull(controller) {
      let part: Awaited<ReturnType<typeof reader.read>>;
      try {
        part = await reader.read();
      } catch {
        // The upload broke off: its connection closed (a 499), not the server failing (a 500 logged).
        if (late) return;
        stopClock();
        throw new ClientGoneError("the client went away while sending its request");
      }
      const { done, value } = part;
      if (late) return;
      if (done) {
        stopClock();
        controller.close();
      } else controller.enqueue(value);
    },
    cancel(reason) {
      stopClock();
      return reader.cancel(reason);
    },
  });
  return { stream, stopClock };
}

export interface RunningServer {
  url: string;
  port: number;
  state: ServerState;
  /**
   * Stops taking connections; requests in flight may finish for up to `graceMs`, then are cut.
   * Then unloads the models and waits for the prompt cache files they leave.
   */
  stop(graceMs?: number): Promise<void>;
}

/** How long generations ended by a shutdown have to write their last message before connections close. */
const SHUTDOWN_SETTLE_MS = 2000;

/** The most a request may send before the connection is cut (what is over maxBodyBytes is discarded, not kept). */
const UPLOAD_CAP = 1024 * 1024 * 1024;

/** How long a kept-alive connection may sit idle between requests (Bun allows at most 255). */
const IDLE_CONNECTION_SECONDS = 60;

/**
 * `response`, calling `sent` once a streamed body (SSE, NDJSON: an answer written as it is
 * generated) has all gone out; at once for any other, which is written out now.
 */
function onceSent(response: Response, sent: () => void): Response {
  const type = response.headers.get("content-type") ?? "";
  if (!response.body || !/^(text\/event-stream|application\/x-ndjson)/.test(type)) {
    sent();
    return response;
  }
  return new Response(response.body.pipeThrough(new TransformStream({ flush: sent })), response);
}

/**
 * `request` with an absolute URL, this server's where it has none: Bun gives an HTTP/1.0 request
 * without a Host header (a load balancer's health check) its bare path, which the router misreads
 * ("GET /health" was a 404 for a route "h"). The copy keeps the body and the client's abort signal.
 */
function withAbsoluteUrl(request: Request, server: URL): Request {
  return request.url.startsWith("/") ? new Request(new URL(request.url, server).href, request) : request;
}

/**
 * A HEAD request as its GET: Bun then sends the headers of the whole answer, its Content-Length
 * among them, without the body (and cancels a stream's). Hono answers HEAD itself with an empty
 * body, which Bun sent as "Content-Length: 0", for a page or a model list as for nothing.
 */
function headAsGet(request: Request): Request {
  return request.method === "HEAD" ? new Request(request, { method: "GET" }) : request;
}

/** Why the server cannot listen there, in words that name the address (Bun's errno alone names neither). */
const LISTEN_FAILURES: Record<string, (port: number) => string> = {
  EADDRINUSE: (port) => `port ${port} is in use (--port 0 picks a free one)`,
  EADDRNOTAVAIL: () => "no network interface of this machine has that address",
  EACCES: (port) => `port ${port} needs more privileges`,
  EINVAL: () => "not an address or host name this machine can listen on",
  ENOTFOUND: () => "no such host (give an address or a host name, without scheme or port)",
};

/** The server `serve` starts on `hostname`:`port`, or an error that says which address failed and why. */
function listening<T>(hostname: string, port: number, serve: () => T): T {
  try {
    return serve();
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code ?? "";
    const reason = LISTEN_FAILURES[code]?.(port) ?? (error as Error).message;
    throw new Error(`cannot listen on ${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}: ${reason}`);
  }
}

/** Starts listening (127.0.0.1 by default); with `defaultModel`, loads it in the background. */
export function startServer(o: ServerOptions = {}): RunningServer {
  const state = createState(o);
  const app = createApp(state);
  const idleSeconds = o.idleConnectionSeconds ?? IDLE_CONNECTION_SECONDS;
  // An IPv6 address as URLs write it (--host [::1]) is that address: Bun listens on it either way,
  // but its brackets would be doubled in the URL said (http://[[::1]]:11435), which nothing opens.
  const hostname = (o.host ?? DEFAULT_HOST).replace(/^\[([0-9a-f:.]+)\]$/i, "$1");
  const port = o.port ?? 11435;
  const server = listening(hostname, port, () =>
    Bun.serve({
      hostname,
      port,
      // Generations can be long and silent (non-streaming, or queued): no idle cut-off while a
      // request is answered (the per-request timeout bounds it); between requests, a connection
      // kept alive and idle is closed after a while, so idle sockets cannot pile up without bound.
      idleTimeout: idleSeconds,
      fetch: async (request, bun) => {
        bun.timeout(request, 0);
        return onceSent(await app.fetch(headAsGet(withAbsoluteUrl(request, bun.url)), bun), () =>
          bun.timeout(request, idleSeconds),
        );
      },
      // Hono's body limit answers an oversized body with our JSON 413 as soon as it knows (from
      // Content-Length, or counting a chunked body), and Bun discards the rest of the upload
      // without buffering it, so a client still sending reads the answer. Bun's own cap must sit
      // far above ours: past it, Bun cuts the request with an empty 413.
      maxRequestBodySize: Math.max(UPLOAD_CAP, state.config.maxBodyBytes * 2),
    }),
  );
  if (o.defaultModel && !remoteModel(o.defaultModel)) {
    // Preloaded, and kept as the registry keeps its pinned model (a remote model has nothing to load);
    // then the adapters served on it, so that one that does not fit it is in the log at start,
    // not only in the 500s of its requests.
    const { models } = state;
    models
      .preload(o.defaultModel)
      .then(() =>
        Promise.all([...(o.adapters?.keys() ?? [])].map((name) => models.preload(name).catch(state.logError))),
      )
      .catch((error) => state.logError(error));
  }
  const host = server.hostname?.includes(":") ? `[${server.hostname}]` : server.hostname;
  return {
    url: `http://${host}:${server.port}`,
    port: server.port!,
    state,
    stop: async (graceMs = 0) => {
      state.stopping = true;
      const drained = server.stop(false);
      if (graceMs > 0) await Promise.race([drained, Bun.sleep(graceMs)]);
      // Generations (and embeddings) still running end with their API's last error message (a
      // 503) before the connections close, so that no client reads a cut stream or an empty reply.
      state.shutdown.abort();
      if (state.inflight.list.length > 0 || server.pendingRequests > 0)
        await Promise.race([drained, Bun.sleep(SHUTDOWN_SETTLE_MS)]);
      await server.stop(true);
      state.models.dispose();
      await state.promptCacheWrites();
    },
  };
}
