// Where the 8-bit KV cache's quality loss comes from, and which quantization scheme keeps greedy
// answers: per-layer quantization error of keys and values, then greedy agreement and mean
// absolute logit difference for several schemes, interleaved per prompt.
//
//   node_modules/.bin/bun bench/kv-quality-variants.ts [-m MODEL] [--prompts 10] [--tokens 64] [--only a,b] [--prompt-file F]
//
// Schemes other than the cache's own (`--kv-bits 8`, run for real) are simulated: a float cache
// that stores each key/value row as quantize → dequantize gives it back, which equals the
// quantized cache's attention to 1e-4 (test/kv-cache.test.ts). The cache stores its keys rotated
// ("keys Hadamard-rotated" simulates it); "8-bit g64 (simulated)" is the cache before the rotation.
// Every scheme's greedy answer (64 tokens, one token per step after the prompt) is
// compared with the float32 cache's and with a float16 cache's; the logit difference is over the
// float32 answer, teacher-forced, against the float32 cache. `--only` picks schemes whose name
// contains one of the words; random noise as large as 8-bit's error shows how far agreement
// moves by chance; `--prompt-file` takes another set of prompts. Figures: bench/RESULTS.md, "KV
// cache, third pass" and "KV cache, fourth pass".
import { parseArgs } from "node:util";
import { promptTokens } from "../src/engine/prompt";
import * as mx from "../src/mlx";
import type { MxArray } from "../src/mlx";
import { forward, freeCaches, makeCaches } from "../src/models";
import { KVCache, type KvQuantization, type Stored } from "../src/models/cache";
import { loadModel } from "../src/models/load";
import { rotateGroups } from "../src/models/quantized-attention";
import { resolveModelPath } from "../src/store/resolve";
import prompts from "./kv-quality-prompts.json" with { type: "json" };

const { values: args } = parseArgs({
  options: {
    model: { type: "string", short: "m" },
    prompts: { type: "string", default: "10" },
    tokens: { type: "string", default: "64" },
    only: { type: "string" },
    // Another set of prompts (a JSON list of strings): greedy agreement over 10 prompts swings by chance.
    "prompt-file": { type: "string" },
  },
});
const lm = loadModel(await resolveModelPath(args.model));
const { model } = lm;
const vocab = model.config.vocabSize;

/** x [B, H, T, D] through affine quantization and back (MLX's format: groups along D). */
function roundTrip(x: MxArray, bits: number, groupSize: number): MxArray {
  const q = { bits, groupSize };
  const { weight, scales, biases } = mx.quantize(x, q);
  return mx.dequantize(weight, scales, biases, q, x.dtype);
}

/** Symmetric rounding: zero exact, scale = max|x| / (2^(bits-1) - 1) per group. */
function symmetricRoundTrip(x: MxArray, bits: number, groupSize: number): MxArray {
  const shape = x.shape;
  const grouped = mx.reshape(x, [...shape.slice(0, -1), shape.at(-1)! / groupSize, groupSize]);
  const levels = 2 ** (bits - 1) - 1;
  const scale = mx.maximum(mx.divide(mx.max(mx.abs(grouped), -1, true), levels), 1e-8);
  const q = mx.minimum(mx.maximum(mx.round(mx.divide(grouped, scale)), -levels - 1), levels);
  return mx.reshape(mx.multiply(q, scale), shape);
}

type Transform = (x: MxArray) => MxArray;
interface Scheme {
  keys?: Transform;
  values?: Transform;
  /** Positions kept exactly (attention sinks). */
  sinks?: number;
}

/** A float cache that stores what `scheme` makes of each new key/value row. */
class SimulatedCache extends KVCache {
  constructor(readonly scheme: Scheme) {
    super();
  }

  override update(keys: MxArray, values: MxArray): [Stored, Stored] {
    const apply = (x: MxArray, f?: Transform) => {
      if (!f) return x;
      const kept = Math.max(0, Math.min((this.scheme.sinks ?? 0) - this.offset, x.shape[2]!));
      if (kept === 0) return f(x);
      const [b, h, t, d] = x.shape as [number, number, number, number];
      if (kept === t) return x;
      return mx.concatenate(
        [mx.slice(x, [0, 0, 0, 0], [b, h, kept, d]), f(mx.slice(x, [0, 0, kept, 0], [b, h, t, d]))],
        2,
      );
    };
    return super.update(apply(keys, this.scheme.keys), apply(values, this.scheme.values));
  }
}

