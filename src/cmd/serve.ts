// `mlx serve`: a local OpenAI- and Ollama-compatible HTTP API (flags only; see src/server/).
import { defineCommand } from "citty";
import pkg from "../../package.json" with { type: "json" };
import { parseKeepAlive } from "../api/ollama";
import { keylessExposure, startServer, type ServerOptions } from "../server/app";
import type { LoadSettings } from "../server/model-registry";
import { basename, resolve } from "node:path";
import { existsSync, readFileSync } from "node:fs";
import { UnsupportedError } from "../errors";
import { fail, failLog, log, setVerbose } from "./log";
import {
  distributedArgs,
  kvCacheArgs,
  kvQuantizationFlags,
  list,
  maxKvSizeFrom,
  numberFlag,
  pipelineFrom,
  positiveInteger,
  promptCacheDirFrom,
  speculationArgs,
  speculationFlags,
} from "./options";
import { openPipeline, type CacheOptions, type PipelineSpec } from "../engine/pipeline";
import type { LoadedModel } from "../models/load";
import { readAdapterDirectory } from "../models/lora";
import { aliasAdapter, aliasCacheSettings, hasAlias, loadAliases } from "../store/aliases";
import { readManifest } from "../store/manifest";
import { locateModel, missingModelError, resolveModelPath } from "../store/resolve";
import { openModel } from "./open-model";
import { DEFAULT_HOST, DEFAULT_PORT, serverAddressFromEnv } from "./server-client";
import { repeatable } from "./strict-flags";

/** --adapter NAME=DIR (or DIR, named after its directory): model names for the default model plus an adapter. */
function servedAdapters(
  specs: string[],
  base: string | undefined,
): Map<string, { base: string | undefined; dir: string }> {
  const served = new Map<string, { base: string | undefined; dir: string }>();
  // Each adapter is applied to the base's own weights: an alias's adapter would be dropped, not chained.
  const aliases = loadAliases();
  const model = base ?? aliases.defaultModel;
  // As mlx run says it: else the names are listed, and every request for one is refused.
  if (specs.length > 0 && model !== undefined && aliases.remotes.has(model))
    throw new Error(`--adapter is for a model loaded here; '${model}' is served by a remote provider (models.toml)`);
  const own = specs.length > 0 ? aliasAdapter(model) : undefined;
  if (own !== undefined)
    throw new Error(
      `model '${model}' already has an adapter in models.toml (${own}); serve its base model to serve adapters with --adapter`,
    );
  for (const spec of specs) {
    // A directory given whole may hold '=' (a sweep's runs/lr=1e-4): it is a DIR, not NAME=DIR.
    const eq = existsSync(spec) ? -1 : spec.indexOf("=");
    const given = eq >= 0 ? spec.slice(eq + 1) : spec;
    // Resolved, an empty DIR would be the working directory, and '=DIR' a directory named so.
    if (!given) throw new Error(`--adapter '${spec}': no adapter directory after '=' (NAME=DIR)`);
    const dir = resolve(given);
    const name = eq >= 0 ? spec.slice(0, eq) : basename(dir);
    if (!name || served.has(name)) throw new Error(`--adapter '${spec}': the name '${name}' is empty or given twice`);
    if (namesAModel(name, base))
      throw new Error(
        `--adapter '${spec}': '${name}' already names a model, which requests could then no longer reach: name the adapter otherwise (NAME=DIR)`,
      );
    try {
      readAdapterDirectory(dir);
    } catch (error) {
      // Found now, not as a failure of every request for the name.
      throw new Error(`--adapter '${spec}': ${(error as Error).message}`);
    }
    served.set(name, { base, dir });
  }
  return served;
}

