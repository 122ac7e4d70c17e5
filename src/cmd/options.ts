// Arguments shared by the commands that generate text, and their translation into the
// engine's sampling parameters.
import type { ArgsDef } from "citty";
import { existsSync, statSync } from "node:fs";
import { validateSampling } from "../engine/sampling";
import type { SamplingInput } from "../api/common";
import { settleSampling } from "../engine/model-settings";
import { validateSchema, type JsonFormat } from "../engine/grammar";
import type { KvQuantization } from "../models/cache";
import {
  aliasAdapter,
  aliasKvQuantization,
  aliasMaxKvSize,
  aliasSpeculation,
  defaultNumDraft,
  maxNumDraft,
} from "../store/aliases";
import type { LoadedModel, SpeculationChoice } from "../models/load";
import { modelMaxTokens } from "../engine/request";
import type { PipelineSpec } from "../engine/pipeline";
import { fileErrorReason } from "../format";
import { readTextAtMost } from "../files";
import { InvalidParameterError } from "../errors";
import { MAX_TIMER_MS } from "../event-loop";

export const modelArg = {
  model: {
    type: "string",
    alias: "m",
    description:
      "Model: an alias from models.toml, a stored model (mlx list), an hf:/pypi: source, a model directory, or a .gguf file (default: the models.toml default)",
  },
} as const satisfies ArgsDef;

export const adapterArg = {
  adapter: {
    type: "string",
    description: "A LoRA/DoRA adapter directory (mlx-lm's adapter_config.json + adapters.safetensors) to apply",
  },
} as const satisfies ArgsDef;

/** --adapter, or else the adapter models.toml gives the model `spec`; not both. */
export function adapterFrom(args: Record<string, unknown>, spec: string | undefined): string | undefined {
  const flag = args.adapter as string | undefined;
  const alias = aliasAdapter(spec);
  if (flag !== undefined && alias !== undefined)
    throw new Error(
      `model '${spec}' already has an adapter in models.toml (${alias}); give its base model with --adapter`,
    );
  if (flag !== undefined && !flag.trim()) throw new Error("--adapter needs a directory");
  return flag ?? alias;
}

/**
 * Flags about a loaded model's weights, KV cache, drafting or split across processes
 * (--peer-timeout, which has a default, aside): a remote model has none of these here.
 */
export const LOCAL_MODEL_FLAGS = [
  "adapter",
  "kv-bits",
  "kv-group-size",
  "kv-quant-start",
  "max-kv-size",
  "draft-model",
  "prompt-lookup",
  "num-draft",
  "hostfile",
  "rank",
  "layers",
  "tensor-parallel",
  "micro-batches",
];

/** Refuses a flag of LOCAL_MODEL_FLAGS given for `model`, served by a remote provider (else it is ignored without a word). */
export function refuseLocalModelFlags(args: Record<string, unknown>, model: string | undefined): void {
  const [given] = givenFlags(args, LOCAL_MODEL_FLAGS);
  if (given)
    throw new Error(`${given} is for a model loaded here; '${model}' is served by a remote provider (models.toml)`);
}

// No citty defaults: a flag not given leaves the value to the model's alias (its temperature in
// models.toml, as ollama run applies a Modelfile's), else defaultSampling's (greedy, as mlx-lm's).
export const samplingArgs = {
  temp: {
    type: "string",
    description: "Sampling temperature; 0 is greedy (default: the model's in models.toml, else 0)",
  },
  "top-p": {
    type: "string",
    description:
      "Nucleus sampling: keep the smallest set of tokens whose probability reaches p (default: the model's, else 1)",
  },
  "top-k": { type: "string", description: "Keep only the k most likely tokens (0: off; default: the model's, else 0)" },
  "min-p": {
    type: "string",
    description: "Drop tokens less likely than min-p times the most likely one (0: off; default: the model's, else 0)",
  },
  "repeat-penalty": {
    type: "string",
    description: "Penalty for tokens seen in the last 20 (1: off; default: the model's, else 1)",
  },
  seed: {
    type: "string",
    description: "Random seed, for reproducible sampling; -1: a random one (default: the model's, else random)",
  },
} as const satisfies ArgsDef;