/**
 * Keys with their channels evened out before quantizing (as SmoothQuant/KVQuant do): each
 * channel divided by its largest magnitude in the first chunk the cache sees (per layer and
 * head, raised to `alpha`), quantized, multiplied back; attention would take q·s against k/s.
 */
class EqualizedKeysCache extends KVCache {
  #scale?: MxArray;
  constructor(
    readonly groupSize: number,
    readonly alpha: number,
  ) {
    super();
  }

  override update(keys: MxArray, values: MxArray): [Stored, Stored] {
    this.#scale ??= mx.keep(mx.power(mx.maximum(mx.max(mx.abs(keys), 2, true), 1e-5), this.alpha));
    const s = this.#scale;
    const k = mx.multiply(roundTrip(mx.divide(keys, s), 8, this.groupSize), s);
    return super.update(k, roundTrip(values, 8, 64));
  }
}

/**
 * Keys rotated along head_dim by a Hadamard matrix H before quantizing (QuaRot/SpinQuant's
 * trick): the outlier channels spread over all channels, so a row's range shrinks; attention
 * would take q·H against the rotated keys (H orthonormal, so q·k is unchanged).
 */
const rotated =
  (inner: Transform): Transform =>
  (x) =>
    rotateGroups(inner(rotateGroups(x, 64)), 64);

/**
 * KIVI's keys: quantized per channel over groups of `groupSize` positions (a channel's outliers
 * are steady along positions, so they no longer set every row's range); the last positions of an
 * unfilled group stay float until it fills. Values per row (MLX's format), group 64.
 */
class PerChannelKeysCache extends KVCache {
  constructor(
    readonly groupSize: number,
    /** A control: the same float tail, but each filled group's keys quantized per row (MLX's format). */
    readonly perRow = false,
    /** Values too wait in float until their group of positions fills (KIVI's residual for both). */
    readonly valuesTail = false,
    /** How values are rounded (per row, 8-bit g64 unless told). */
    readonly valueRounding: Transform = (x) => roundTrip(x, 8, 64),
  ) {
    super();
  }

  override update(keys: MxArray, values: MxArray): [Stored, Stored] {
    const previous = this.offset;
    super.update(keys, this.valuesTail ? values : this.valueRounding(values));
    const g = this.groupSize;
    const [from, to] = [Math.floor(previous / g) * g, Math.floor(this.offset / g) * g];
    if (to > from) {
      const held = this.keys![0]!;
      const [b, h, , d] = held.shape as [number, number, number, number];
      if (this.valuesTail) {
        const stored = this.values![0]!;
        const rows = roundTrip(mx.slice(stored, [0, 0, from, 0], [b, h, to, d]), 8, 64);
        this.values = [mx.keep(mx.sliceUpdate(stored, rows, [0, 0, from, 0], [b, h, to, d]))];
        stored.free();
      }
      const filled = mx.slice(held, [0, 0, from, 0], [b, h, to, d]);
      // [B, H, T, D] → groups of g positions per channel: [B, H, T/g, D, g], quantized along g.
      if (this.perRow) return this.replaceKeys(held, roundTrip(filled, 8, 64), from, to);
      const grouped = mx.transpose(mx.reshape(filled, [b, h, (to - from) / g, g, d]), [0, 1, 2, 4, 3]);
      const back = mx.reshape(mx.transpose(roundTrip(grouped, 8, g), [0, 1, 2, 4, 3]), [b, h, to - from, d]);
      return this.replaceKeys(held, back, from, to);
    }
    return this.held();
  }

  private replaceKeys(held: MxArray, rows: MxArray, from: number, to: number): [Stored, Stored] {
    const [b, h, , d] = held.shape as [number, number, number, number];
    this.keys = [mx.keep(mx.sliceUpdate(held, rows, [0, 0, from, 0], [b, h, to, d]))];
    held.free();
    return this.held();
  }

  private held(): [Stored, Stored] {
    const valid = (t: Stored) => t.map((x) => mx.slice(x, [0, 0, 0], [x.shape[0]!, x.shape[1]!, this.offset]));
    return [valid(this.keys!), valid(this.values!)];
  }
}

/**
 * Keys centered before quantizing: each channel's mean over the first chunk the cache sees (per
 * layer and head) taken off, the rest quantized per row. A key channel's outlier is mostly a steady
 * offset, and q·μ is the same for every key a query sees, so softmax drops it: attention on k − μ
 * equals attention on k, and only the smaller rest is rounded.
 */
class CenteredKeysCache extends KVCache {
  #mean?: MxArray;
  constructor(
    readonly keys8: Transform,
    /** A fixed center (from a calibration text) instead of the first chunk's. */
    center?: MxArray,
  ) {
    super();
    this.#mean = center;
  }

