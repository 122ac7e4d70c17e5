// The Ollama API's request shapes (/api/chat, /api/generate, /api/show) and their validation,
// keep_alive durations, and the figures its final stream object carries.
import type { ConversationMessage } from "../engine/tools";
import type { FormatInput, PromptInput, SamplingInput, ThinkingRequest, ToolRequest } from "./common";
import { WHOLE_CONTEXT } from "./common";
import type { ContextBound } from "../engine/request";
import { parseToolCalls, toolRequest, toolResultName } from "./tools";
import { Fields, ValidationError, messageFields, unsupported } from "./validate";
import { parseModelfile } from "../store/modelfile";
import type { ModelRecipe } from "../store/create";
import { isJsonObject } from "../exact-json";
import { SUBSCHEMA_LISTS, SUBSCHEMA_MAPS, SUBSCHEMA_SINGLE } from "../engine/grammar/schema-keywords";

export interface OllamaRequest {
  model: string;
  /** Undefined: no prompt at all (a load or unload request). */
  prompt?: PromptInput;
  stream: boolean;
  /** Milliseconds; Infinity keeps the model loaded; undefined: the server's default. */
  keepAlive?: number;
  /** undefined: the model's num_predict, else until the context is full; Infinity: until it is full (num_predict <= 0). */
  maxTokens?: number;
  /** options.num_ctx: the context the prompt and answer share (undefined: the model's). */
  contextBound?: ContextBound;
  sampling: SamplingInput;
  stop: string[];
  /** /api/generate's context: token ids of an earlier exchange to continue. */
  context?: number[];
  format?: FormatInput;
  /** /api/chat's tools (the model decides whether to call them). */
  tools?: ToolRequest;
  thinking?: ThinkingRequest;
  /** Whether to return each answer token's logprob, and how many likeliest alternatives with it. */
  logprobs: boolean;
  topLogprobs: number;
}

/** Ollama's documented defaults, used when a request does not set an option. */
export const ollamaDefaults = {
  temperature: 0.8,
  topP: 0.9,
  topK: 40,
  minP: 0,
  repetitionPenalty: 1.1,
  repetitionContext: 64,
};

const ROLES = new Set(["system", "user", "assistant", "tool"]);

// The fields each endpoint reads, besides Ollama's option names (read as options) and OpenAI's
// names for num_predict (NUM_PREDICT_ALIASES); any other is a 400 naming it. Those refused with
// their own message (images, template, tools on /api/generate) are listed so it is the one given.
const COMMON_FIELDS = [
  "model",
  "format",
  "options",
  "stream",
  "keep_alive",
  "think",
  "logprobs",
  "top_logprobs",
  "truncate",
  "shift",
];
// tool_choice is OpenAI's, which Ollama does not read: clients built on OpenAI's shapes (the AI
// SDK's Ollama provider) send it with every request that has tools, "auto" by default.
const CHAT_FIELDS = [...COMMON_FIELDS, "messages", "tools", "tool_choice"];
const GENERATE_FIELDS = [
  ...COMMON_FIELDS,
  "prompt",
  "suffix",
  "images",
  "system",
  "template",
  "raw",
  "context",
  "tools",
];
/**
 * Ollama's options: those that shape the answer, and the runtime hints that cannot change it
 * here (memory mapping, threads, GPU layers: MLX decides; penalize_newline: Ollama itself no
 * longer reads it; f16_kv, logits_all, vocab_only, embedding_only: llama.cpp's, still in the
 * official clients' Options types, which Ollama takes and ignores). Options that would change sampling in
 * ways we do not implement (mirostat, typical_p, tfs_z) are 400s unless set to turn them off;
 * mirostat's tau and eta mean nothing without it.
 */
export const OPTIONS = [
  "num_predict",
  "seed",
  "repeat_last_n",
  "mirostat",
  "mirostat_tau",
  "mirostat_eta",
  "typical_p",
  "tfs_z",
  "penalize_newline",
  "use_mlock",
  "temperature",
  "top_p",
  "top_k",
  "min_p",
  "repeat_penalty",
  "presence_penalty",
  "frequency_penalty",
  "stop",
  "num_ctx",
  "num_batch",
  "num_gpu",
  "main_gpu",
  "use_mmap",
  "num_thread",
  "numa",
  "low_vram",
  "num_keep",
  "draft_num_predict",
  "f16_kv",
  "logits_all",
  "vocab_only",
  "embedding_only",
];

