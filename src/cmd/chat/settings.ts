// What a chat session can change with /set, and how /show describes the model.
import type { ModelPrompt } from "../../store/aliases";
import { readLayout } from "../../models/layout";
import type { LoadedModel } from "../../models/load";
import { RemoteModel } from "../../providers";
import { validateSampling, type SamplingParams } from "../../engine/sampling";
import type { SamplingInput } from "../../api/common";
import { settleSampling } from "../../engine/model-settings";
import { parseWhole, readFormat, type OutputFormat } from "../options";
import type { ThinkingRequest } from "../../engine/reasoning";
import { InvalidParameterError } from "../../errors";
import { IGNORED_OPTIONS, OFF_ONLY_OPTIONS } from "../../api/ollama";
import { ollamaParameters } from "../../models/generation-config";
import { writeModelfile } from "../../store/modelfile";
import { WHOLE_CONTEXT } from "../../api/common";

export interface ChatSettings {
  /**
   * The sampling values the user chose (the flags, /set, /load); the model's alias gives the rest,
   * also after /model (samplingFor), as ollama run applies a Modelfile's PARAMETERs under /set's.
   */
  sampling: SamplingInput;
  maxTokens: number;
  /**
   * maxTokens is the user's own (--max-tokens, /set max_tokens, /load): kept across /model.
   * Otherwise it is the model's (its num_predict), and a model /model switches to brings its own.
   */
  maxTokensChosen?: boolean;
  system?: string;
  stats: boolean;
  /** Constrained output (JSON, or a JSON Schema) for every answer, until /set format off. */
  format?: OutputFormat;
  /** Thinking on or off, and its budget, for models that think. */
  thinking?: ThinkingRequest;
  /** Leave a thinking model's reasoning unshown. */
  hideThinking?: boolean;
  /** Strings that end each answer (/set stop), in place of the model's own (its alias's stop), as Ollama's options replace a Modelfile's. */
  stop?: string[];
  /** The context the conversation fills (/set num_ctx, Ollama's num_ctx), where less than the model's. */
  numCtx?: number;
}

export const settingNames = [
  "temp",
  "top_p",
  "top_k",
  "min_p",
  "repeat_penalty",
  "max_tokens",
  "seed",
  "stop",
  "num_ctx",
  "repeat_last_n",
  "presence_penalty",
  "frequency_penalty",
  "system",
  "format",
] as const;

/** Applies `/set format json|<schema file>|off`; returns a confirmation line, or throws with what is wrong. */
export async function applyFormat(s: ChatSettings, value: string): Promise<string> {
  const spec = value.trim();
  if (!spec) throw new Error("usage: /set format json|<schema file>|off");
  if (spec === "off") {
    s.format = undefined;
    return "format off: answers are free text";
  }
  s.format = await readFormat(spec);
  return spec === "json"
    ? "format = json: answers are JSON objects"
    : `format = ${spec}: answers follow this JSON Schema`;
}

/** Ollama's names for what /set parameter sets, where /set names it otherwise. */
const ollamaParameterNames: Record<string, (typeof settingNames)[number]> = {
  temperature: "temp",
  num_predict: "max_tokens",
};

/**
 * `/set parameter <name> <value>`, as `ollama run` takes it (temperature, num_predict, top_k, ...):
 * the setting's name as /set takes it, and its value. It was "unknown setting 'parameter'".
 */
export function parameterSetting(args: string): [name: string, value: string] {
  const [, name = "", value = ""] = /^(\S*)\s*([\s\S]*)$/.exec(args) ?? [];
  if (!name) throw new Error(`usage: /set parameter <name> <value> (names: ${parameterNames.join(", ")})`);
  return [ollamaParameterNames[name] ?? name, value];
}

/** The names /set parameter takes: Ollama's, then /set's own for the same settings. */
const parameterNames = [
  ...Object.keys(ollamaParameterNames),
  ...settingNames.filter((name) => name !== "system" && name !== "format"),
];

const unknownSetting = (name: string) => new Error(`unknown setting '${name}' (settings: ${settingNames.join(", ")})`);

