// One row at a time against several rows at once on a quantized KV cache: the logits of a
// sequence's last positions decoded one token at a time after a prefill, against the same
// positions in one pass, for the float, 8-bit and 4-bit caches; and, per layer, how many of the
// keys that reach the cache quantize to other codes on the two paths (packed 32-bit words).
//
//   node_modules/.bin/bun bench/kv-rows.ts [-m MODEL] [--length 300] [--prefill 250]
import { parseArgs } from "node:util";
import * as mx from "../src/mlx";
import { forward, freeCaches, makeCaches } from "../src/models";
import { KVCache, type KvQuantization } from "../src/models/cache";
import { loadModel } from "../src/models/load";
import { resolveModelPath } from "../src/store/resolve";

const { values } = parseArgs({
  options: {
    model: { type: "string", short: "m" },
    length: { type: "string", default: "300" },
    prefill: { type: "string", default: "250" },
  },
});
const model = loadModel(await resolveModelPath(values.model)).model;
const [length, prefill] = [Number(values.length), Number(values.prefill)];
const sequence = Array.from({ length }, (_, i) => 100 + ((i * 37) % 3000));
const tokens = (from: number, to: number) => mx.array(Int32Array.from(sequence.slice(from, to)), [1, to - from]);

// The float keys each layer's cache receives, in order (to compare the two paths' inputs).
const received = new Map<KVCache, mx.MxArray[]>();
const update = KVCache.prototype.update;
KVCache.prototype.update = function (keys, values) {
  received.get(this)?.push(mx.keep(mx.astype(keys, mx.Dtype.float32)));
  return update.call(this, keys, values);
};

/** Logits of every position, and each layer's received keys: in one pass, or prefill then one at a time. */
function run(kv: KvQuantization | undefined, oneAtATime: boolean): { logits: mx.MxArray; keys: mx.MxArray[] } {
  const caches = makeCaches(model, { quantization: kv });
  for (const c of caches) received.set(c, []);
  const pass = (from: number, to: number) => mx.keep(mx.scope(() => forward(model, tokens(from, to), caches)));
  const parts = oneAtATime
    ? [pass(0, prefill), ...Array.from({ length: length - prefill }, (_, i) => pass(prefill + i, prefill + i + 1))]
    : [pass(0, length)];
  const logits = mx.keep(mx.concatenate(parts, 1));
  const keys = caches.map((c) => mx.keep(mx.concatenate(received.get(c)!, 2)));
  for (const c of caches) for (const t of received.get(c)!) t.free();
  for (const t of parts) t.free();
  received.clear();
  freeCaches(caches);
  return { logits, keys };
}

const maxAbs = (a: mx.MxArray, b: mx.MxArray) => mx.scope(() => mx.max(mx.abs(mx.subtract(a, b))).item());
console.log(
  `${length} tokens; positions ${prefill}..${length - 1} one at a time after a ${prefill}-token prefill, against one pass\n`,
);
console.log(
  "| cache | max abs logit difference | layers' keys: max abs difference (first, middle, last layer) | packed key words holding another code (first, middle, last layer) |",
);
console.log("|---|---:|---|---|");
for (const kv of [undefined, { bits: 8, groupSize: 64 }, { bits: 4, groupSize: 64 }]) {
  const [one, all] = [run(kv, true), run(kv, false)];
  const tail = (t: mx.MxArray) => mx.slice(t, [0, prefill, 0], [1, length, t.shape[2]!]);
  const layers = [0, Math.floor(model.numLayers / 2), model.numLayers - 1];
  const keyDiffs = layers.map((l) => maxAbs(one.keys[l]!, all.keys[l]!).toExponential(1));
  const flips = layers.map((l) =>
    mx.scope(() => {
      if (!kv) return "—";
      const codes = (t: mx.MxArray) => mx.quantize(t, kv).weight;
      const bitsDiffer = mx.notEqual(codes(one.keys[l]!), codes(all.keys[l]!));
      return `${mx.sum(mx.astype(bitsDiffer, mx.Dtype.float32)).item()} of ${bitsDiffer.size}`;
    }),
  );
  console.log(
    `| ${kv ? `${kv.bits}-bit` : "float"} | ${maxAbs(tail(one.logits), tail(all.logits)).toFixed(4)} | ${keyDiffs.join(", ")} | ${flips.join(", ")} |`,
  );
  for (const r of [one, all]) for (const t of [r.logits, ...r.keys]) t.free();
}