/** How a flag is typed: `-n` for a one-letter name (launch's), `--max-tokens` otherwise. */
export const flagName = (name: string) => (name.length === 1 ? `-${name}` : `--${name}`);

/** Which of the flags `names` were given (a boolean one given as --no-NAME is not), as written. */
export const givenFlags = (args: Record<string, unknown>, names: string[]): string[] =>
  names.filter((name) => args[name] !== undefined && args[name] !== false).map(flagName);

/** A whole number as people write one: decimal digits, with a sign (never 1e2, 0x10 or 5.0); else NaN. */
export function parseWhole(value: unknown): number {
  const n = typeof value === "string" && /^[+-]?\d+$/.test(value) ? Number(value) : Number.NaN;
  // Past 2^53 a number is no longer the digits typed (99999999999999999999 reads as 1e20).
  return Number.isSafeInteger(n) ? n : Number.NaN;
}

function number(name: string, value: string | undefined, o: { whole?: boolean } = {}): number {
  const n = o.whole ? parseWhole(value) : Number(value);
  if (value === undefined || value.trim() === "" || !Number.isFinite(n))
    throw new Error(`${flagName(name)} must be a ${o.whole ? "whole number" : "number"} (got '${value}')`);
  return n;
}

/** The flag of each sampling value the engine checks, so its errors name what was typed. */
const samplingFlags: Record<string, string> = {
  temperature: "temp",
  top_p: "top-p",
  top_k: "top-k",
  min_p: "min-p",
  repetition_penalty: "repeat-penalty",
  seed: "seed",
};

/**
 * The sampling values the flags give, checked; those not given are left out, for settleSampling to
 * take from the model's alias, else from defaultSampling.
 */
export function samplingFrom(args: Record<string, unknown>): SamplingInput {
  const given = (name: string, o: { whole?: boolean } = {}) =>
    args[name] === undefined ? undefined : number(name, args[name] as string, o);
  const seed = given("seed", { whole: true });
  const s: SamplingInput = {
    temperature: given("temp"),
    topP: given("top-p"),
    topK: given("top-k", { whole: true }),
    minP: given("min-p"),
    repetitionPenalty: given("repeat-penalty"),
    // -1: a random seed over the model's own (models.toml's seed), as Ollama reads a seed of -1.
    ...(seed === -1 ? { randomSeed: true } : { seed }),
  };
  try {
    validateSampling(settleSampling(s, {}, {}));
  } catch (error) {
    const flag = error instanceof InvalidParameterError && samplingFlags[error.param ?? ""];
    if (!flag) throw error;
    // "top_p must be in (0, 1] (got 2)" → "--top-p must be in (0, 1] (got 2)"
    throw new Error(error.message.replace(/^.*? must /, `--${flag} must `));
  }
  return s;
}

export function positiveInteger(name: string, value: unknown): number {
  return numberFlag(name, value, { whole: true });
}

/**
 * --max-tokens where given, else the num_predict models.toml gives the model opened by its
 * alias (0 or less: to the context's end, undefined), else `fallback`.
 */
export function maxTokensFrom(
  flag: number | undefined,
  lm: Pick<LoadedModel, "limits"> | undefined,
  fallback: number,
): number | undefined {
  if (flag !== undefined) return flag;
  if (lm?.limits?.numPredict === undefined) return fallback;
  return modelMaxTokens(lm);
}

/** A numeric flag's value, whole when `whole`, above 0 (or from 0 when `zero`); else a one-line error. */
export function numberFlag(name: string, value: unknown, o: { whole?: boolean; zero?: boolean } = {}): number {
  // Number() reads "" (an unset "$GRACE") and spaces as 0: where 0 is taken, it would mean something.
  const blank = typeof value === "string" && !value.trim();
  const n = blank ? Number.NaN : o.whole ? parseWhole(value) : Number(value);
  const ok = Number.isFinite(n) && (o.zero ? n >= 0 : n > 0);
  if (!ok)
    throw new Error(
      `${flagName(name)} must be a ${o.whole ? "whole number" : "number"} ${o.zero ? "≥" : ">"} 0 (got '${value}')`,
    );
  return n;
}