/** Options that would change sampling in ways not implemented here: each taken only at the value that turns it off. */
export const OFF_ONLY_OPTIONS: Record<string, number> = { mirostat: 0, typical_p: 1, tfs_z: 1 };

/**
 * The runtime hints that cannot change an answer here, by their type (as Ollama types them):
 * taken, then unused (mirostat's tau and eta mean nothing without it).
 */
export const IGNORED_OPTIONS = {
  // draft_num_predict: the tokens Ollama's runner drafts per step (speculative decoding, which
  // leaves the answer as it is): here --num-draft or an alias's num_draft sets it for the model.
  integer: ["num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "draft_num_predict"],
  boolean: [
    "penalize_newline",
    "use_mlock",
    "use_mmap",
    "numa",
    "low_vram",
    "f16_kv",
    "logits_all",
    "vocab_only",
    "embedding_only",
  ],
  number: ["mirostat_tau", "mirostat_eta"],
} as const;

/**
 * OpenAI's names for num_predict, sent beside `options` by the AI SDK's Ollama provider (its chat
 * model sends maxOutputTokens as max_output_tokens, its completion model as max_tokens). Ollama
 * ignores them, so such a client's limit does nothing there, yet its requests are answered: read
 * here as num_predict, which wins when also sent (in `options` or beside it).
 */
const NUM_PREDICT_ALIASES = ["max_output_tokens", "max_tokens"];

/** Options gathered from `options` and beside it, each named in errors where the request sent it. */
class GatheredOptions extends Fields {
  constructor(
    body: Record<string, unknown>,
    /** The field each option gathered from beside `options` was sent as. */
    readonly sentAs: ReadonlyMap<string, string>,
  ) {
    super(body, "options");
  }
  override name(field: string): string {
    return this.sentAs.get(field) ?? super.name(field);
  }
}

/**
 * `options`, and Ollama's option names sent beside it (the AI SDK's Ollama provider sends its
 * temperature, top_p, seed and stop so, as OpenAI's API has them): Ollama ignores those, which
 * clients then take for working settings, so they are honoured here as options. A value in
 * `options` wins over the same one beside it.
 */
function requestOptions(f: Fields): Fields {
  const nested = f.object("options");
  const sentAs = new Map(OPTIONS.filter((name) => f.has(name) && !nested?.has(name)).map((name) => [name, name]));
  const alias = NUM_PREDICT_ALIASES.find((name) => f.has(name));
  if (alias && !nested?.has("num_predict") && !sentAs.has("num_predict")) sentAs.set("num_predict", alias);
  const beside = Object.fromEntries([...sentAs].map(([option, field]) => [option, f.raw(field)]));
  return new GatheredOptions({ ...nested?.body, ...beside }, sentAs);
}

function options(f: Fields): Pick<OllamaRequest, "maxTokens" | "contextBound" | "sampling" | "stop"> {
  const o = requestOptions(f);
  o.onlyKnown(OPTIONS);
  const numPredict = o.integer("num_predict", { min: -2 });
  const seed = o.integer("seed", { min: -1, max: Number.MAX_SAFE_INTEGER });
  const repeatLastN = o.integer("repeat_last_n", { min: -1 });
  // Each refused saying how to turn it off (Open WebUI's advanced parameters offer them).
  const offOnly = (name: string, value: number | undefined) => {
    const off = OFF_ONLY_OPTIONS[name]!;
    if (value !== undefined && value !== off)
      throw new ValidationError(
        `'${o.name(name)}' is not supported by this server (got ${value}), which samples with temperature, top_k, top_p and min_p: leave it out or set it to ${off} (off)`,
        o.name(name),
        "unsupported_parameter",
      );
  };
  offOnly("mirostat", o.number("mirostat", { min: 0, max: 2 }));
  // 1 is the value at which typical and tail-free sampling keep every token.
  for (const name of ["typical_p", "tfs_z"]) offOnly(name, o.number(name, { min: 0 }));
  // The context a request fills, as Ollama's num_ctx: a longer prompt is a 400 (as Ollama's
  // `truncate: false`; its silent default cuts the prompt's start, system prompt included), and
  // the answer ends ("length") where the context is full. Above the model's own, the model's holds.
  const numCtx = o.integer("num_ctx", { min: 1 });
  // Hints to Ollama's runner that this engine has no use for: typed as Ollama types them, then unused.
  for (const name of IGNORED_OPTIONS.integer) o.integer(name);
  for (const name of IGNORED_OPTIONS.boolean) o.boolean(name);
  for (const name of IGNORED_OPTIONS.number) o.number(name);
  // As llama.cpp's sampler (and so Ollama) takes them: top_p 0 keeps only the most likely token
  // (the first one's probability already reaches it), a top_k of 0 or below keeps every token.
  const topP = o.number("top_p", { min: 0, max: 1 });
  const topK = o.integer("top_k");
  return {
    contextBound: numCtx === undefined ? undefined : { tokens: numCtx, param: o.name("num_ctx") },
    // As Ollama's runner, which limits only a positive count: 0, -1 and -2 all run until a stop or
    // the context's end, whatever num_predict the model has.
    maxTokens: numPredict === undefined ? undefined : numPredict <= 0 ? Infinity : numPredict,
    sampling: {
      temperature: o.number("temperature", { min: 0 }),
      topP: topP === 0 ? undefined : topP,
      topK: topP === 0 ? 1 : topK !== undefined && topK < 0 ? 0 : topK,
      minP: o.number("min_p", { min: 0, max: 1 }),
      repetitionPenalty: o.number("repeat_penalty", { above: 0 }),
      // -1 means the whole context; 0 turns the penalty off.
      repetitionContext: repeatLastN === -1 ? WHOLE_CONTEXT : repeatLastN,
      seed: seed === undefined || seed < 0 ? undefined : seed,
      // -1, Ollama's random seed, replaces a seed its model has.
      randomSeed: seed !== undefined && seed < 0 ? true : undefined,
      presencePenalty: o.number("presence_penalty", { min: -2, max: 2 }),
      frequencyPenalty: o.number("frequency_penalty", { min: -2, max: 2 }),
      // As Ollama (and llama.cpp) count them: over the last repeat_last_n tokens, prompt included.
      penaltiesInWindow: true,
    },
    stop: o.stop("stop"),
  };
}

function common(f: Fields): Omit<OllamaRequest, "prompt" | "context"> {
  const model = f.string("model", { required: true, nonEmpty: true })!;
  const format = ollamaFormat(f.raw("format"));
  // What Ollama does by default past the context, cutting the prompt's start (truncate) or the
  // answer's context (shift), this server does not: a prompt over it is a 400, an answer ends
  // ("length") where it is full. So only their "off" forms are taken.
  for (const name of ["truncate", "shift"]) if (f.boolean(name)) throw unsupported(name, `'${name}' true`);
  const logprobs = f.boolean("logprobs") ?? false;
  const topLogprobs = f.integer("top_logprobs", { min: 0, max: 20 }) ?? 0;
  if (topLogprobs > 0 && !logprobs)
    throw new ValidationError("'top_logprobs' needs 'logprobs' set to true", "top_logprobs");
  return {
    model,
    stream: f.boolean("stream") ?? true,
    keepAlive: keepAlive(f),
    format,
    thinking: think(f),
    logprobs,
    topLogprobs,
    ...options(f),
  };
}

/**
 * `think`: true or false, or an effort ("low", "medium", "high": thinking on, as hard as gpt-oss's
 * template takes it; Ollama's newer "max" is its "high", as Ollama maps it for gpt-oss).
 */
function think(f: Fields): ThinkingRequest | undefined {
  const value = f.raw("think");
  if (value === undefined || value === null) return undefined;
  if (typeof value === "boolean") return { enabled: value, param: "think" };
  if (value === "low" || value === "medium" || value === "high" || value === "max")
    return { enabled: true, param: "think", effort: value === "max" ? "high" : value };
  throw new ValidationError(`'think' must be true, false, "low", "medium", "high" or "max"`, "think");
}

/** format: "json", or a JSON Schema object, enforced as Ollama enforces it (see closedObjects). */
function ollamaFormat(value: unknown): FormatInput | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  if (value === "json") return { format: "json", param: "format" };
  if (typeof value === "object" && !Array.isArray(value))
    return { format: { schema: closedObjects(value), strict: false }, param: "format" };
  throw new ValidationError(`'format' must be "json" or a JSON Schema object`, "format");
}

