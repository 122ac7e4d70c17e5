// The prompt's own log-probabilities (OpenAI's legacy completions with echo and logprobs, as
// vLLM gives them): each prompt token's under the model after the tokens before it, with the
// likeliest tokens there. A forward pass of its own over the prompt, a chunk of positions at a
// time on the engine's thread between the scheduler's steps, as embeddings run (engine/embed.ts):
// the answers being generated go on between two chunks.
import { nextTurn } from "../event-loop";
import { UnsupportedError } from "../errors";
import { cacheState, forward, freeCaches, makeCaches } from "../models";
import type { LoadedModel } from "../models/load";
import type { Adapter } from "../models/lora";
import * as mx from "../mlx";
import { quantStartBound } from "../models/cache";
import { DEFAULT_PREFILL_CHUNK } from "./batch";
import type { TokenLogprob } from "./scheduler";

/** Values per array of a pass's logits (16M float32: 64 MB). */
const LOGITS_PER_PASS = 16 * 1024 * 1024;

export interface PromptLogprobs {
  /** Of the prompt's tokens after its first (which follows nothing): one each. */
  tokens: TokenLogprob[];
  /** The `top` likeliest tokens at each of those positions. */
  top: TokenLogprob[][];
}

/**
 * The log-probabilities of `ids[1..]`, each after the ones before it, from the model's logits as
 * they are (no sampling parameters), as the answer's logprobs are. `chunk`: positions per pass.
 */
export async function promptLogprobs(
  lm: LoadedModel,
  ids: number[],
  top: number,
  o: { chunk?: number; adapter?: Adapter; signal?: AbortSignal } = {},
): Promise<PromptLogprobs> {
  // Split across processes, the logits come from the last rank: not read here.
  if (lm.model.remote)
    throw new UnsupportedError("the prompt's logprobs (echo) of a model split across processes", "echo");
  const out: PromptLogprobs = { tokens: [], top: [] };
  // The model's own KV cache (--kv-bits, --max-kv-size), as its answers read: each prompt token
  // scored as it would be generated there, and a rotating cache's memory bound kept.
  const caches = makeCaches(lm.model, { quantization: lm.kvQuantization, maxKvSize: lm.maxKvSize });
  // A pass holds a few arrays of positions × vocabulary (logits, logprobs, their ranking): at most
  // about LOGITS_PER_PASS values each, so a large vocabulary (150k) costs no gigabyte at once.
  const chunk = Math.max(
    1,
    Math.min(o.chunk ?? DEFAULT_PREFILL_CHUNK, Math.floor(LOGITS_PER_PASS / lm.config.vocabSize)),
  );
  const adapter = o.adapter ?? lm.adapter;
  try {
    // The last position predicts a token after the prompt: no pass reads it.
    for (let start = 0, end = 0; start < ids.length - 1; start = end) {
      await nextTurn();
      if (o.signal?.aborted) throw o.signal.reason ?? new Error("cancelled");
      // Cut at --kv-quant-start as a prefill is (quantStartBound): positions before it read the cache in float.
      end = quantStartBound(lm.kvQuantization, start, Math.min(start + chunk, ids.length - 1));
      const part = ids.slice(start, end);
      const next = ids.slice(start + 1, start + 1 + part.length);
      const { chosen, alternatives, values } = mx.scope(() => {
        const pass = () => forward(lm.model, mx.array(Int32Array.from(part), [1, part.length]), caches);
        const logits = mx.astype(mx.squeeze(adapter ? adapter.base.run([adapter], pass) : pass(), 0), mx.Dtype.float32);
        const logprobs = mx.subtract(logits, mx.logsumexp(logits, -1, true));
        const chosen = mx.takeAlongAxis(logprobs, mx.array(Int32Array.from(next), [next.length, 1]), -1);
        // Each row's likeliest `top`, in no order (sorted below): a partition, not a sort of the vocabulary.
        const likeliest = top > 0 ? mx.argpartition(mx.negative(logprobs), top - 1, -1) : undefined;
        const alternatives = likeliest && mx.slice(likeliest, [0, 0], [part.length, top]);
        const values = alternatives && mx.takeAlongAxis(logprobs, alternatives, -1);
        mx.evaluate(chosen, ...(alternatives ? [alternatives, values!] : []), ...cacheState(caches));
        return { chosen: chosen.toArray(), alternatives: alternatives?.toArray(), values: values?.toArray() };
      });
      next.forEach((token, i) => {
        out.tokens.push({ token, logprob: chosen[i]! });
        out.top.push(
          Array.from({ length: top }, (_, k) => ({
            token: alternatives![i * top + k]!,
            logprob: values![i * top + k]!,
          })).sort((a, b) => b.logprob - a.logprob),
        );
      });
    }
    return out;
  } finally {
    freeCaches(caches);
  }
}
