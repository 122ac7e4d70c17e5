// Arguments shared by the commands that generate text, and their translation into the
// engine's sampling parameters.
import type { ArgsDef } from "citty";
import { defaultSampling, validateSampling, type SamplingParams } from "../engine/sampling";

export const modelArg = {
  model: { type: "string", alias: "m", description: "Model: an alias from models.toml, a model directory, or a .gguf file (default: the models.toml default)" },
} as const satisfies ArgsDef;

export const samplingArgs = {
  temp: { type: "string", description: "Sampling temperature; 0 is greedy", default: "0" },
  "top-p": { type: "string", description: "Nucleus sampling: keep the smallest set of tokens whose probability reaches p", default: "1" },
  "top-k": { type: "string", description: "Keep only the k most likely tokens (0: off)", default: "0" },
  "min-p": { type: "string", description: "Drop tokens less likely than min-p times the most likely one (0: off)", default: "0" },
  "repeat-penalty": { type: "string", description: "Penalty for tokens seen in the last 20 (1: off)", default: "1" },
  seed: { type: "string", description: "Random seed, for reproducible sampling" },
} as const satisfies ArgsDef;

function number(name: string, value: string | undefined): number {
  const n = Number(value);
  if (value === undefined || value.trim() === "" || !Number.isFinite(n)) throw new Error(`--${name} must be a number (got '${value}')`);
  return n;
}

export function samplingFrom(args: Record<string, unknown>): SamplingParams {
  const s: SamplingParams = {
    ...defaultSampling,
    temperature: number("temp", args.temp as string),
    topP: number("top-p", args["top-p"] as string),
    topK: number("top-k", args["top-k"] as string),
    minP: number("min-p", args["min-p"] as string),
    repetitionPenalty: number("repeat-penalty", args["repeat-penalty"] as string),
    seed: args.seed === undefined ? undefined : number("seed", args.seed as string),
  };
  try {
    validateSampling(s);
  } catch (error) {
    throw new Error(`invalid sampling option: ${(error as Error).message}`);
  }
  return s;
}

export function positiveInteger(name: string, value: unknown): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) throw new Error(`--${name} must be a whole number > 0 (got '${value}')`);
  return n;
}

/** citty gives a repeated string flag as an array, a single one as a string. */
export function list(value: unknown): string[] {
  if (value === undefined) return [];
  return (Array.isArray(value) ? value : [value]).map(String);
}