/**
 * A `format` schema as Ollama enforces it (llama.cpp's json-schema-to-grammar): an object schema
 * that names its properties allows no others unless its additionalProperties says so, and one that
 * names none is any object. Read as JSON Schema (not strictly, which would make `{"type":
 * "object"}` an empty object), each object schema with properties and no additionalProperties is
 * given additionalProperties false; else a model could go on writing keys the schema never named
 * (a small one until num_predict ran out). allOf's parts are left open: llama.cpp joins their
 * properties into one object, which parts closed apart could never be.
 */
function closedObjects(schema: object, inAllOf = false): object {
  const close = (value: unknown, allOfPart = false): unknown =>
    Array.isArray(value)
      ? value.map((item) => close(item, allOfPart))
      : isJsonObject(value)
        ? closedObjects(value, allOfPart)
        : value;
  const closed: Record<string, unknown> = { ...schema };
  for (const key of [...SUBSCHEMA_SINGLE, ...SUBSCHEMA_LISTS])
    if (key in closed) closed[key] = close(closed[key], key === "allOf");
  for (const key of SUBSCHEMA_MAPS) {
    const map = closed[key];
    if (isJsonObject(map))
      closed[key] = Object.fromEntries(Object.entries(map).map(([name, item]) => [name, close(item)]));
  }
  if (!inAllOf && isJsonObject(closed.properties) && !("additionalProperties" in closed))
    closed.additionalProperties = false;
  return closed;
}