  override update(keys: MxArray, values: MxArray): [Stored, Stored] {
    this.#mean ??= mx.keep(mx.mean(keys, 2, true));
    const m = this.#mean;
    return super.update(mx.add(this.keys8(mx.subtract(keys, m)), m), roundTrip(values, 8, 64));
  }
}

/** Gaussian noise of `relative` × each row's RMS: an error as large as 8-bit's, without its structure. */
const noise =
  (relative: number): Transform =>
  (x) => {
    const rms = mx.sqrt(mx.mean(mx.square(x), -1, true));
    return mx.add(x, mx.multiply(mx.random.normal(x.shape, x.dtype), mx.multiply(rms, relative)));
  };
const q8 =
  (g: number): Transform =>
  (x) =>
    roundTrip(x, 8, g);
const toF16: Transform = (x) => mx.astype(mx.astype(x, mx.Dtype.float16), x.dtype);
const toBf16: Transform = (x) => mx.astype(mx.astype(x, mx.Dtype.bfloat16), x.dtype);

/** Each layer's key channel means [1, kvHeads, 1, D] over a text none of the prompts contains. */
let centers: MxArray[] | undefined;
function calibratedCenters(): MxArray[] {
  if (centers) return centers;
  const text =
    "The history of science is the study of how people came to understand the natural world, " +
    "from early astronomy and medicine to modern physics, chemistry and biology. Each step built on " +
    "careful observation, measurement and argument, and many ideas were revised as new evidence appeared.";
  const ids = lm.tokenizer.encode(text, { addSpecialTokens: true });
  const caches = makeCaches(model);
  mx.scope(() => forward(model, mx.array(Int32Array.from(ids), [1, ids.length]), caches));
  centers = caches.map((c) =>
    mx.keep(
      mx.mean(
        mx.slice(c.keys![0]!, [0, 0, 0, 0], [1, c.keys![0]!.shape[1]!, c.offset, c.keys![0]!.shape[3]!]),
        2,
        true,
      ),
    ),
  );
  freeCaches(caches);
  return centers;
}

interface Variant {
  name: string;
  caches: () => KVCache[];
}
const simulated = (name: string, scheme: Scheme): Variant => ({
  name,
  caches: () => Array.from({ length: model.numLayers }, () => new SimulatedCache(scheme)),
});
const real = (name: string, quantization?: KvQuantization): Variant => ({
  name,
  caches: () => makeCaches(model, { quantization }),
});