export const kvCacheArgs = {
  "kv-bits": {
    type: "string",
    description: "Store the KV cache quantized: 8 or 4 bits (default: float, or the model's kv_bits in models.toml)",
  },
  "kv-group-size": {
    type: "string",
    description: "With --kv-bits: values per quantization scale in the KV cache, 32, 64 or 128 (default 64)",
  },
  "kv-quant-start": {
    type: "string",
    description:
      "With --kv-bits: keep the KV cache in float until it holds this many positions, then quantize all of it (default 0)",
  },
  "max-kv-size": {
    type: "string",
    description:
      "Hold at most this many positions per sequence in the KV cache: the first 4 and the latest (default: all, or the model's max_kv_size in models.toml)",
  },
} as const satisfies ArgsDef;

/** --max-kv-size, or else models.toml's max_kv_size for `spec`. */
export function maxKvSizeFrom(args: Record<string, unknown>, spec: string | undefined): number | undefined {
  if (args["max-kv-size"] === undefined) return aliasMaxKvSize(spec);
  const size = positiveInteger("max-kv-size", args["max-kv-size"]);
  if (size <= 4) throw new Error(`--max-kv-size must be more than the 4 positions always kept (got ${size})`);
  return size;
}

/** --kv-bits/--kv-group-size/--kv-quant-start, or else models.toml's kv_bits for `spec`. */
export function kvQuantizationFrom(
  args: Record<string, unknown>,
  spec: string | undefined,
): KvQuantization | undefined {
  return kvQuantizationFlags(args) ?? aliasKvQuantization(spec);
}

/** The KV cache quantization the flags ask for (undefined without --kv-bits), checked. */
export function kvQuantizationFlags(args: Record<string, unknown>): KvQuantization | undefined {
  const bits = args["kv-bits"] === undefined ? undefined : parseWhole(args["kv-bits"]);
  if (bits !== undefined && bits !== 4 && bits !== 8)
    throw new Error(`--kv-bits must be 4 or 8 (got '${args["kv-bits"]}')`);
  const groupSize = args["kv-group-size"] === undefined ? 64 : parseWhole(args["kv-group-size"]);
  if (![32, 64, 128].includes(groupSize))
    throw new Error(`--kv-group-size must be 32, 64 or 128 (got '${args["kv-group-size"]}')`);
  const start =
    args["kv-quant-start"] === undefined
      ? 0
      : numberFlag("kv-quant-start", args["kv-quant-start"], { whole: true, zero: true });
  if (bits === undefined) {
    for (const flag of ["kv-group-size", "kv-quant-start"])
      if (args[flag] !== undefined) throw new Error(`--${flag} needs --kv-bits (8 or 4)`);
    return undefined;
  }
  return { bits, groupSize, start };
}

export const speculationArgs = {
  "draft-model": {
    type: "string",
    description: "Speculative decoding: a smaller model of the same vocabulary drafts, the model verifies",
  },
  "prompt-lookup": {
    type: "boolean",
    description: "Speculative decoding with drafts looked up in the prompt and answer (edits, summaries, code)",
  },
  "num-draft": { type: "string", description: `Tokens drafted per step (default ${defaultNumDraft})` },
} as const satisfies ArgsDef;

/** --draft-model/--prompt-lookup/--num-draft, or else models.toml's for `spec`. */
export function speculationFrom(
  args: Record<string, unknown>,
  spec: string | undefined,
): SpeculationChoice | undefined {
  return speculationFlags(args) ?? aliasSpeculation(spec);
}

/** The speculative decoding the flags ask for (undefined without --draft-model or --prompt-lookup), checked. */
export function speculationFlags(args: Record<string, unknown>): SpeculationChoice | undefined {
  const draftModel = args["draft-model"] as string | undefined;
  const lookup = Boolean(args["prompt-lookup"]);
  if (draftModel !== undefined && lookup) throw new Error("give --draft-model or --prompt-lookup, not both");
  // An empty one (--draft-model "$UNSET") would otherwise speculate by prompt lookup unasked.
  if (draftModel !== undefined && !draftModel.trim()) throw new Error("--draft-model needs a model");
  const numDraft = args["num-draft"] === undefined ? undefined : numDraftFlag(args["num-draft"]);
  if (draftModel === undefined && !lookup) {
    if (numDraft !== undefined) throw new Error("--num-draft needs --draft-model or --prompt-lookup");
    return undefined;
  }
  return { draftModel, numDraft: numDraft ?? defaultNumDraft };
}