/**
 * `/set stop`'s strings: each word, as `ollama run` splits them, or a JSON string for one with
 * spaces or escapes ("\n\n", "User: "); none clears them (the model's own apply again).
 */
function stopStrings(value: string): string[] {
  return (value.match(/"(?:[^"\\]|\\.)*"|\S+/g) ?? []).map((word) => {
    if (!/^".*"$/.test(word)) return word;
    try {
      return JSON.parse(word) as string;
    } catch {
      throw new Error(`/set stop: ${word} is not a JSON string`);
    }
  });
}

/**
 * Applies `/set <name> <value>`; returns a confirmation line, or throws with what is wrong.
 * `wholeContext`: the max_tokens that lets an answer run until the context is full (the model's
 * context length), which a max_tokens of 0 or less asks for, as Ollama's num_predict -1 and -2 do;
 * undefined where there is none (a remote model's provider needs a limit).
 */
export function applySetting(s: ChatSettings, name: string, value: string, wholeContext?: number): string {
  if (name === "system") {
    s.system = value || undefined;
    return value ? "system prompt set" : "system prompt cleared";
  }
  if (name === "stop") {
    const stop = stopStrings(value);
    if (stop.includes("")) throw new Error("/set stop: a stop string cannot be empty");
    s.stop = stop.length > 0 ? stop : undefined;
    return s.stop ? `stop = ${JSON.stringify(s.stop)}` : "stop strings cleared (the model's own apply)";
  }
  // Ollama's runner's hints (num_gpu, num_thread, use_mmap, ...): taken by `ollama run`, of no use here.
  if (Object.values(IGNORED_OPTIONS).some((names) => (names as readonly string[]).includes(name)))
    return `${name} is a hint to Ollama's runner that does nothing here (MLX places and runs the model): not set`;
  const off = OFF_ONLY_OPTIONS[name];
  if (off !== undefined) {
    if (Number(value) === off) return `${name} = ${off} (off, as this chat always samples)`;
    throw new Error(
      `${name} is not supported here, which samples with temperature, top_k, top_p and min_p (only ${off}, off, is taken)`,
    );
  }
  // Named before the value is read: "/set foo bar" is an unknown setting, not a value to fix.
  if (!(settingNames as readonly string[]).includes(name)) throw unknownSetting(name);
  // Whole numbers as the flags read them: 1e2 or 0x10 is refused for max_tokens as for --max-tokens.
  const whole = ["top_k", "seed", "max_tokens", "num_ctx", "repeat_last_n"].includes(name);
  const n = whole ? parseWhole(value.trim()) : Number(value);
  if (value.trim() === "" || !Number.isFinite(n))
    throw new Error(`/set ${name} needs a ${whole ? "whole number" : "number"} (got '${value}')`);
  const sampling = { ...s.sampling };
  switch (name) {
    case "temp":
      sampling.temperature = n;
      break;
    case "top_p":
      sampling.topP = n;
      break;
    case "top_k":
      sampling.topK = n;
      break;
    case "min_p":
      sampling.minP = n;
      break;
    case "repeat_penalty":
      sampling.repetitionPenalty = n;
      break;
    case "seed":
      // -1: a random one over the model's own, as --seed -1.
      sampling.seed = n === -1 ? undefined : n;
      sampling.randomSeed = n === -1 || undefined;
      break;
    case "max_tokens":
      if (!Number.isInteger(n) || n < -2 || (n <= 0 && wholeContext === undefined))
        throw new Error(
          `max_tokens must be a whole number > 0${wholeContext === undefined ? "" : ", or -1 (until the context is full)"}`,
        );
      s.maxTokens = n > 0 ? n : wholeContext!;
      s.maxTokensChosen = true;
      return n > 0 ? `max_tokens = ${n}` : `max_tokens = ${s.maxTokens}: until the context is full`;
    case "num_ctx":
      if (n < 1) throw new Error("num_ctx must be a whole number > 0");
      s.numCtx = n;
      return `num_ctx = ${n}`;
    case "repeat_last_n":
      // As Ollama reads it: -1 the whole context, 0 no repetition penalty.
      if (n < -1) throw new Error("repeat_last_n must be -1 (the whole context), 0 (off) or more");
      sampling.repetitionContext = n === -1 ? WHOLE_CONTEXT : n;
      break;
    case "presence_penalty":
    case "frequency_penalty":
      if (!(n >= -2 && n <= 2)) throw new Error(`${name} must be in [-2, 2] (got ${n})`);
      sampling[name === "presence_penalty" ? "presencePenalty" : "frequencyPenalty"] = n;
      // As Ollama counts them: over the last repeat_last_n tokens, prompt included.
      sampling.penaltiesInWindow = true;
      break;
    default:
      throw unknownSetting(name);
  }
  try {
    validateSampling(settleSampling(sampling, {}, {}));
  } catch (error) {
    if (!(error instanceof InvalidParameterError)) throw error;
    // Named as /set takes it: "temperature must be >= 0 (got -1)" → "/set temp must be >= 0 (got -1)".
    throw new Error(error.message.replace(/^.*? must /, `/set ${name} must `));
  }
  s.sampling = sampling;
  return `${name} = ${n}`;
}