const reference = real("float32");
const all: Variant[] = [
  simulated("float16 cache", { keys: toF16, values: toF16 }),
  simulated("bfloat16 cache", { keys: toBf16, values: toBf16 }),
  real("8-bit g64 (the cache), keys per channel", { bits: 8, groupSize: 64 }),
  real("8-bit g64 (the cache), keys per row", { bits: 8, groupSize: 64, keys: "rows" }),
  simulated("8-bit g64 (simulated)", { keys: q8(64), values: q8(64) }),
  simulated("8-bit g64 keys only", { keys: q8(64) }),
  simulated("8-bit g64 values only", { values: q8(64) }),
  real("8-bit g32 (the cache), keys per channel", { bits: 8, groupSize: 32 }),
  real("8-bit g32 (the cache), keys per row", { bits: 8, groupSize: 32, keys: "rows" }),
  simulated("8-bit keys g32, values g64", { keys: q8(32), values: q8(64) }),
  simulated("8-bit g64, 4 sinks float", { keys: q8(64), values: q8(64), sinks: 4 }),
  simulated("8-bit g32, 4 sinks float", { keys: q8(32), values: q8(32), sinks: 4 }),
  simulated("8-bit g64 symmetric", {
    keys: (x) => symmetricRoundTrip(x, 8, 64),
    values: (x) => symmetricRoundTrip(x, 8, 64),
  }),
  simulated("8-bit g64, float16 scales", { keys: (x) => q8(64)(toF16(x)), values: (x) => q8(64)(toF16(x)) }),
  simulated("8-bit g32, float16 scales", { keys: (x) => q8(32)(toF16(x)), values: (x) => q8(32)(toF16(x)) }),
  // How far greedy agreement moves by chance: four draws of random noise as large as 8-bit g64's
  // error (mean relative RMS error over the layers: keys 0.80%, values 0.60%).
  ...[1, 2, 3, 4].map((draw) =>
    simulated(`noise as large as 8-bit g64's error, draw ${draw}`, { keys: noise(0.008), values: noise(0.006) }),
  ),
  ...[1, 0.5].flatMap((alpha) =>
    [64, 32].map((g) => ({
      name: `8-bit, keys' channels evened (alpha ${alpha}), keys g${g}, values g64`,
      caches: () => Array.from({ length: model.numLayers }, () => new EqualizedKeysCache(g, alpha)),
    })),
  ),
  simulated("8-bit g64, keys Hadamard-rotated", { keys: rotated(q8(64)), values: q8(64) }),
  real("4-bit g64 (the cache), keys per channel", { bits: 4, groupSize: 64 }),
  real("4-bit g64 (the cache), keys per row", { bits: 4, groupSize: 64, keys: "rows" }),
  simulated("4-bit g64, keys Hadamard-rotated", {
    keys: rotated((x) => roundTrip(x, 4, 64)),
    values: (x) => roundTrip(x, 4, 64),
  }),
  simulated("8-bit g32, keys Hadamard-rotated", { keys: rotated(q8(32)), values: q8(64) }),
  ...[64, 32].map((g) => ({
    name: `8-bit, keys per channel over ${g} positions (KIVI), values g64`,
    caches: () => Array.from({ length: model.numLayers }, () => new PerChannelKeysCache(g)),
  })),
  {
    name: "8-bit g64, keys centered (first chunk's channel means)",
    caches: () => Array.from({ length: model.numLayers }, () => new CenteredKeysCache(q8(64))),
  },
  {
    name: "8-bit g64, keys centered (a calibration text's channel means)",
    caches: () => calibratedCenters().map((center) => new CenteredKeysCache(q8(64), center)),
  },
  {
    name: "8-bit g64, keys centered and Hadamard-rotated",
    caches: () => Array.from({ length: model.numLayers }, () => new CenteredKeysCache(rotated(q8(64)))),
  },
  {
    name: "8-bit, keys per channel over 64 positions, values per row, both with the float tail (KIVI)",
    caches: () => Array.from({ length: model.numLayers }, () => new PerChannelKeysCache(64, false, true)),
  },
  {
    name: "8-bit, keys per channel over 64 positions (KIVI), values g64 Hadamard-rotated",
    caches: () =>
      Array.from({ length: model.numLayers }, () => new PerChannelKeysCache(64, false, false, rotated(q8(64)))),
  },
  {
    name: "8-bit, keys per channel over 64 positions (KIVI), values g32",
    caches: () => Array.from({ length: model.numLayers }, () => new PerChannelKeysCache(64, false, false, q8(32))),
  },
  {
    name: "8-bit g64, keys' last < 64 positions float (KIVI's float tail, per row)",
    caches: () => Array.from({ length: model.numLayers }, () => new PerChannelKeysCache(64, true)),
  },
];
mx.random.seed(0);
const only = args.only?.split(",");
const variants = only ? all.filter((v) => only.some((o) => v.name.includes(o))) : all;

/** Greedy tokens after `prompt` through fresh caches, one token per step. */
function greedy(variant: Variant, prompt: number[], count: number): number[] {
  const caches = variant.caches();
  const out: number[] = [];
  try {
    let ids = prompt;
    for (let i = 0; i < count; i++) {
      const next = mx.scope(() => {
        const logits = forward(model, mx.array(Int32Array.from(ids), [1, ids.length]), caches);
        const last = mx.slice(logits, [0, ids.length - 1, 0], [1, ids.length, vocab]);
        return mx.argmax(last, -1).item();
      });
      out.push(next);
      ids = [next];
    }
  } finally {
    freeCaches(caches);
  }
  return out;
}

/** Logits [T, vocab] (float32) predicting each answer token, the sequence in one pass. */
function teacherForced(variant: Variant, prompt: number[], answer: number[]): MxArray {
  const sequence = [...prompt, ...answer.slice(0, -1)];
  const caches = variant.caches();
  try {
    return mx.keep(
      mx.scope(() =>
        mx.astype(
          mx.slice(
            forward(model, mx.array(Int32Array.from(sequence), [1, sequence.length]), caches),
            [0, prompt.length - 1, 0],
            [1, sequence.length, vocab],
          ),
          mx.Dtype.float32,
        ),
      ),
    );
  } finally {
    freeCaches(caches);
  }
}

// ---- per-layer error of the keys and values themselves ---------------------------------
/** Relative error ‖x − q(x)‖ / ‖x‖ and the mean row's max|x| / rms(x) (outlier channels). */
function errorOf(x: MxArray, f: Transform): number {
  return mx.scope(() => {
    const e = mx.subtract(f(x), x);
    return Math.sqrt(mx.sum(mx.square(e)).item() / mx.sum(mx.square(x)).item());
  });
}
function peakToRms(x: MxArray): number {
  return mx.scope(() => {
    const peak = mx.max(mx.abs(x), -1);
    const rms = mx.sqrt(mx.mean(mx.square(x), -1));
    return mx.mean(mx.divide(peak, rms)).item();
  });
}

