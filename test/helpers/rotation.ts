// The reference a rotating KV cache (--max-kv-size) is checked against: full caches whose mask
// hides what a rotating cache of that size no longer holds (its sinks and latest positions kept).
import * as mx from "../../src/mlx";
import { forward, freeCaches, type DecoderModel } from "../../src/models";
import { KVCache, type KvQuantization, type Mask } from "../../src/models/cache";
import { DEFAULT_KV_KEEP } from "../../src/models/rotating-cache";

class RotationMaskedCache extends KVCache {
  constructor(
    readonly maxSize: number,
    quantization?: KvQuantization,
  ) {
    super(quantization);
  }

  override attentionMask(length: number): Mask {
    const total = this.offset + length;
    const keys = mx.reshape(mx.arange(0, total), [1, total]);
    const queries = mx.reshape(mx.arange(this.offset, total), [length, 1]);
    const sink = mx.less(keys, DEFAULT_KV_KEEP);
    const recent = mx.greater(mx.add(keys, this.maxSize - DEFAULT_KV_KEEP), queries);
    return mx.logicalAnd(mx.lessEqual(keys, queries), mx.logicalOr(sink, recent));
  }
}

/** Greedy tokens through such caches: the prompt in one pass, then token by token. */
export function rotationReference(
  model: DecoderModel,
  prompt: number[],
  maxTokens: number,
  maxSize: number,
  kv?: KvQuantization,
): number[] {
  const caches = Array.from({ length: model.numLayers }, () => new RotationMaskedCache(maxSize, kv));
  const out: number[] = [];
  let input = prompt;
  while (out.length < maxTokens) {
    const token = mx.scope(() => {
      const logits = forward(model, mx.array(Int32Array.from(input), [1, input.length]), caches);
      return mx.argmax(mx.slice(logits, [0, input.length - 1, 0], [1, input.length, logits.shape[2]!]), -1).item();
    });
    out.push(token);
    input = [token];
  }
  freeCaches(caches);
  return out;
}