/** --num-draft's value, checked: a whole number from 1 to maxNumDraft. */
function numDraftFlag(value: unknown): number {
  // Digits past the bound (even past 2^53) are a whole number, only too many.
  if (/^\d+$/.test(String(value)) && Number(value) > maxNumDraft)
    throw new Error(`--num-draft must be at most ${maxNumDraft} (got '${value}')`);
  return positiveInteger("num-draft", value);
}

/**
 * serve's --prompt-cache-dir and --prompt-cache-max-gb (default: the server's), checked: an empty
 * directory (an unset variable) or a bound without a directory would leave the server without
 * one, unsaid.
 */
export function promptCacheDirFrom(args: Record<string, unknown>): {
  promptCacheDir?: string;
  promptCacheMaxBytes?: number;
} {
  const dir = args["prompt-cache-dir"] as string | undefined;
  const gb = args["prompt-cache-max-gb"];
  if (dir !== undefined && !dir.trim()) throw new Error("--prompt-cache-dir needs a directory");
  // A file given by mistake is told at once (a folder that cannot be made later only warns: the
  // server answers without its disk cache).
  if (dir !== undefined && existsSync(dir) && !statSync(dir).isDirectory())
    throw new Error(`--prompt-cache-dir ${dir} is a file, not a directory`);
  if (gb === undefined) return { promptCacheDir: dir };
  if (dir === undefined) throw new Error("--prompt-cache-max-gb needs --prompt-cache-dir");
  return { promptCacheDir: dir, promptCacheMaxBytes: numberFlag("prompt-cache-max-gb", gb) * 1024 ** 3 };
}

/** All of stdin as text (a prompt, a document); named as stdin where it cannot be read (`< folder`). */
export async function readStdin(): Promise<string> {
  try {
    return await Bun.stdin.text();
  } catch (error) {
    throw new Error(`cannot read stdin: ${fileErrorReason(error)}`);
  }
}

/** citty gives a repeated string flag as an array, a single one as a string. */
export function list(value: unknown): string[] {
  if (value === undefined) return [];
  return (Array.isArray(value) ? value : [value]).map(String);
}

export const formatArgs = {
  format: { type: "string", description: "Constrain the answer to JSON: 'json' (any JSON object)" },
  schema: { type: "string", description: "Constrain the answer to JSON that matches this JSON Schema file" },
} as const satisfies ArgsDef;

/** A constrained-output choice with how to show it to the user ("json", or the schema file). */
export interface OutputFormat {
  format: JsonFormat;
  label: string;
}

/** --format json / --schema <file> → the format, checked (the schema file read and validated). */
export async function formatFrom(args: Record<string, unknown>): Promise<OutputFormat | undefined> {
  const format = args.format as string | undefined;
  const schema = args.schema as string | undefined;
  if (format !== undefined && schema !== undefined) throw new Error("give --format json or --schema <file>, not both");
  if (schema !== undefined) return readFormat(schema);
  if (format === undefined) return undefined;
  if (format !== "json")
    throw new Error(`--format must be 'json' (got '${format}'); for a JSON Schema use --schema <file>`);
  return readFormat("json");
}

/**
 * The most bytes of a schema file read: far over what constrained decoding compiles (its own
 * limit says so), and a bound on a file that never ends (/set format /dev/zero held the chat).
 */
const schemaFileBytes = 16e6;