/** The sampling an answer from `model` runs with: the user's values, else its alias's, else greedy. */
export function samplingFor(s: ChatSettings, model: LoadedModel | RemoteModel): SamplingParams {
  return settleSampling(s.sampling, {}, model instanceof RemoteModel ? {} : (model.sampling ?? {}));
}

/** Parameters of the model, counting quantized weights by the values they stand for. */
export function parameterCount(lm: LoadedModel): number {
  let total = 0;
  for (const [name, t] of lm.weights.tensors) {
    if (name.endsWith(".scales") || name.endsWith(".biases")) continue;
    const prefix = name.replace(/\.weight$/, "");
    const quant = name.endsWith(".weight") ? lm.weights.quantFor(prefix) : undefined;
    total += quant ? (t.size * 32) / quant.bits : t.size;
  }
  return total;
}

function quantizationOf(lm: LoadedModel): string {
  const q = lm.config.quantization;
  if (!q) return "none";
  const overrides = Object.keys(lm.config.quantizationOverrides).length;
  return `${q.bits}-bit ${q.mode}, group ${q.groupSize}${overrides ? ` (${overrides} layers differ)` : ""}`;
}

/** How the KV cache stores positions (--kv-bits, --max-kv-size, or the alias's). */
function kvCacheOf(lm: LoadedModel): string {
  const q = lm.kvQuantization;
  const storage = q
    ? `${q.bits}-bit, group ${q.groupSize}${q.start ? `, float for the first ${q.start} positions` : ""}`
    : "float";
  return lm.maxKvSize === undefined ? storage : `${storage}, rotating: at most ${lm.maxKvSize} positions`;
}

/** Speculative decoding (--draft-model, --prompt-lookup, or the alias's). */
function speculationOf(lm: LoadedModel): string {
  const s = lm.speculation;
  if (!s) return "off";
  return `${s.draft ? `draft model ${s.draft.path}` : "prompt lookup"}, ${s.numDraft} tokens drafted per step`;
}

/**
 * What /show shows of the model and settings, one part at a time, as `ollama run`'s /show takes
 * them; /show alone shows the first four (the Modelfile and license only when asked).
 */
export const showParts = ["info", "parameters", "system", "template", "modelfile", "license"] as const;
export type ShowPart = (typeof showParts)[number];

/** `/show [part]`: the part named, or undefined (the first four); an unknown part throws with the parts /show takes. */
export function showPart(args: string): ShowPart | undefined {
  const part = args.trim();
  if (!part) return undefined;
  if (!(showParts as readonly string[]).includes(part))
    throw new Error(
      `unknown part '${part}' to show; /show alone shows ${showParts.slice(0, 4).join(", ")}, or /show ${showParts.join("|")}`,
    );
  return part as ShowPart;
}

/** The part asked for (without `part`, the first four), each a block of lines. */
const describe = (parts: Partial<Record<ShowPart, string[]>>, part: ShowPart | undefined) =>
  (part ? (parts[part] ?? []) : showParts.slice(0, 4).flatMap((name) => parts[name] ?? [])).join("\n");

/** As `ollama run`'s /show license says there is none. */
const NO_LICENSE = "No license was specified for this model.";