/** Why a request's or a create's `template` (Ollama's Go template) is refused. */
const GO_TEMPLATE_REFUSED =
  "is a Go template, which this server does not render: a model answers through its own (Jinja) chat template";

/** Images, refused with the reason: every model this server runs reads text only. */
const imagesRefused = (param: string) =>
  new ValidationError(
    `'${param}' cannot be read: the models this server runs take text only`,
    param,
    "unsupported_parameter",
  );

export function parseOllamaChat(body: unknown): OllamaRequest {
  const f = Fields.of(body);
  f.onlyKnown([...CHAT_FIELDS, ...OPTIONS, ...NUM_PREDICT_ALIASES]);
  const raw = f.array("messages") ?? [];
  const messages: ConversationMessage[] = [];
  raw.forEach((item, i) => {
    const { m, at, role } = messageFields(item, i, ROLES);
    const images = m.array("images");
    if (images && images.length > 0) throw imagesRefused(`${at}.images`);
    const message: ConversationMessage = { role, content: m.string("content") ?? "" };
    if (role === "assistant") {
      message.toolCalls = parseToolCalls(m, "object");
      const thinking = m.string("thinking");
      if (thinking) message.reasoning = thinking;
    }
    if (role === "tool") {
      message.toolCallId = m.string("tool_call_id");
      message.toolName =
        m.string("tool_name") ??
        m.string("name") ??
        (message.toolCallId && toolResultName(messages, message.toolCallId));
    }
    messages.push(message);
  });
  const c = common(f);
  const tools = toolRequest(f, { withChoice: true, flatNamedChoice: true, commaJoinedTypes: true });
  // The forced call's grammar would take the place of the format's.
  if (tools && tools.choice !== "auto" && tools.choice !== "none" && c.format)
    throw new ValidationError("'format' cannot be combined with a 'tool_choice' that requires a call", "format");
  // As Ollama's templates leave it open: a last message of the assistant's (without calls) is the
  // start of its answer, which the model goes on with.
  const last = messages.at(-1);
  const continueFinal = last?.role === "assistant" && !last.toolCalls?.length;
  return {
    ...c,
    prompt: messages.length > 0 ? { kind: "chat", messages, continueFinal } : undefined,
    tools,
  };
}

export function parseOllamaGenerate(body: unknown): OllamaRequest {
  const f = Fields.of(body);
  f.onlyKnown([...GENERATE_FIELDS, ...OPTIONS, ...NUM_PREDICT_ALIASES]);
  if (f.string("template"))
    f.fail(
      "template",
      `${GO_TEMPLATE_REFUSED}; render the prompt yourself and send it with 'raw' true, or leave 'template' out`,
    );
  const images = f.array("images");
  if (images && images.length > 0) throw imagesRefused("images");
  const prompt = f.string("prompt") ?? "";
  const system = f.string("system") || undefined;
  const raw = f.boolean("raw") ?? false;
  // As Ollama refuses it: a raw prompt has no template to put a system prompt in, which was dropped unsaid.
  if (raw && system !== undefined)
    f.fail(
      "system",
      "cannot be used with 'raw' true: a raw prompt goes to the model as it is, with no template to place a system prompt in (write it into the prompt)",
    );
  // Fill-in-the-middle: the prompt is the code before the answer, the suffix the code after it,
  // both given to the model around its FIM tokens (as Ollama's code models' templates put them),
  // raw or not, with no system prompt; an empty prompt is code that starts there.
  const suffix = f.string("suffix") || undefined;
  const context = f.array("context");
  context?.forEach((t, i) => {
    if (!Number.isInteger(t) || (t as number) < 0)
      throw new ValidationError(`'context.${i}' must be a token id`, `context.${i}`);
  });
  if (f.has("tools")) throw unsupported("tools", "'tools' on /api/generate (use /api/chat)");
  const c = common(f);
  return {
    ...c,
    prompt:
      suffix !== undefined
        ? { kind: "text", text: prompt, template: false, suffix }
        : prompt
          ? { kind: "text", text: prompt, template: !raw, system }
          : undefined,
    context: context as number[] | undefined,
  };
}