// Values a request's Origin or Host header can equal: the server compares them as they are, so
// another form (a trailing slash, a port) would be taken and never match, every request refused.
const isOrigin = (value: string) => value === "*" || /^[a-z][a-z0-9+.-]*:\/\/[^/?#\s]+$/i.test(value);
const isHostName = (value: string) => /^([a-z0-9_-]+(\.[a-z0-9_-]+)*\.?|\[[0-9a-f:.]+\])$/i.test(value);

/** The values of a repeatable flag, each one that `valid` refuses an error saying what it should be. */
function checked(flag: string, values: string[], valid: (value: string) => boolean, should: string): string[] {
  const bad = values.find((value) => !valid(value));
  if (bad !== undefined) throw new Error(`--${flag} '${bad}' must be ${should}`);
  return values;
}

/** Whether requests naming `name` would mean another model than the base plus an adapter. */
function namesAModel(name: string, base: string | undefined): boolean {
  const aliases = loadAliases();
  if (name === (base ?? aliases.defaultModel)) return true;
  return hasAlias(aliases, name) || readManifest(name) !== undefined;
}

export default defineCommand({
  meta: { name: "serve", description: "Serve an OpenAI- and Ollama-compatible API (127.0.0.1 by default)" },
  args: {
    ...kvCacheArgs,
    ...speculationArgs,
    model: {
      type: "string",
      alias: "m",
      description: "Load this model at start, keep it loaded, and use it when a request names none",
    },
    adapter: repeatable({
      type: "string",
      description:
        "Also serve the default model plus this LoRA/DoRA adapter, as NAME=DIR or DIR (named after the directory); repeatable",
    }),
    host: {
      type: "string",
      description: `Address to bind (0.0.0.0 exposes the server to the network; default: $MLX_HOST's, else ${DEFAULT_HOST})`,
    },
    port: {
      type: "string",
      alias: "p",
      description: `Port (0: any free port; default: $MLX_HOST's, else ${DEFAULT_PORT})`,
    },
    "api-key": {
      type: "string",
      description:
        "Require 'Authorization: Bearer <key>' (or 'x-api-key: <key>') on every route but /health and /ready (default: $MLX_API_KEY)",
    },
    "model-paths": {
      type: "boolean",
      description:
        "Let requests name a model by its path on this machine (default: only when --host is loopback; --no-model-paths: never)",
    },
    cors: repeatable({ type: "string", description: "Allow this browser origin (repeatable; '*' for any)" }),
    "allowed-host": repeatable({
      type: "string",
      description:
        "On loopback, also answer requests addressed to this host name (a reverse proxy that passes its own Host on; repeatable)",
    }),
    "keep-alive": {
      type: "string",
      description: "How long an idle model stays loaded: 5m, 1h, 30s, 0, -1 (forever)",
      default: "5m",
    },
    "max-queue": { type: "string", description: "Requests allowed to wait per model before 429", default: "64" },
    "max-models": {
      type: "string",
      description: "Models held in memory at once (a request for another waits while all are busy)",
      default: "1",
    },
    "request-timeout": { type: "string", description: "Seconds a request may take, queue included", default: "600" },
    "max-body": { type: "string", description: "Largest request body in bytes", default: String(4 * 1024 * 1024) },
    "max-batch": { type: "string", description: "Sequences decoded together per step", default: "8" },
    "prefill-chunk": {
      type: "string",
      description: "Prompt tokens prefilled between two decode steps, so running streams keep flowing",
      default: "512",
    },
    "target-itl-ms": {
      type: "string",
      description:
        "Turn on the adaptive tuner: aim at this P99 inter-token latency (ms), moving the batch limit (1 to 32, or --max-batch if higher) and the prefill chunk (32 to 2048, or --prefill-chunk if higher) from where --max-batch and --prefill-chunk set them",
    },
    "prefix-cache-mb": {
      type: "string",
      description: "Memory for reusing prompt prefixes across requests, per model (0: off)",
      default: "512",
    },
    "prompt-cache-dir": {
      type: "string",
      description:
        "Keep prompt prefixes the prefix cache lets go (and all it holds at exit) in this directory, and reload them, also after a restart",
    },
    "prompt-cache-max-gb": {
      type: "string",
      description: "Bound of --prompt-cache-dir; least recently used files go first (default 10)",
    },
    "timeout-graceful-shutdown": {
      type: "string",
      description:
        "Seconds a stopping server (SIGTERM, SIGINT) lets the requests in flight finish before it cuts them (0: at once); keep it under what stops it for good: docker stop's 10, Kubernetes' 30",
      default: "25",
    },
    verbose: { type: "boolean", alias: "v", description: "Log more, with stack traces" },
    ...distributedArgs,
  },
  async run({ args }) {
    const verbose = Boolean(args.verbose);
    setVerbose(verbose);
    // A server's log is mostly read off a terminal (journald, docker logs), where info lines are
    // hidden by default: a server's are its lifecycle (a model loaded or unloaded, stopping,
    // stopped), one line each, which an operator needs there too. Nothing per request is info.
    log.level = Math.max(log.level, 3);
    // A server outlives the reader of its log (`mlx serve 2>&1 | head`, a pager quit, a log
    // collector restarted): a line it cannot write is lost, not the server and the requests it holds.
    process.stderr.off("error", failLog);
    process.stderr.on("error", () => {});
    try {
      // Where to listen: $MLX_HOST, as OLLAMA_HOST for `ollama serve` (mlx ps and stop ask there
      // too), each of its parts unless --host or --port gives it.
      const fromEnv = args.host === undefined || args.port === undefined ? serverAddressFromEnv() : undefined;
      const host = args.host ?? fromEnv?.host ?? DEFAULT_HOST;
      const portGiven = args.port ?? String(fromEnv?.port ?? DEFAULT_PORT);
      // Digits only: Number() takes "" (an unset "$PORT") as 0, any free port, and "0x10" or "1e3" as others.
      const port = /^\d+$/.test(portGiven) ? Number(portGiven) : Number.NaN;
      if (!Number.isInteger(port) || port < 0 || port > 65535)
        throw new Error(`--port must be 0-65535 (got '${portGiven}')`);
      // An empty one (an unset "$HOST") would listen on every interface, its URL saying localhost.
      if (!host.trim()) throw new Error("--host needs an address (an empty one would listen on every interface)");
      // An unset variable (--api-key "$KEY") must not start a server that any request may use; nor
      // may an MLX_API_KEY set to nothing (systemd's MLX_API_KEY=, compose's unset ${KEY}); one of
      // spaces alone would start a server that refuses every request.
      if (args["api-key"] !== undefined && !args["api-key"].trim())
        throw new Error("--api-key needs a key (an empty one would leave the server open)");
      const apiKey = args["api-key"] ?? process.env.MLX_API_KEY;
      if (apiKey !== undefined && !apiKey.trim())
        throw new Error("MLX_API_KEY is set but empty: give it a key, or unset it to serve without one");
      const graceMs = numberFlag("timeout-graceful-shutdown", args["timeout-graceful-shutdown"], { zero: true }) * 1000;
      const keepAliveMs = parseKeepAlive(args["keep-alive"], "--keep-alive") ?? 5 * 60_000;
      const kvQuantization = kvQuantizationFlags(args);
      const adapters = servedAdapters(list(args.adapter), args.model);
      const speculation = speculationFlags(args);
      const maxKvSize = args["max-kv-size"] === undefined ? undefined : maxKvSizeFrom(args, undefined);
      // A broken models.toml stops the server here, not as an error on every request later.
      const aliases = loadAliases();
      // So does a -m that names nothing (a typo), with the names it may have meant: preloaded in
      // the background, it would only be a line in the log of a server that fails every request.
      if (args.model && !aliases.remotes.has(args.model)) {
        const location = locateModel(args.model, aliases);
        if (location.kind === "missing") throw await missingModelError(location);
      }
      // The same for --draft-model: every model it drafts for would fail every request on it.
      if (speculation?.draftModel) {
        const location = locateModel(speculation.draftModel, aliases);
        if (location.kind === "missing") throw new Error(`draft model: ${(await missingModelError(location)).message}`);
      }
      const pipeline = pipelineFrom(args);
      if (pipeline) {
        if (!args.model)
          throw new Error("serve with its model split across processes needs -m: the model the ranks hold");
        // A rank after the first holds layers and serves no HTTP: it returns only to exit.
        if (pipeline.rank) await openModel(args.model, { kvQuantization, maxKvSize, pipeline });
      }
      const server = startServer({
        host,
        port,
        defaultModel: args.model,
        apiKey,
        corsOrigins: checked(
          "cors",
          list(args.cors),
          isOrigin,
          "an origin as a browser sends it (http://localhost:3000: no path, no trailing slash) or '*'",
        ),
        allowedHosts: checked(
          "allowed-host",
          list(args["allowed-host"]),
          isHostName,
          "a host name alone (proxy.internal: no scheme, port or path)",
        ),
        requestPaths: args["model-paths"],
        keepAliveMs,
        maxQueue: positiveInteger("max-queue", args["max-queue"]),
        maxLoadedModels: positiveInteger("max-models", args["max-models"]),
        requestTimeoutMs: positiveInteger("request-timeout", args["request-timeout"]) * 1000,
        maxBodyBytes: positiveInteger("max-body", args["max-body"]),
        maxBatch: positiveInteger("max-batch", args["max-batch"]),
        prefillChunk: positiveInteger("prefill-chunk", args["prefill-chunk"]),
        targetItlMs:
          args["target-itl-ms"] === undefined ? undefined : positiveInteger("target-itl-ms", args["target-itl-ms"]),
        prefixCacheBytes: numberFlag("prefix-cache-mb", args["prefix-cache-mb"], { zero: true }) * 1024 * 1024,
        kvQuantization,
        adapters,
        speculation,
        maxKvSize,
        ...promptCacheDirFrom(args),
        ...(pipeline && (await pipelineLoader(args.model!, pipeline, { kvQuantization, maxKvSize }))),
        version: pkg.version,
        logError: (error) => {
          const e = error as Error;
          process.stderr.write(`error: ${e?.message ?? String(error)}\n`);
          if (verbose && e?.stack) process.stderr.write(`${e.stack}\n`);
        },
        logWarning: (message) => log.warn(message),
        // A pull may take minutes: said even where stderr is not a terminal, else the server looks idle.
        logInfo: (message) => log.info(message),
        onLoad: (name, path, seconds, speculationSkipped) => {
          log.info(`loaded ${name} (${path}) in ${seconds.toFixed(2)} s`);
          if (speculationSkipped) log.warn(`${name} decodes without speculation: ${speculationSkipped}`);
        },
        onUnload: (name) => log.info(`unloaded ${name}`),
      });
      // Always said, even when stderr is not a terminal: scripts read the bound port from it.
      process.stderr.write(
        `mlx serve listening on ${server.url} (chat: ${server.url}/, dashboard: ${server.url}/dashboard)\n`,
      );
      const exposure = keylessExposure(server.state.config);
      if (exposure) log.warn(exposure);
      // The first signal stops taking requests and lets those in flight finish for up to graceMs
      // (as vLLM and uvicorn do, under what docker or Kubernetes waits before SIGKILL); a second
      // one (the server is stopping) cuts them. Each says why, and what becomes of the requests in
      // flight: a stop may take the whole grace.
      const stop = (cause: string, say: (line: string) => void = log.info) => {
        const again = server.state.stopping;
        const inFlight = server.state.inflight.list.length;
        const cut = again || graceMs === 0;
        const requests =
          inFlight === 0
            ? ""
            : cut
              ? `, cutting ${inFlight} request(s)`
              : `, letting ${inFlight} request(s) finish, up to ${graceMs / 1000} s (again: now)`;
        if (!again || inFlight > 0) say(`${cause}: stopping${again ? " now" : ""}${requests}`);
        void server.stop(cut ? 0 : graceMs).finally(() => {
          log.info("stopped");
          process.exit(0);
        });
      };
      for (const signal of ["SIGINT", "SIGTERM"] as const) process.on(signal, () => stop(signal));
      // A hangup (its terminal closed, `kill -HUP`) would end the server unsaid, its streams cut
      // (the runtime's default): it stops as for SIGTERM, and says why. Under nohup, which ignored
      // SIGHUP for it, a handler would undo that: the hangup stays ignored.
      if (!ignoredAtStart(1)) process.on("SIGHUP", () => stop("hangup (SIGHUP)", log.warn));
    } catch (error) {
      fail(error, verbose);
    }
  },
});

/**
 * Rank 0's loader: its part of the one model the ranks hold, which stays loaded for the
 * server's life (the other ranks hold theirs until it stops); any other model is refused.
 */
async function pipelineLoader(
  spec: string,
  pipeline: PipelineSpec,
  flags: CacheOptions,
): Promise<Pick<ServerOptions, "loadModel" | "refuseModel" | "onlyModelPath">> {
  const own = await resolveModelPath(spec);
  // The settings the other ranks open theirs with (openModel's): every rank checks them.
  const caches = aliasCacheSettings(spec, flags);
  let lm: Promise<LoadedModel> | undefined;
  // Asked before the registry unloads the split model to make room: it would unload it for nothing.
  const refuseModel = (path: string, settings: LoadSettings) => {
    if (path !== own)
      throw new UnsupportedError(`this server holds ${spec} split across processes; it cannot load another model`);
    // Another alias of it (models.toml) with other KV cache settings would need other ranks.
    const asked = { kvQuantization: settings.kvQuantization, maxKvSize: settings.maxKvSize };
    if (JSON.stringify(asked) !== JSON.stringify(caches))
      throw new UnsupportedError(
        `this server holds ${spec} split across processes with the ranks' KV cache settings; an alias asking for other kv_bits or max_kv_size cannot share it`,
      );
  };
  // The registry asks refuseModel first: what reaches here is the split model.
  const loadModel = async (path: string) => {
    lm ??= openPipeline(path, pipeline, caches).then((front) => ({ ...front!, free: () => {} }));
    return lm;
  };
  return { loadModel, refuseModel, onlyModelPath: own };
}

/**
 * Whether the process was started with signal number `signal` ignored (nohup's SIGHUP, 1), as
 * Linux's /proc/self/status says before any handler of ours; elsewhere, as if not.
 */
function ignoredAtStart(signal: number): boolean {
  try {
    const mask = /^SigIgn:\s*([0-9a-f]+)$/m.exec(readFileSync("/proc/self/status", "utf8"))?.[1];
    return mask !== undefined && ((BigInt(`0x${mask}`) >> BigInt(signal - 1)) & 1n) === 1n;
  } catch {
    return false;
  }
}
