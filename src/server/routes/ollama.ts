// Ollama-compatible routes: /api/chat and /api/generate (NDJSON streams or one object),
// /api/tags, /api/ps, /api/show (from the model's files, without loading it), /api/version.
import { createHash } from "node:crypto";
import { readdirSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { Hono, type Context } from "hono";
import {
  nanos,
  ollamaDefaults,
  parseOllamaChat,
  parseOllamaGenerate,
  parseOllamaShow,
  type OllamaRequest,
} from "../../api/ollama";
import { sampledTokens, type GenerationEvent, type TokenLogprob } from "../../engine/scheduler";
import { ApiError, errorBody, notFound } from "../errors";
import {
  chatLogprobs,
  holdModel,
  httpRequestBounds,
  aliasNamed,
  modelSamplingDefaults,
  servedContextLength,
  startGeneration,
  type Generation,
} from "../generation";
import { closedEarly, closedEarlyHeaders, collectGeneration, generationStream } from "../respond";
import { ToolCallStream, type ToolCall } from "../../engine/tools";
import { thinkingTemplate } from "../../engine/reasoning";
import { knownName, withoutLatestTag, type LoadedEntry } from "../model-registry";
import { listedAliases, locateModel, missingModelError, storedByPath } from "../../store/resolve";
import type { IndexEntry } from "../../store/model-index";
import { readJson } from "../../api/validate";
import { ollamaParameters, ollamaParameterText, type SamplingDefaults } from "../../models/generation-config";
import { writeModelfile } from "../../store/modelfile";
import { type ServerState, serverStartDate } from "../state";
import { remoteModelConfigs, remoteModelNames } from "../../providers";
import type { RemoteModelConfig } from "../../providers/config";
import { formatCount } from "../../format";
import type { ModelConfig } from "../../models/config";
import { loadAliases, type ModelAlias } from "../../store/aliases";
import { ggufParameterCount, readGGUFHeader, type GGUFHeader } from "../../models/gguf-header";
import { readDirectoryConfig, withModelErrors } from "../../models/load";
import { ggufPoolingKey, isSentenceTransformersModel } from "../../models/pooling";
import { Tokenizer } from "../../tokenizer/tokenizer";
import { fimTokens } from "../../tokenizer/fim";
import { wholeModelBytes } from "../../models/layout";
import { computesOnCpu } from "../../engine/device";

type Kind = "chat" | "generate";

/**
 * The Ollama release whose API these routes answer as, for /api/version: clients compare it with
 * Ollama's releases before they use a feature (VS Code's Copilot refuses anything before 0.6.4),
 * so mlx's own version number (given beside it) would only turn them away.
 */
const OLLAMA_API_VERSION = "0.12.0";

export function ollamaRoutes(s: ServerState): Hono {
  const r = new Hono();
  r.get("/", (c) => c.text("mlx is running"));
  r.get("/api/version", (c) => c.json({ version: OLLAMA_API_VERSION, mlx_version: s.config.version }));
  r.post("/api/chat", async (c) => generate(s, c, "chat", parseOllamaChat(await readJson(c.req))));
  r.post("/api/generate", async (c) => generate(s, c, "generate", parseOllamaGenerate(await readJson(c.req))));

  r.get("/api/tags", async (c) => c.json({ models: await listedModels(s) }));

  r.get("/api/ps", async (c) => {
    s.models.forgetRemoved();
    // A stored model reads as /api/tags lists it, whatever name it was loaded by: the same digest
    // and quantization's name.
    const byPath = storedByPath(await s.models.stored());
    // Each name it was asked by (aliases of the same weights share a loaded model) with the digest
    // and details /api/tags gives that name, and the context requests by that name get.
    // A models.toml broken meanwhile: what is loaded is still listed (so that mlx stop, ollama stop
    // can unload it), as the files read it.
    const listed = new Map((await listedModels(s).catch(() => [])).map((m) => [m.name, m]));
    return c.json({
      models: s.models.loaded.flatMap((e) =>
        e.names.map((name) => {
          const stored = byPath.get(e.path);
          // "m:latest" reads as /api/tags lists "m".
          const tag = listed.get(name) ?? listed.get(withoutLatestTag(name) ?? name);
          return {
            name,
            model: name,
            size: wholeModelBytes(e.lm),
            digest: tag?.digest ?? (stored ? storedDigest(stored) : digest(e.path)),
            details: tag?.details ?? details(e, stored),
            // Ollama writes a far-future time for a model kept forever; for one in use (its clock
            // not started), when it would unload were it idle from now, as Ollama's /api/ps does.
            expires_at: (
              e.expiresAt ??
              (e.keepAliveMs === Infinity
                ? new Date("2318-01-01T00:00:00Z")
                : new Date(Date.now() + (e.active > 0 ? e.keepAliveMs : 0)))
            ).toISOString(),
            // The bytes in GPU memory, from which `ollama ps` tells "100% GPU" from "100% CPU": none
            // where MLX computes on the CPU (the mlx-cpu backend); all of it on a GPU (Apple's unified memory included).
            size_vram: computesOnCpu() ? 0 : wholeModelBytes(e.lm),
            // What requests to that name get: a made model's num_ctx, not the files' context.
            context_length: servedContextLength(name, e.lm),
          };
        }),
      ),
    });
  });

  r.post("/api/show", async (c) => {
    const { model, verbose } = parseOllamaShow(await readJson(c.req));
    // A remote alias, which /api/tags lists, is shown as Ollama shows a cloud model: where its
    // answers come from, no files. Clients ask this of every listed model (for its capabilities)
    // and drop one it refuses.
    const remote = remoteName(model);
    if (remote !== undefined)
      return c.json(showRemoteModel(remoteModelConfigs().find((r) => r.name === remote)!, serverStartDate(s)));
    // Read from the model's files: loading its weights only to describe it would take the place
    // of a loaded model (or wait until one is idle), and clients ask this of every model they list.
    const path = await modelFiles(s, model);
    const defaults = modelSamplingDefaults(path, model);
    const stored = storedByPath(await s.models.stored()).get(path);
    const adapter = s.models.adapterDir(model);
    const alias = loadAliases().models.get(aliasNamed(model));
    const shown = showModel(path, stored, defaults, verbose, adapter, alias);
    // A base plus an adapter, as Ollama shows a model made with ADAPTER; an alias (a model made FROM
    // another, a path), its source, as Ollama shows a model made FROM another: as /api/tags lists each.
    if (adapter !== undefined) shown.details.parent_model = s.models.adapterBase(model) ?? "";
    else if (alias !== undefined && stored?.name !== alias.name) shown.details.parent_model = alias.source;
    return c.json(shown);
  });

  // Known Ollama routes this server does not implement: a clear 501 rather than a 404.
  for (const path of ["/api/push"]) {
    r.all(path, () => {
      throw new ApiError(
        501,
        `${path} is not implemented by this server (use the mlx CLI: pull, convert, ...)`,
        "invalid_request_error",
        null,
        "not_implemented",
      );
    });
  }
  // Where Ollama's CLI and ollama-python's create_blob upload a local file (after a HEAD, which
  // finds none here: a 404) for /api/create to name by digest: this server keeps no uploads, so
  // the upload is refused saying what to give instead (it was a bare "no route").
  r.post("/api/blobs/:digest", () => {
    throw new ApiError(
      501,
      "/api/blobs is not implemented by this server, which keeps no uploaded files: create a model 'from' a stored model, an alias or a path on the server's disk (or run mlx create -f Modelfile there)",
      "invalid_request_error",
      null,
      "not_implemented",
    );
  });
  return r;
}

/** Calls as Ollama writes them: arguments as an object, no id needed. */
const ollamaToolCalls = (calls: ToolCall[]) =>
  calls.map((c, index) => ({ id: c.id, function: { index, name: c.name, arguments: c.arguments } }));

const digest = (s: string) => createHash("sha256").update(s).digest("hex");

/** The bytes of the files in `dir` (0 where it cannot be read: listing never fails for it). */
function directoryBytes(dir: string): number {
  try {
    return readdirSync(dir).reduce((n, name) => n + statSync(join(dir, name)).size, 0);
  } catch {
    return 0;
  }
}

/** A stored model's digest: of its files' blobs, so that two names of the same files share it. */
const storedDigest = (m: IndexEntry) => digest(Object.keys(m.blobs).sort().join(","));

/**
 * A loaded model's details; the family and the quantization's name are the store's (a GGUF's
 * "gemma3" and "Q4_K_M") where it is stored, as /api/tags gives them unloaded.
 */
function details(e: LoadedEntry, stored?: IndexEntry) {
  const q = e.lm.config.quantization;
  return ollamaDetails(
    e.lm.format,
    stored?.architecture ?? e.lm.config.modelType,
    parameterSize(e.path),
    stored?.quantization ?? (q ? `${q.bits}-bit` : ""),
  );
}

/** A model's `details` as Ollama writes them (empty strings where unknown). */
function ollamaDetails(
  format: string,
  family: string | undefined,
  parameterSize: string,
  quantization: string | undefined,
) {
  return {
    parent_model: "",
    format,
    family: family ?? "",
    families: family ? [family] : null,
    parameter_size: parameterSize,
    quantization_level: quantization ?? "",
  };
}

function parameterCount(c: ModelConfig): number {
  const attention = c.hiddenSize * c.headDim * (2 * c.numAttentionHeads + 2 * c.numKeyValueHeads);
  const mlp = 3 * c.hiddenSize * c.intermediateSize;
  const embed = c.vocabSize * c.hiddenSize * (c.tieWordEmbeddings ? 1 : 2);
  return c.numHiddenLayers * (attention + mlp) + embed;
}

/** Parameter counts read from models' files, by path and modification time: clients list models often. */
/** What a model's files say of it that listings show, by path, read again when they change. */
const listedFacts = new Map<string, { mtimeMs: number; count: number; family: string; quantization: string }>();

/** A model's parameter count, family and quantization as /api/show gives them, from its files (loaded or not). */
function filesFacts(path: string) {
  const stat = statSync(path);
  let known = listedFacts.get(path);
  if (known?.mtimeMs !== stat.mtimeMs) {
    if (stat.isDirectory()) {
      const config = readDirectoryConfig(path);
      const q = config.quantization;
      known = {
        mtimeMs: stat.mtimeMs,
        count: parameterCount(config),
        family: config.modelType,
        quantization: q ? `${q.bits}-bit` : "",
      };
    } else {
      const { metadata, tensors } = readGGUFHeader(path);
      const family = metadata.get("general.architecture");
      known = {
        mtimeMs: stat.mtimeMs,
        count: ggufParameterCount(tensors),
        family: typeof family === "string" ? family : "",
        quantization: "",
      };
    }
    listedFacts.set(path, known);
  }
  return known;
}

/**
 * A model's parameter size as /api/show gives it, from its files (a GGUF's tensors, a directory's
 * config), loaded or not; "" where they cannot be read (listing never fails for it).
 */
function parameterSize(path: string): string {
  try {
    return formatCount(filesFacts(path).count);
  } catch {
    return "";
  }
}

/** The details of the model files at `path` (no stored model's), as /api/show gives them; what cannot be read is left empty. */
function filesDetails(path: string) {
  const format = path.endsWith(".gguf") ? "gguf" : "mlx";
  try {
    const { count, family, quantization } = filesFacts(path);
    return ollamaDetails(format, family || undefined, formatCount(count), quantization);
  } catch {
    return ollamaDetails(format, undefined, "", undefined);
  }
}

/** What /api/show tells of a model that its files say. */
interface ModelFacts {
  format: string;
  family: string;
  parameterCount: number;
  quantization: string;
  template: string;
  /** Made for embeddings: a sentence-transformers directory, or a GGUF naming its pooling. */
  embedding: boolean;
  /** Fills in the middle (its vocabulary has FIM tokens): /api/generate takes a `suffix`. */
  insert: boolean;
  modelInfo: Record<string, unknown>;
  tensors?: { name: string; type: string; shape: number[] }[];
}

/** /api/show's answer for the model at `path`, from its files (its weights are not read). */
function showModel(
  path: string,
  stored: IndexEntry | undefined,
  defaults: SamplingDefaults,
  verbose: boolean,
  adapter?: string,
  alias?: ModelAlias,
) {
  const facts = withModelErrors(path, () =>
    statSync(path).isDirectory()
      ? directoryFacts(path)
      : ggufFacts(readGGUFHeader(path, { stringArrays: [GGUF_VOCABULARY] })),
  );
  // The sampling values, stop strings, length and context its requests get when they set none, as
  // Ollama shows a Modelfile's (each stop string a line of its own, quoted as Go's %#v quotes it).
  const values = ollamaParameters(defaults, alias?.limits);
  const { system, messages = [] } = alias?.prompt ?? {};
  return {
    license: alias?.license ?? "",
    modelfile: writeModelfile({ from: path, adapter, parameters: values, system, messages, license: alias?.license }),
    parameters: values.map(([name, value]) => `${name.padEnd(30)} ${ollamaParameterText(value)}`).join("\n"),
    // The alias's system prompt (models.toml's system), as Ollama shows a Modelfile's SYSTEM.
    ...(system === undefined ? {} : { system }),
    // Its turns before every prompt (models.toml's messages), as Ollama shows a Modelfile's MESSAGEs.
    ...(messages.length === 0 ? {} : { messages: messages.map(({ role, content }) => ({ role, content })) }),
    template: facts.template,
    details: ollamaDetails(
      facts.format,
      facts.family,
      formatCount(facts.parameterCount),
      stored?.quantization ?? facts.quantization,
    ),
    model_info: facts.modelInfo,
    ...(verbose && facts.tensors ? { tensors: facts.tensors } : {}),
    // As Ollama's: an embedding model's is "embedding" alone, any other's "completion" (Ollama's
    // CLI runs a model that lists "embedding" as an embedding model, printing a vector for a
    // prompt); any model still embeds when asked. Any chat model takes tools: a template without
    // them gets the functions in its system prompt.
    capabilities: facts.embedding
      ? ["embedding"]
      : [
          "completion",
          ...(facts.template ? ["chat", "tools"] : []),
          // Ollama's name for a model that takes /api/generate's suffix.
          ...(facts.insert ? ["insert"] : []),
          ...(thinkingTemplate(facts.template).thinks ? ["thinking"] : []),
        ],
    modified_at: stored ? (stored.lastUsedAt ?? stored.createdAt) : statSync(path).mtime.toISOString(),
  };
}

/** /api/show's answer for a remote alias: no files to describe; any chat model of a provider takes tools. */
function showRemoteModel(remote: RemoteModelConfig, listedAt: Date) {
  return {
    license: "",
    modelfile: "",
    parameters: "",
    template: "",
    details: ollamaDetails("", undefined, "", undefined),
    model_info: {},
    remote_model: remote.model,
    remote_host: remote.baseUrl,
    capabilities: ["completion", "tools"],
    modified_at: listedAt.toISOString(),
  };
}

/** Where a GGUF keeps its vocabulary, read with the header for the FIM tokens it may hold. */
const GGUF_VOCABULARY = "tokenizer.ggml.tokens";

/** A GGUF's facts: its metadata is Ollama's model_info (arrays, of which only lengths are read, as null). */
function ggufFacts({ metadata, tensors, stringArrays }: GGUFHeader): ModelFacts {
  const vocabulary = new Set(stringArrays.get(GGUF_VOCABULARY));
  const text = (key: string) => {
    const value = metadata.get(key);
    return typeof value === "string" ? value : "";
  };
  const parameterCount = ggufParameterCount(tensors);
  const modelInfo: Record<string, unknown> = Object.fromEntries(
    [...metadata].map(([key, value]) => [key, typeof value === "object" ? null : value]),
  );
  modelInfo["general.parameter_count"] = parameterCount;
  return {
    format: "gguf",
    family: text("general.architecture"),
    parameterCount,
    quantization: "",
    template: text("tokenizer.chat_template"),
    embedding: metadata.has(ggufPoolingKey(metadata)),
    insert: fimTokens((token) => vocabulary.has(token)) !== undefined,
    modelInfo,
    tensors: tensors.map((t) => ({ name: t.name, type: t.type, shape: t.dims })),
  };
}

/** An MLX directory's facts, from its config.json and tokenizer files. */
function directoryFacts(dir: string): ModelFacts {
  const config = readDirectoryConfig(dir);
  const arch = config.modelType;
  const count = parameterCount(config);
  const tokenizer = Tokenizer.fromDirectory(dir);
  return {
    format: "mlx",
    family: arch,
    parameterCount: count,
    quantization: config.quantization ? `${config.quantization.bits}-bit` : "",
    template: tokenizer.chatTemplate ?? "",
    embedding: isSentenceTransformersModel(dir),
    insert: fimTokens((token) => tokenizer.isAddedToken(token)) !== undefined,
    modelInfo: {
      "general.architecture": arch,
      "general.parameter_count": count,
      [`${arch}.context_length`]: config.maxPositionEmbeddings,
      [`${arch}.embedding_length`]: config.hiddenSize,
      [`${arch}.block_count`]: config.numHiddenLayers,
      [`${arch}.attention.head_count`]: config.numAttentionHeads,
      [`${arch}.attention.head_count_kv`]: config.numKeyValueHeads,
      [`${arch}.vocab_size`]: config.vocabSize,
    },
  };
}

/**
 * Where a model's files are, found without using it (to describe or unload it): opening a stored
 * model marks it in use by this server (so `mlx rm` refuses it) and pulls one not stored yet. As
 * Ollama, these know the models pulled; "m:latest" is "m" where no model has that name.
 */
async function modelFiles(s: ServerState, name: string): Promise<string> {
  const loaded = s.models.find(name);
  if (loaded) return loaded.path;
  // A name `serve --adapter` added is an adapter on a model the server names itself.
  if (s.models.servedAdapters.has(name)) return s.models.resolve(name);
  const untagged = withoutLatestTag(name);
  const located = [name, ...(untagged === undefined ? [] : [untagged])].map((candidate) =>
    locateModel(candidate, undefined, { paths: s.models.mayBePath(candidate) }),
  );
  const found = located.find((location) => location.path !== undefined);
  if (found) return found.path!;
  const location = located[0]!;
  if (location.kind === "missing") throw await missingModelError(location);
  throw notFound(`model '${name}' is not in the store yet: pull it first (POST /api/pull)`, "model_not_found");
}

type GenerationDone = Extract<GenerationEvent, { type: "done" }>;

/**
 * The answer's ids in /api/generate's `context`: as Ollama tokenizes the text it answered, one a
 * stop string ended holds the text before it, not the stop string (nor what its last token held after).
 */
function answerIds(gen: Generation, done: GenerationDone): number[] {
  if (!done.stopSequence || !gen.tokenizer) return done.tokenIds;
  const text = gen.tokenizer.decode(done.tokenIds);
  const at = text.indexOf(done.stopSequence);
  return at < 0 ? done.tokenIds : gen.tokenizer.encode(text.slice(0, at), { addSpecialTokens: false });
}

/** The remote alias a name stands for: "far:latest" (Ollama's default tag) is "far", as for a local model. */
export function remoteName(name: string): string | undefined {
  const names = remoteModelNames();
  return knownName(name, (candidate) => names.includes(candidate));
}

/** Loads a model ahead of its requests (`ollama run` asks first), kept for `keepAlive`. Milliseconds spent loading. */
async function preload(s: ServerState, c: Context, name: string, keepAlive: number | undefined): Promise<number> {
  const lease = await holdModel(s, name, { ...httpRequestBounds(s.config, c.req), keepAliveMs: keepAlive });
  lease.release();
  return lease.loadMs;
}

async function generate(s: ServerState, c: Context, kind: Kind, req: OllamaRequest): Promise<Response> {
  const started = performance.now();
  const createdAt = () => new Date().toISOString();
  const base = () => ({ model: req.model, created_at: createdAt() });
  const empty = kind === "chat" ? { message: { role: "assistant", content: "" } } : { response: "" };
  const unloaded = () => c.json({ ...base(), ...empty, done_reason: "unload", done: true });
  // Unloading what /api/ps lists by that name (mlx stop, ollama stop) reads no models.toml: the
  // operator who has just changed its settings (another entry's key), or broken it, would find the
  // model still loaded, answered "unload" or a 500.
  if (!req.prompt && !req.context?.length && req.keepAlive === 0) {
    const untagged = withoutLatestTag(req.model);
    const named = s.models.loaded.filter((e) => e.names.some((n) => n === req.model || n === untagged));
    for (const entry of named) s.models.setKeepAlive(entry, 0);
    if (named.length > 0) return unloaded();
  }
  const remote = remoteName(req.model);
  const model = remote ?? req.model;

  // No prompt: load the model (or with keep_alive 0, unload it), as Ollama does.
  if (!req.prompt && !req.context?.length) {
    if (req.keepAlive === 0) {
      const entry = s.models.find(model) ?? s.models.loaded.find((e) => e.paths.includes(model));
      if (entry) s.models.setKeepAlive(entry, 0);
      // Still loading for a request (ollama stop right after ollama run): unloaded once it is done.
      // Else an unknown model is a 404, as in Ollama; a remote one has nothing to unload.
      else if (!s.models.setLoadingKeepAlive(model, 0) && remote === undefined) await modelFiles(s, model);
      return unloaded();
    }
    // A remote model is ready as it is, with nothing to load.
    const loadMs = remote === undefined ? await preload(s, c, model, req.keepAlive) : 0;
    return c.json({
      ...base(),
      ...empty,
      done_reason: "load",
      done: true,
      total_duration: nanos(performance.now() - started),
      load_duration: nanos(loadMs),
    });
  }

  const gen = await startGeneration(s, {
    ...httpRequestBounds(s.config, c.req),
    model,
    keepAliveMs: req.keepAlive,
    prompt: req.prompt ?? { kind: "ids", ids: [] },
    prefixIds: req.context,
    sampling: req.sampling,
    defaults: ollamaDefaults,
    maxTokens: req.maxTokens,
    maxTokensParam: "options.num_predict",
    strictMaxTokens: false,
    contextBound: req.contextBound,
    stop: req.stop,
    format: req.format,
    tools: req.tools,
    thinking: req.thinking,
    logprobs: req.logprobs,
    topLogprobs: req.topLogprobs,
  });
  // Ollama's logprobs: OpenAI's chat ones, without an empty list of alternatives (Go's omitempty).
  const logprobs = (tokens: TokenLogprob[], top: TokenLogprob[][] | undefined) =>
    req.logprobs
      ? {
          logprobs: chatLogprobs(gen.tokenizer!, tokens, top).map(({ top_logprobs, ...entry }) =>
            top_logprobs.length > 0 ? { ...entry, top_logprobs } : entry,
          ),
        }
      : {};
  const piece = (text: string, calls: ToolCall[] = [], reasoning = "") => {
    const thinking = reasoning ? { thinking: reasoning } : {};
    return kind === "chat"
      ? {
          message: {
            role: "assistant",
            content: text,
            ...thinking,
            ...(calls.length > 0 ? { tool_calls: ollamaToolCalls(calls) } : {}),
          },
        }
      : { response: text, ...thinking };
  };
  const final = (done: GenerationDone, text: string, calls?: ToolCall[], reasoning?: string) => ({
    ...base(),
    ...piece(text, calls, reasoning),
    done: true,
    done_reason: done.finishReason,
    ...closedEarly(gen),
    ...(kind === "generate" ? { context: [...gen.promptIds, ...answerIds(gen, done)] } : {}),
    total_duration: nanos(performance.now() - started),
    load_duration: nanos(gen.loadMs),
    prompt_eval_count: done.usage.promptTokens,
    prompt_eval_duration: nanos(done.usage.timeToFirstTokenMs - done.usage.queueMs),
    // As Ollama's runners (and llama-server's predicted_n) count: every token sampled, the
    // end-of-sequence that ended the answer included (its decode step is in eval_duration too),
    // though neither its text nor its id (context) is the answer's.
    eval_count: sampledTokens(done.usage),
    eval_duration: nanos(done.usage.totalMs - done.usage.timeToFirstTokenMs),
  });

  if (!req.stream) {
    const result = await collectGeneration(gen);
    if (!result) return new Response(null, { status: 499 }); // the client is gone
    const { content, calls } = gen.toolFormat ? gen.toolFormat.parse(result.text) : { content: result.text, calls: [] };
    const answer = { ...final(result.done, content, calls, result.reasoning), ...logprobs(result.tokens, result.top) };
    return c.json(answer, 200, closedEarlyHeaders(gen));
  }

  const encoder = new TextEncoder();
  const line = (value: unknown) => encoder.encode(`${JSON.stringify(value)}\n`);
  const toolCalls = gen.toolFormat && new ToolCallStream(gen.toolFormat);
  const body = generationStream(
    gen,
    {
      text: (event, send) => {
        const text = toolCalls ? toolCalls.push(event.text) : event.text;
        // Tokens whose text is held back (a possible stop string or call) still carry their logprobs.
        if (text || event.reasoning || (req.logprobs && event.tokens.length > 0))
          send(
            line({ ...base(), ...piece(text, [], event.reasoning), ...logprobs(event.tokens, event.top), done: false }),
          );
      },
      done: (event, send) => {
        // Ollama sends calls in a message of their own before the final one.
        const { content, calls } = toolCalls?.end() ?? { content: "", calls: [] };
        if (content || calls.length > 0) send(line({ ...base(), ...piece(content, calls), done: false }));
        send(line(final(event, "")));
      },
      error: (e) => line(errorBody(e, "ollama")),
    },
    s,
  );
  return new Response(body, { headers: { "Content-Type": "application/x-ndjson", "Cache-Control": "no-cache" } });
}

/**
 * The models /api/tags lists: stored, loaded, serve --adapter's names, the aliases whose weights are
 * here and the remote ones; /api/ps gives each loaded name the digest and details listed here.
 */
async function listedModels(s: ServerState) {
  s.models.forgetRemoved();
  const models = [];
  const stored = await s.models.offered();
  const byPath = storedByPath(stored);
  const pathOf = new Map([...byPath].map(([path, m]) => [m, path]));
  for (const m of stored) {
    const loaded = s.models.loaded.find((e) => byPath.get(e.path) === m);
    const path = pathOf.get(m);
    models.push({
      name: m.name,
      model: m.name,
      modified_at: m.lastUsedAt ?? m.createdAt,
      size: m.totalBytes,
      digest: storedDigest(m),
      details: loaded
        ? details(loaded, m)
        : ollamaDetails(m.format, m.architecture, path ? parameterSize(path) : "", m.quantization),
    });
  }
  // An alias whose weights are here is listed as such (below), whether a request has loaded it or not
  // (by its name, or as "m:latest").
  const aliases = listedAliases(stored).filter(({ alias }) => s.models.offersAlias(alias.name));
  const aliasNames = new Set(aliases.map(({ alias }) => alias.name));
  // A loaded model is listed apart only when its files are not a stored model's ("m:latest" is "m").
  for (const e of s.models.loaded)
    if (!byPath.has(e.path))
      for (const name of e.names.filter((n) => !aliasNames.has(withoutLatestTag(n) ?? n)))
        models.push({
          name,
          model: name,
          modified_at: e.loadedAt.toISOString(),
          size: wholeModelBytes(e.lm),
          digest: digest(e.path),
          details: details(e),
        });
  // A name serve --adapter added is a model too, which Ollama clients (Open WebUI) pick from
  // this list: its base as the parent model, the adapter's files as its size.
  for (const [name, adapter] of s.models.servedAdapters)
    if (!models.some((m) => m.name === name)) {
      const base = s.models.adapterBase(name) ?? "";
      models.push({
        name,
        model: name,
        modified_at: serverStartDate(s).toISOString(),
        size: directoryBytes(adapter.dir),
        digest: digest(`${adapter.base ?? ""}\n${resolve(adapter.dir)}`),
        // The base's format, family, size and quantization where it is listed (as Ollama lists a model made FROM it).
        details: {
          ...(models.find((m) => m.name === base)?.details ?? ollamaDetails("", undefined, "", undefined)),
          parent_model: base,
        },
      });
    }
  // An alias whose weights are here (a model made by create, a path): as Ollama lists a model
  // made FROM another, the files' details with its source as the parent model (as /v1/models and mlx list list them).
  for (const { alias, path, base } of aliases) {
    const name = alias.name;
    if (!models.some((m) => m.name === name))
      models.push({
        name,
        model: name,
        modified_at: serverStartDate(s).toISOString(),
        size: base?.totalBytes ?? 0,
        digest: digest(`${path}\n${alias.definedAt}`),
        details: {
          ...(base
            ? ollamaDetails(base.format, base.architecture, parameterSize(path), base.quantization)
            : filesDetails(path)),
          parent_model: alias.source,
        },
      });
  }
  // As Ollama lists its cloud models: where the answers come from, nothing stored here.
  for (const remote of remoteModelConfigs())
    if (!models.some((m) => m.name === remote.name))
      models.push({
        name: remote.name,
        model: remote.name,
        remote_model: remote.model,
        remote_host: remote.baseUrl,
        modified_at: serverStartDate(s).toISOString(),
        size: 0,
        digest: digest(`${remote.baseUrl}\n${remote.model}`),
        details: ollamaDetails("", undefined, "", undefined),
      });
  return models;
}