/** /api/show and friends: `model` (or the older `name`); any field but those and `fields` is a 400 naming it. */
export function parseModelName(body: unknown, fields: string[] = []): string {
  const f = Fields.of(body);
  f.onlyKnown(["model", "name", ...fields]);
  const name = f.string("model") || f.string("name");
  if (!name) throw new ValidationError("'model' is required", "model");
  return name;
}

/** /api/show: the model, and `verbose` (also list its tensors). */
export function parseOllamaShow(body: unknown): { model: string; verbose: boolean } {
  return { model: parseModelName(body, ["verbose"]), verbose: Fields.of(body).boolean("verbose") ?? false };
}

/** Go's longest time.Duration, 2^63 - 1 ns (about 292 years), in ms. */
const LONGEST_DURATION_MS = 2 ** 63 / 1e6;

/**
 * keep_alive: a number of seconds or a duration string as Go's time.ParseDuration reads it
 * ("5m", "1h30m", "300ms", ".5h", "+5m"), or a number of seconds as a string ("10"); 0 unloads
 * at once, a negative value keeps the model loaded. Returns milliseconds (Infinity: keep).
 */
export function parseKeepAlive(value: unknown, param = "keep_alive"): number | undefined {
  const ms = keepAliveMs(value, param);
  // Longer than Go's durations hold (Ollama's keep-alive for "forever"), and than a Date reaches
  // (an expiry past it made /api/ps and /stats fail): forever.
  return ms !== undefined && ms > LONGEST_DURATION_MS ? Infinity : ms;
}

function keepAliveMs(value: unknown, param: string): number | undefined {
  if (value === undefined || value === null || value === "") return undefined;
  if (typeof value === "number" && Number.isFinite(value)) return value < 0 ? Infinity : value * 1000;
  if (typeof value === "string") {
    const s = value.trim();
    if (/^-?\d+(\.\d+)?$/.test(s)) return keepAliveMs(Number(s), param);
    // Go's units, micro as "us", U+00B5 or U+03BC; a number may be "1.", ".5" or "1.5".
    const number = String.raw`(?:\d+\.?\d*|\.\d+)`;
    const units = "h|ms|m|s|us|\u00b5s|\u03bcs|ns";
    const match = new RegExp(`^([-+])?((?:${number}(?:${units}))+)$`).exec(s);
    if (match) {
      const micro = 1e-3;
      const unit: Record<string, number> = {
        h: 3_600_000,
        m: 60_000,
        s: 1000,
        ms: 1,
        us: micro,
        "\u00b5s": micro,
        "\u03bcs": micro,
        ns: 1e-6,
      };
      let ms = 0;
      for (const [, n, u] of match[2]!.matchAll(new RegExp(`(${number})(${units})`, "g"))) ms += Number(n) * unit[u!]!;
      // A negative duration keeps the model loaded; "-0s" is Go's 0, which unloads it.
      return match[1] === "-" && ms > 0 ? Infinity : ms;
    }
  }
  throw new ValidationError(
    `'${param}' must be a number of seconds or a duration such as "5m", got ${JSON.stringify(value)}`,
    param,
  );
}

function keepAlive(f: Fields): number | undefined {
  return parseKeepAlive(f.raw("keep_alive"));
}

/** Nanoseconds, as Ollama reports durations. */
export const nanos = (ms: number) => Math.max(0, Math.round(ms * 1e6));

