// One whole completion of prompt ids on a scheduler of its own (a batch of one, as `mlx run`).
import { complete, soloScheduler, type CompletionResult } from "../../src/engine/generate";
import type { GenerationSpec } from "../../src/engine/request";
import type { LoadedModel } from "../../src/models/load";
import { BatchGenerator, type BatchOptions, type SequenceRequest } from "../../src/engine/batch";
import { defaultSampling, type LogitsProcessor } from "../../src/engine/sampling";
import * as mx from "../../src/mlx";
import { forward, freeCaches, makeCaches, type DecoderModel } from "../../src/models";
import { BatchKVCache } from "../../src/models/batch-cache";
import type { KVCache, KvQuantization } from "../../src/models/cache";

/** A stand-in for a model deciding to call: after `after` tokens of its own, it writes `text`. */
export function writesAfter(lm: LoadedModel, text: string, after: number): LogitsProcessor {
  const ids = lm.tokenizer.encode(text, { addSpecialTokens: false });
  let start: number | undefined;
  return (history, logits) => {
    start ??= history.length + after;
    const id = ids[history.length - start];
    if (id === undefined) return logits;
    const only = new Uint8Array(logits.shape.at(-1)!);
    only[id] = 1;
    return mx.where(mx.array(only, [1, only.length], mx.Dtype.bool), logits, mx.full([], -Infinity, logits.dtype));
  };
}

export async function completeAlone(
  lm: LoadedModel,
  promptIds: number[],
  o: Omit<GenerationSpec, "prompt">,
): Promise<CompletionResult> {
  const scheduler = soloScheduler(lm);
  try {
    return await complete(scheduler, { prompt: { kind: "ids", ids: promptIds }, ...o });
  } finally {
    scheduler.dispose();
  }
}

/** A sequence of a batch test: its prompt ids, its budget, and the step at which it joins the batch. */
export interface JoiningRequest {
  prompt: number[];
  maxTokens: number;
  joinAt: number;
}

/** Each request's tokens, decoded together by one BatchGenerator with `options`, each joining at its step. */
export function decodeJoining(model: DecoderModel, requests: JoiningRequest[], options: BatchOptions): number[][] {
  const gen = new BatchGenerator(model, options);
  const out = requests.map(() => [] as number[]);
  const added = new Set<number>();
  for (let step = 0; added.size < requests.length || !gen.idle; step++) {
    requests.forEach((r, i) => {
      if (!added.has(i) && r.joinAt <= step) {
        gen.add(String(i), { promptIds: r.prompt, sampling: defaultSampling, maxTokens: r.maxTokens });
        added.add(i);
      }
    });
    for (const e of gen.step()) out[Number(e.id)]!.push(e.token);
    if (step > 1000) throw new Error("batch never finished");
  }
  gen.dispose();
  return out;
}

/** The tokens of one sequence decoded alone by a BatchGenerator with `options` (its prefill in chunks of 4). */
export function decodeAlone(
  model: DecoderModel,
  request: SequenceRequest,
  options: Partial<BatchOptions> = {},
): number[] {
  const gen = new BatchGenerator(model, { maxBatch: 2, prefillChunk: 4, ...options });
  gen.add("a", request);
  const tokens: number[] = [];
  while (!gen.idle) for (const e of gen.step()) tokens.push(e.token);
  gen.dispose();
  return tokens;
}

const tokenRows = (rows: number[][]) => mx.array(Int32Array.from(rows.flat()), [rows.length, rows[0]!.length]);

/** Each row's greedy token from the last position of logits [B, L, vocab], as [[token], ...]. */
function greedyRows(logits: mx.MxArray): number[][] {
  return mx.scope(() => {
    const [batch, length, vocab] = logits.shape as [number, number, number];
    return mx
      .argmax(mx.slice(logits, [0, length - 1, 0], [batch, length, vocab]), -1)
      .toArray()
      .map((t) => [t]);
  });
}

/**
 * `steps` greedy decode steps straight on the model's forward pass after prefilling `prompts`
 * (each alone, then joined into a left-padded batch when several), with caches quantized as `kv`
 * says: each step's logits, and the caches, which the caller reads and then frees (freeCaches).
 */
export function greedySteps(
  model: DecoderModel,
  prompts: number[][],
  steps: number,
  kv?: KvQuantization,
): { logits: mx.MxArray[]; caches: KVCache[] } {
  let next: number[][] = [];
  const singles = prompts.map((prompt) => {
    const caches = makeCaches(model, { quantization: kv, joining: prompts.length > 1 });
    next.push(...mx.scope(() => greedyRows(forward(model, tokenRows([prompt]), caches))));
    return caches;
  });
  let caches = singles[0]!;
  if (prompts.length > 1) {
    caches = caches.map((_, layer) => {
      const batch = new BatchKVCache(kv);
      batch.extend(...singles.map((c) => c[layer]!));
      return batch;
    });
    for (const c of singles) freeCaches(c);
  }
  const logits: mx.MxArray[] = [];
  for (let step = 0; step < steps; step++) {
    const out = mx.keep(mx.scope(() => forward(model, tokenRows(next), caches)));
    mx.evaluate(out);
    logits.push(out);
    next = greedyRows(out);
  }
  return { logits, caches };
}