/** `license`: the one its alias gives (models.toml's license, a Modelfile's LICENSE). */
export function describeModel(lm: LoadedModel, s: ChatSettings, part?: ShowPart, license?: string): string {
  const template = lm.tokenizer.chatTemplate ?? "(none)";
  return describe(
    {
      info: part === undefined || part === "info" ? modelInfo(lm) : [],
      // What the model's own settings are (its alias's), not this chat's /set: as Ollama's /show modelfile.
      modelfile:
        part === "modelfile"
          ? [
              writeModelfile({
                from: lm.path,
                adapter: lm.adapter?.path,
                parameters: ollamaParameters(lm.sampling ?? {}, lm.limits),
                system: lm.prompt?.system,
                messages: lm.prompt?.messages,
                license,
              }).trimEnd(),
            ]
          : [],
      license: part === "license" ? [license ?? NO_LICENSE] : [],
      parameters: [describeSampling(s, samplingFor(s, lm))],
      system: describeSystem(s, lm.prompt),
      // Whole where it alone is asked for.
      template: [`chat template:\n${template.length > 600 && !part ? `${template.slice(0, 600)}…` : template}`],
    },
    part,
  );
}

/** The model's own figures (counting a split model's parameters reads its files: only asked for). */
function modelInfo(lm: LoadedModel): string[] {
  const c = lm.config;
  // Split across processes, this one holds only its share of the weights: the files tell the whole.
  const params = lm.stage || lm.weights.shard ? readLayout(lm.path).parameters : parameterCount(lm);
  return [
    `model:          ${lm.path} (${lm.format})`,
    `architecture:   ${c.modelType}, ${c.numHiddenLayers} layers, hidden ${c.hiddenSize}, ${c.numAttentionHeads} heads (${c.numKeyValueHeads} kv)`,
    `parameters:     ${params >= 1e9 ? `${(params / 1e9).toFixed(2)}B` : `${(params / 1e6).toFixed(1)}M`}`,
    `quantization:   ${quantizationOf(lm)}`,
    `context length: ${c.maxPositionEmbeddings}`,
    `kv cache:       ${kvCacheOf(lm)}`,
    `speculation:    ${speculationOf(lm)}`,
  ];
}

export function describeRemoteModel(remote: RemoteModel, s: ChatSettings, part?: ShowPart): string {
  return describe(
    {
      info: [
        `model:          ${remote.config.model} (remote, ${remote.config.kind} provider at ${remote.config.baseUrl})`,
      ],
      parameters: [describeSampling(s, samplingFor(s, remote))],
      system: describeSystem(s),
      template: ["chat template:  the provider's (a remote model is sent messages, not a rendered prompt)"],
      modelfile: ["(a remote model has no Modelfile: models.toml names its provider)"],
      license: [NO_LICENSE],
    },
    part,
  );
}

const describeSampling = (s: ChatSettings, sampling: SamplingParams) =>
  `settings:       temp ${sampling.temperature}, top_p ${sampling.topP}, top_k ${sampling.topK}, min_p ${sampling.minP}, repeat_penalty ${sampling.repetitionPenalty}, max_tokens ${s.maxTokens}, seed ${sampling.seed ?? "random"}, format ${s.format?.label ?? "off"}${[
    s.stop && `stop ${JSON.stringify(s.stop)}`,
    s.numCtx && `num_ctx ${s.numCtx}`,
    sampling.presencePenalty && `presence_penalty ${sampling.presencePenalty}`,
    sampling.frequencyPenalty && `frequency_penalty ${sampling.frequencyPenalty}`,
  ]
    .filter(Boolean)
    .map((part) => `, ${part}`)
    .join("")}`;

/** `model`: the turns the model's alias puts first (models.toml's system and messages), where /set system has not replaced them. */
const describeSystem = (s: ChatSettings, model: ModelPrompt = {}) => [
  `system prompt:  ${s.system ?? (model.system === undefined ? "(none)" : `${model.system} (the alias's, in models.toml)`)}`,
  ...(model.messages?.length
    ? [`first turns:    ${model.messages.length} messages (the alias's, in models.toml)`]
    : []),
];
