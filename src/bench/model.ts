// Model mode of `mlx bench`: on one loaded model, a warm-up, then n repetitions of a
// prompt-processing test (a synthetic prompt of exactly p tokens, timed to its first token)
// and a generation test (g tokens after a one-token prompt, end-of-sequence ignored), each
// on a fresh KV cache with MLX's peak-memory counter reset before it. As llama-bench does, with
// its -d too: the generation test after a context of d tokens, prefilled before the clock starts.
import { nextTurn } from "../event-loop";
import type { LoadedModel } from "../models/load";
import type { QuantConfig } from "../models/config";
import type { KvQuantization } from "../models/cache";
import { readGGUFHeader } from "../models/gguf-header";
import { ggufQuantization } from "../store/manifest";
import { wholeModelBytes } from "../models/layout";
import { generateSteps, type SequenceEvent } from "../engine/batch";
import { memoryFigures, resetPeakMemory } from "../engine/device";
import { defaultSampling, type SamplingParams } from "../engine/sampling";
import { acceptanceRate, speculationOptions } from "../engine/speculative";
import { summarize, type Summary } from "./stats";

export interface ModelBenchOptions {
  /** Repetitions of each test. */
  repetitions: number;
  /** Prompt tokens of the prompt-processing test (0: skip it). */
  promptTokens: number;
  /** Generated tokens of the generation test (0: skip it). */
  genTokens: number;
  /** Tokens of context the generation test decodes after (0: a one-token prompt). */
  depth: number;
  /** Progress lines (for stderr). */
  onProgress?: (message: string) => void;
}

export interface ModelInfo {
  /** What the user named (-m), or "default". */
  model: string;
  path: string;
  format: string;
  architecture: string;
  quantization: string;
  /** Bytes of weights in memory: what one generated token reads. */
  sizeBytes: number;
  /**
   * How the tests ran it, where not as loaded plainly (--kv-bits, --max-kv-size, --adapter, or
   * an alias's): two runs of one model are told apart in their reports.
   */
  kvQuantization?: KvQuantization;
  maxKvSize?: number;
  /** The adapter's directory. */
  adapter?: string;
}

/** Speculative decoding's drafts over the measured generations (--draft-model, --prompt-lookup). */
export interface SpeculationFigures {
  method: "draft-model" | "prompt-lookup";
  numDraft: number;
  /** Draft tokens proposed, and how many of them the model kept. */
  drafted: number;
  accepted: number;
  acceptance: number;
}

/** The figures for `drafts` when `lm` speculates; undefined when it does not. */
export function speculationFigures(
  lm: LoadedModel,
  drafts: { drafted: number; accepted: number },
): SpeculationFigures | undefined {
  if (!lm.speculation) return undefined;
  return {
    method: lm.speculation.draft ? "draft-model" : "prompt-lookup",
    numDraft: lm.speculation.numDraft,
    ...drafts,
    acceptance: acceptanceRate(drafts),
  };
}

export interface ModelBenchResult extends ModelInfo {
  repetitions: number;
  promptTokens: number;
  genTokens: number;
  depth: number;
  promptTokensPerSecond: Summary;
  generationTokensPerSecond: Summary;
  timeToFirstTokenSeconds: Summary;
  /** Highest MLX peak memory over all tests, and per test kind. */
  peakMemoryBytes: number;
  promptPeakMemoryBytes: number;
  generationPeakMemoryBytes: number;
  speculation?: SpeculationFigures;
  samples: { promptTokensPerSecond: number[]; generationTokensPerSecond: number[]; timeToFirstTokenSeconds: number[] };
}

const greedy: SamplingParams = { ...defaultSampling, temperature: 0 };

// Plain prose, tokenized once and cycled to the asked length: real text tokens (not random
// ids) so attention sees an ordinary prompt, and exactly p of them.
export const prose =
  "The river carried the small boat past fields of barley, old stone bridges and quiet villages where people waved from their gardens. " +
  "In the evening the wind turned cold, and the boatman told stories about the towns downstream, the markets, the bells and the long winters. ";

export function syntheticPrompt(lm: LoadedModel, tokens: number): number[] {
  const pool = lm.tokenizer.encode(prose, { addSpecialTokens: false });
  if (pool.length === 0) throw new Error("the tokenizer produced no tokens for the synthetic prompt");
  const ids: number[] = [];
  if (lm.tokenizer.bosTokenId !== undefined && tokens > 1) ids.push(lm.tokenizer.bosTokenId);
  while (ids.length < tokens) ids.push(pool[ids.length % pool.length]!);
  return ids.slice(0, tokens);
}