/** "json", or a JSON Schema file: read, parsed and validated, with a one-line error naming what is wrong. */
export async function readFormat(spec: string): Promise<OutputFormat> {
  if (spec === "json") return { format: "json", label: "json" };
  let text: string;
  try {
    text = readTextAtMost(spec, schemaFileBytes);
  } catch (error) {
    throw new Error(`cannot read schema file '${spec}': ${fileErrorReason(error)}`);
  }
  let schema: unknown;
  try {
    schema = JSON.parse(text);
  } catch (error) {
    throw new Error(`schema file '${spec}' is not valid JSON: ${(error as Error).message}`);
  }
  try {
    await validateSchema(schema);
  } catch (error) {
    throw new Error(`schema file '${spec}': ${(error as Error).message}`);
  }
  return { format: { schema: schema as object }, label: spec };
}

export const distributedArgs = {
  hostfile: {
    type: "string",
    description:
      'Split the model across processes: MLX\'s ring hostfile, one ["host:port"] list per rank (default: $MLX_HOSTFILE; `mlx launch` sets it)',
  },
  rank: { type: "string", description: "This process's rank in the hostfile (default: $MLX_RANK)" },
  layers: {
    type: "string",
    description: "Layers per rank, e.g. 0-9,10-18,19-29 (default: in proportion to each rank's free memory)",
  },
  "tensor-parallel": {
    type: "boolean",
    description:
      "Split every layer across the ranks instead (attention heads and MLP columns, summed over the ring twice a layer): for fast links",
  },
  "peer-timeout": {
    type: "string",
    description: "Seconds a silent rank is waited for before every rank stops",
    default: "30",
  },
  "micro-batches": {
    type: "string",
    description:
      "Decode groups rank 0 keeps in flight round the ranks, so they compute at once (default: one per rank)",
  },
} as const satisfies ArgsDef;

/**
 * The longest --peer-timeout: the watchdog's native thread and the timers take milliseconds as a
 * 32-bit integer (about 24 days); past it a timeout wraps round to fire at once, or every
 * millisecond.
 */
const maxPeerTimeoutS = Math.floor(MAX_TIMER_MS / 1000);

/** The pipeline this process is a rank of (--hostfile/--rank, or $MLX_HOSTFILE/$MLX_RANK), if any. */
export function pipelineFrom(args: Record<string, unknown>): PipelineSpec | undefined {
  // Checked with a hostfile or not: having a default, a bad one could not be told from one not given.
  const timeout = Number(args["peer-timeout"] ?? 30);
  if (!Number.isFinite(timeout) || timeout <= 0 || timeout > maxPeerTimeoutS)
    throw new Error(
      `--peer-timeout must be a number of seconds > 0 and at most ${maxPeerTimeoutS} (got '${args["peer-timeout"]}')`,
    );
  const hostfile = (args.hostfile as string | undefined) ?? process.env.MLX_HOSTFILE;
  if (!hostfile) {
    if (
      args.rank !== undefined ||
      args.layers !== undefined ||
      args["tensor-parallel"] ||
      args["micro-batches"] !== undefined
    )
      throw new Error(
        "--rank, --layers, --tensor-parallel and --micro-batches need --hostfile (or $MLX_HOSTFILE): the processes to split the model across",
      );
    return undefined;
  }
  const rankText = (args.rank as string | undefined) ?? process.env.MLX_RANK;
  if (rankText === undefined) throw new Error("give --rank R, this process's place in the hostfile (or set $MLX_RANK)");
  // Not Number()'s test: it reads an empty --rank "$UNSET" as rank 0, which then waits for ever.
  if (!/^\d+$/.test(rankText.trim()))
    throw new Error(`--rank must be a whole number ≥ 0 (got '${rankText}'; or set $MLX_RANK)`);
  const rank = Number(rankText);
  const tensorParallel = Boolean(args["tensor-parallel"]);
  if (tensorParallel && args.layers !== undefined)
    throw new Error("--layers splits the model into runs of layers; --tensor-parallel splits every layer: give one");
  const microBatches =
    args["micro-batches"] === undefined ? undefined : positiveInteger("micro-batches", args["micro-batches"]);
  if (tensorParallel && microBatches !== undefined)
    throw new Error("--micro-batches splits the batch between runs of layers; --tensor-parallel has none to fill");
  return {
    hostfile,
    rank,
    layers: args.layers as string | undefined,
    peerTimeoutMs: timeout * 1000,
    tensorParallel,
    microBatches,
  };
}