/** /api/pull: `model` (or `name`) and `stream` (default true); `insecure` is accepted (we check every file's hash anyway). */
export function parseOllamaPull(body: unknown): { model: string; stream: boolean } {
  const f = Fields.of(body);
  const model = parseModelName(body, ["stream", "insecure"]);
  f.boolean("insecure");
  return { model, stream: f.boolean("stream") ?? true };
}

/** /api/copy: `source` and `destination`, both model names. */
export function parseOllamaCopy(body: unknown): { source: string; destination: string } {
  const f = Fields.of(body);
  f.onlyKnown(["source", "destination"]);
  return {
    source: f.string("source", { required: true, nonEmpty: true })!,
    destination: f.string("destination", { required: true, nonEmpty: true })!,
  };
}

/** /api/create as Ollama (0.5 on) takes it: the model made `from` another, with these settings. */
export interface OllamaCreate {
  model: string;
  from: string;
  stream: boolean;
  system?: string;
  license?: string;
  /** By Ollama's names (temperature, top_p, repeat_penalty, ...); create checks them. */
  parameters?: Record<string, unknown>;
  messages?: { role: "user" | "assistant"; content: string }[];
  /** An adapter's directory (Ollama's `adapters` names one file's blob; here its value is a directory path). */
  adapter?: string;
}

export function parseOllamaCreate(body: unknown): OllamaCreate {
  const f = Fields.of(body);
  const model = parseModelName(body, [
    "from",
    "stream",
    "system",
    "license",
    "parameters",
    "messages",
    "adapters",
    "template",
    "quantize",
    "files",
    "modelfile",
  ]);
  // Ollama's fields this server knows but cannot honour: refused, saying why, before anything is written.
  if (f.has("template")) f.fail("template", GO_TEMPLATE_REFUSED);
  if (f.has("quantize")) f.fail("quantize", "is not supported by create here: quantize a model with mlx convert");
  if (f.has("files"))
    f.fail(
      "files",
      "names blobs uploaded to the server, which this server does not hold: give 'from' (a stored model, an alias or a path)",
    );
  // Ollama's older create sends the Modelfile's text, read as `mlx create -f` reads a file; the
  // fields beside it replace what it says (their parameters added to its).
  const text = f.string("modelfile");
  let written: Omit<ModelRecipe, "name"> | undefined;
  if (text !== undefined && text.trim() !== "")
    try {
      written = parseModelfile(text, "modelfile", { relativePaths: false });
    } catch (error) {
      throw new ValidationError((error as Error).message, "modelfile");
    }
  const from = f.string("from", { required: written === undefined, nonEmpty: true }) ?? written!.from;
  // The older client uploaded a local FROM's file as a blob and named it so.
  if (/^@?sha256[:-]/.test(from))
    f.fail(
      written && !f.has("from") ? "modelfile" : "from",
      "names an uploaded blob, which this server does not hold: give a stored model, an alias or an absolute path",
    );
  const license = f.raw("license");
  if (
    license !== undefined &&
    license !== null &&
    typeof license !== "string" &&
    !(Array.isArray(license) && license.every((l) => typeof l === "string"))
  )
    f.fail("license", "must be a string or a list of strings");
  const parameters = f.object("parameters")?.body;
  const messages = f.array("messages")?.map((item, i) => {
    const m = Fields.item(item, `messages.${i}`);
    m.onlyKnown(["role", "content"]);
    const role = m.string("role", { required: true });
    if (role !== "user" && role !== "assistant")
      m.fail("role", `must be "user" or "assistant" (a system prompt is 'system'), got ${JSON.stringify(role)}`);
    return { role: role as "user" | "assistant", content: m.string("content", { required: true })! };
  });
  const adapters = f.object("adapters");
  const adapterDirs = adapters
    ? Object.keys(adapters.body).map((key) => adapters.string(key, { required: true })!)
    : [];
  if (adapterDirs.length > 1) f.fail("adapters", "may name one adapter (its directory)");
  if (adapterDirs.some((dir) => /^sha256[:-]/.test(dir)))
    f.fail("adapters", "names an uploaded blob, which this server does not hold: give the adapter's directory path");
  return {
    model,
    from,
    stream: f.boolean("stream") ?? true,
    system: f.string("system") ?? written?.system,
    license: Array.isArray(license) ? license.join("\n") : ((license as string | undefined) ?? written?.license),
    parameters: written?.parameters || parameters ? { ...written?.parameters, ...parameters } : undefined,
    messages: messages ?? written?.messages,
    adapter: adapterDirs[0] ?? written?.adapter,
  };
}