export function describeModel(lm: LoadedModel, name: string): ModelInfo {
  return {
    model: name,
    path: lm.path,
    format: lm.format,
    architecture: lm.config.modelType,
    quantization: quantizationOf(lm),
    // The table gives the model's size as alone, not a rank's share of it.
    sizeBytes: wholeModelBytes(lm),
    kvQuantization: lm.kvQuantization,
    maxKvSize: lm.maxKvSize,
    adapter: lm.adapter?.path,
  };
}

/** "Q4_1 (4-bit, group 32; embed_tokens 8-bit)", "Q4_K_M (8-bit, group 32; down_proj 8-bit group 16, …)", "4-bit, group 64", or the float type. */
export function quantizationOf(lm: LoadedModel): string {
  const q = lm.config.quantization;
  let text = "";
  if (q) {
    text = `${q.bits}-bit, group ${q.groupSize}`;
    const layout = (o: QuantConfig) => `${o.bits}-bit${o.groupSize === q.groupSize ? "" : ` group ${o.groupSize}`}`;
    const others = Object.entries(lm.config.quantizationOverrides)
      .filter(([, o]) => o === false || o.bits !== q.bits || o.groupSize !== q.groupSize)
      .map(([name, o]) => `${name.split(".").at(-1)} ${o === false ? "float" : layout(o)}`);
    const distinct = [...new Set(others)];
    if (distinct.length > 0) text += `; ${distinct.slice(0, 3).join(", ")}${distinct.length > 3 ? ", …" : ""}`;
  } else {
    // Unquantized: the type most of the weights are stored in.
    const bytes = new Map<string, number>();
    for (const t of lm.weights.tensors.values()) bytes.set(t.dtypeName, (bytes.get(t.dtypeName) ?? 0) + t.nbytes);
    text = [...bytes].sort((a, b) => b[1] - a[1])[0]?.[0] ?? "unquantized";
  }
  if (lm.format === "gguf") {
    try {
      // Named as `mlx list` names it (Q4_K_M), then what MLX holds.
      const main = ggufQuantization(readGGUFHeader(lm.path));
      if (main) text = `${main} (${text})`;
    } catch {
      // The loaded config already says what MLX holds.
    }
  }
  return text;
}

/** How often the token loop lets the event loop run: a Ctrl-C's handler (it ends the process) waits at most this, or a step. */
const TURN_EVERY_MS = 100;
/** When the event loop last had a turn: kept across tests, so that many short tests give it one too. */
let lastTurn = 0;

/**
 * The model's token loop with its KV cache settings and speculative decoding, as run and serve
 * use them, step by step (each step's tokens; none for a chunk of a long prompt's prefill).
 * Between steps, at most every TURN_EVERY_MS, it gives the event loop a turn: the loop itself
 * never returns to it, so Ctrl-C would otherwise wait for the whole test.
 */
async function* steps(lm: LoadedModel, promptIds: number[], maxTokens: number): AsyncGenerator<SequenceEvent[]> {
  const loop = generateSteps(lm.model, { promptIds, sampling: greedy, maxTokens }, lm.kvQuantization, {
    speculation: speculationOptions(lm),
    maxKvSize: lm.maxKvSize,
  });
  for (const events of loop) {
    yield events;
    if (performance.now() - lastTurn < TURN_EVERY_MS) continue;
    await nextTurn();
    lastTurn = performance.now();
  }
}

/** Prefills `prompt` on a fresh cache; seconds to the first generated token. */
async function promptTest(lm: LoadedModel, prompt: number[]): Promise<{ seconds: number; peakBytes: number }> {
  resetPeakMemory();
  const start = performance.now();
  for await (const _ of steps(lm, prompt, 1));
  return { seconds: (performance.now() - start) / 1000, peakBytes: memoryFigures().peak };
}

/**
 * Generates `count` tokens after `context` (EOS does not stop it): a one-token prompt, whose step
 * is timed as the first of them, or a longer context (--depth), prefilled and its first token
 * sampled before the clock starts, so that `count` decode steps at that depth are timed. A draft
 * model reads that context at its first draft, not at the prefill (its cache catches up then):
 * that step is untimed too, and the timed steps give `count` tokens or a few more (a step's
 * accepted drafts come together). Seconds for them, and the draft tokens proposed and kept when
 * the model speculates.
 */