const promptSet: string[] = args["prompt-file"] ? await Bun.file(args["prompt-file"]).json() : prompts;
const questions = promptSet.slice(0, Number(args.prompts));
const answerTokens = Number(args.tokens);
{
  const prompt = promptTokens(lm.tokenizer, questions[0]!);
  const caches = makeCaches(model);
  mx.scope(() => forward(model, mx.array(Int32Array.from(prompt), [1, prompt.length]), caches));
  console.log(`Per-layer quantization error on prompt 1 (${prompt.length} positions), relative RMS error:\n`);
  console.log(
    "| layer | keys peak/rms | keys 8-bit g64 | keys 8-bit g32 | keys 8-bit g64 sym | values peak/rms | values 8-bit g64 | values 8-bit g32 | keys float16 |",
  );
  console.log("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
  caches.forEach((c, layer) => {
    const held = (t: MxArray) => mx.slice(t, [0, 0, 0, 0], [1, t.shape[1]!, c.offset, t.shape[3]!]);
    const [k, v] = [held(c.keys![0]!), held(c.values![0]!)];
    const cells = [
      peakToRms(k).toFixed(2),
      errorOf(k, q8(64)).toExponential(2),
      errorOf(k, q8(32)).toExponential(2),
      errorOf(k, (x) => symmetricRoundTrip(x, 8, 64)).toExponential(2),
      peakToRms(v).toFixed(2),
      errorOf(v, q8(64)).toExponential(2),
      errorOf(v, q8(32)).toExponential(2),
      errorOf(k, toF16).toExponential(2),
    ];
    console.log(`| ${layer} | ${cells.join(" | ")} |`);
  });
  freeCaches(caches);
}

// ---- greedy agreement and logit difference, all variants per prompt ---------------------
interface Tally {
  identical32: number;
  agreeing32: number;
  identical16: number;
  logitDiff: number[];
  firsts: (number | null)[];
}
const tallies = new Map<string, Tally>(
  variants.map((v) => [v.name, { identical32: 0, agreeing32: 0, identical16: 0, logitDiff: [], firsts: [] }]),
);
const float16 = all[0]!;
const started = performance.now();
for (const question of questions) {
  const prompt = promptTokens(lm.tokenizer, question);
  const answer = greedy(reference, prompt, answerTokens);
  const answer16 = variants.includes(float16) ? undefined : greedy(float16, prompt, answerTokens);
  const logits32 = teacherForced(reference, prompt, answer);
  const answers = new Map<string, number[]>();
  for (const variant of variants) answers.set(variant.name, greedy(variant, prompt, answerTokens));
  const reference16 = answer16 ?? answers.get(float16.name)!;
  for (const variant of variants) {
    const t = tallies.get(variant.name)!;
    const mine = answers.get(variant.name)!;
    const first = mine.findIndex((token, j) => token !== answer[j]);
    t.firsts.push(first < 0 ? null : first);
    t.identical32 += first < 0 ? 1 : 0;
    t.agreeing32 += first < 0 ? answer.length : first;
    t.identical16 += mine.every((token, j) => token === reference16[j]) ? 1 : 0;
    const logits = teacherForced(variant, prompt, answer);
    t.logitDiff.push(mx.scope(() => mx.mean(mx.abs(mx.subtract(logits, logits32))).item()));
    logits.free();
  }
  logits32.free();
  process.stderr.write(`${((performance.now() - started) / 1000).toFixed(0)} s: ${question}\n`);
}

console.log(
  `\nGreedy agreement over ${questions.length} prompts × ${answerTokens} tokens, against the float32 cache and a float16 cache:\n`,
);
console.log(
  "| scheme | identical to float32 | tokens before the first difference | identical to float16 | mean abs logit diff vs float32 | first difference per prompt |",
);
console.log("|---|---:|---:|---:|---:|---|");
for (const variant of variants) {
  const t = tallies.get(variant.name)!;
  const diff = t.logitDiff.reduce((a, b) => a + b, 0) / t.logitDiff.length;
  console.log(
    `| ${variant.name} | ${t.identical32} of ${questions.length} | ${t.agreeing32} | ${t.identical16} of ${questions.length} | ${diff.toFixed(4)} | ${t.firsts.map((f) => f ?? "-").join(", ")} |`,
  );
}