async function generationTest(
  lm: LoadedModel,
  context: number[],
  count: number,
): Promise<{ seconds: number; tokens: number; peakBytes: number; drafted: number; accepted: number }> {
  resetPeakMemory();
  const deep = context.length > 1;
  const draftCatchesUp = deep && lm.speculation?.draft !== undefined;
  // Room for the untimed tokens: the prefill's, and those of the step where the draft caught up.
  const untimedTokens = (deep ? 1 : 0) + (draftCatchesUp ? lm.speculation!.numDraft + 1 : 0);
  let timing = !deep;
  let start = performance.now();
  let n = 0;
  let drafted = 0;
  let accepted = 0;
  for await (const events of steps(lm, context, count + untimedTokens)) {
    if (events.length === 0) continue;
    if (!timing) {
      // The prefill's step, then (with a draft model) the first step that drafted.
      timing = !draftCatchesUp || events.some((e) => e.drafted !== undefined);
      start = performance.now();
      continue;
    }
    n += events.length;
    for (const event of events) {
      drafted += event.drafted ?? 0;
      accepted += event.accepted ?? 0;
    }
    if (n >= count) break;
  }
  return { seconds: (performance.now() - start) / 1000, tokens: n, peakBytes: memoryFigures().peak, drafted, accepted };
}

export async function benchLoadedModel(lm: LoadedModel, name: string, o: ModelBenchOptions): Promise<ModelBenchResult> {
  const say = o.onProgress ?? (() => {});
  // A rotating cache (--max-kv-size) holds a window of any length, as in run and serve.
  const context = lm.maxKvSize === undefined ? lm.config.maxPositionEmbeddings : Number.POSITIVE_INFINITY;
  if (o.promptTokens + 1 > context)
    throw new Error(`-p ${o.promptTokens} does not fit the model's context of ${context} tokens`);
  if (o.depth + o.genTokens + 1 > context)
    throw new Error(
      `${o.depth > 0 ? `-d ${o.depth} and ` : ""}-g ${o.genTokens} do${o.depth > 0 ? "" : "es"} not fit the model's context of ${context} tokens`,
    );
  const prompt = o.promptTokens > 0 ? syntheticPrompt(lm, o.promptTokens) : [];
  // The generation test's context: the synthetic prompt's first d tokens, or its first token.
  const genContext = syntheticPrompt(lm, Math.max(1, o.depth));

  say(`${name}: warm-up`);
  if (prompt.length > 0) await promptTest(lm, prompt.slice(0, Math.min(prompt.length, 32)));
  if (o.genTokens > 0) await generationTest(lm, genContext, Math.min(o.genTokens, 4));

  const pp: number[] = [];
  const ttft: number[] = [];
  const tg: number[] = [];
  let ppPeak = 0;
  let tgPeak = 0;
  const drafts = { drafted: 0, accepted: 0 };
  for (let i = 1; i <= o.repetitions; i++) {
    if (prompt.length > 0) {
      const r = await promptTest(lm, prompt);
      pp.push(prompt.length / r.seconds);
      ttft.push(r.seconds);
      ppPeak = Math.max(ppPeak, r.peakBytes);
      say(
        `${name}: pp${prompt.length} ${i}/${o.repetitions}: ${(prompt.length / r.seconds).toFixed(2)} tokens/s, first token after ${(r.seconds * 1000).toFixed(0)} ms`,
      );
    }
    if (o.genTokens > 0) {
      const r = await generationTest(lm, genContext, o.genTokens);
      tg.push(r.tokens / r.seconds);
      tgPeak = Math.max(tgPeak, r.peakBytes);
      drafts.drafted += r.drafted;
      drafts.accepted += r.accepted;
      const kept = lm.speculation ? `, ${r.accepted} of ${r.drafted} drafted tokens accepted` : "";
      const at = o.depth > 0 ? ` @ d${o.depth}` : "";
      say(`${name}: tg${o.genTokens}${at} ${i}/${o.repetitions}: ${(r.tokens / r.seconds).toFixed(2)} tokens/s${kept}`);
    }
  }
  return {
    ...describeModel(lm, name),
    repetitions: o.repetitions,
    promptTokens: prompt.length,
    genTokens: o.genTokens,
    depth: o.depth,
    promptTokensPerSecond: summarize(pp),
    generationTokensPerSecond: summarize(tg),
    timeToFirstTokenSeconds: summarize(ttft),
    peakMemoryBytes: Math.max(ppPeak, tgPeak),
    promptPeakMemoryBytes: ppPeak,
    generationPeakMemoryBytes: tgPeak,
    speculation: speculationFigures(lm, drafts),
    samples: { promptTokensPerSecond: pp, generationTokensPerSecond: tg, timeToFirstTokenSeconds: ttft },
  };
}
