// Sampling filters, seeds and stop strings.
import { beforeAll, describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import { generateTokens } from "../src/engine/batch";
import { buildModel, freeCaches, makeCaches, parseConfig, Weights, type DecoderModel } from "../src/models";
import {
  defaultSampling,
  logitsProcessors,
  makeSampler,
  penalizeRepetition,
  samplingLogits,
  validateSampling,
  type SamplingParams,
} from "../src/engine/sampling";
import { StopMatcher } from "../src/engine/stop";
import { tinyConfig, tinyWeights } from "./helpers/tiny-model";

const logprobsOf = (p: number[]) => mx.log(mx.array(p, [1, p.length]));
const params = (o: Partial<SamplingParams>): SamplingParams => ({ ...defaultSampling, ...o });
const draw = (o: Partial<SamplingParams>, p: number[], n: number) =>
  mx.scope(() => {
    const sample = makeSampler(params(o));
    return Array.from({ length: n }, () => mx.scope(() => sample(logprobsOf(p)).item()));
  });

describe("sampler", () => {
  test("temperature 0 is argmax", () => {
    expect(draw({ temperature: 0 }, [0.1, 0.6, 0.3], 3)).toEqual([1, 1, 1]);
  });

  test("the same seed gives the same draws; another seed gives others", () => {
    const p = Array.from({ length: 50 }, () => 1 / 50);
    const a = draw({ temperature: 1, seed: 42 }, p, 20);
    expect(draw({ temperature: 1, seed: 42 }, p, 20)).toEqual(a);
    expect(draw({ temperature: 1, seed: 43 }, p, 20)).not.toEqual(a);
  });

  test("top-k keeps only the k most likely tokens", () => {
    const picks = new Set(draw({ temperature: 1, topK: 2, seed: 1 }, [0.3, 0.05, 0.4, 0.25], 60));
    expect([...picks].sort()).toEqual([0, 2]);
  });

  test("top-p keeps the smallest set reaching p", () => {
    const picks = new Set(draw({ temperature: 1, topP: 0.65, seed: 1 }, [0.5, 0.3, 0.15, 0.05], 80));
    expect([...picks].sort()).toEqual([0, 1]);
  });

  test("top-p keeps every token as likely as the last one it needs, as mlx-lm's threshold does: a tie is kept whole", () => {
    // 0.4 alone is short of 0.5; a 0.3 is needed, and the other 0.3 is as likely: both stay. Ranked
    // by a sort, one of the two was dropped for its place in the order (its id), and never drawn.
    expect(new Set(draw({ temperature: 1, topP: 0.5, seed: 6 }, [0.3, 0.4, 0.3], 60))).toEqual(new Set([0, 1, 2]));
    expect(new Set(draw({ temperature: 1, topP: 0.3, seed: 6 }, [0.3, 0.4, 0.3], 30))).toEqual(new Set([1]));
  });

  test("a top-p too small for float32 (1 - p rounds to 1, or p itself to 0) keeps the most likely token, never none", () => {
    for (const topP of [1e-9, 1e-50])
      expect(new Set(draw({ temperature: 1, topP, seed: 4 }, [0.25, 0.4, 0.2, 0.15], 40))).toEqual(new Set([1]));
  });

  test("top-p keeps what mlx-lm's keeps of a half-precision model's logprobs (their sum in float32)", () => {
    // A Zipf distribution over SmolLM2's vocabulary: in bfloat16 the running sum stalled near 0.46,
    // and top_p 0.9 kept 284 of the ~15,750 tokens it should.
    const vocab = 49152;
    const logits = Float32Array.from({ length: vocab }, (_, i) => -Math.log(i + 1));
    for (const dtype of [mx.Dtype.float32, mx.Dtype.bfloat16, mx.Dtype.float16]) {
      const [row, filtered] = mx.scope(() => {
        const x = mx.astype(mx.array(logits, [1, vocab]), dtype);
        const logprobs = mx.subtract(x, mx.logsumexp(x, -1, true));
        const kept = samplingLogits(params({ temperature: 1, topP: 0.9 }), logprobs);
        return [logprobs, kept].map((a) => mx.astype(a, mx.Dtype.float32).toArray() as number[]);
      });
      // mlx-lm's rule, in float64: every token at least as likely as the last one the 0.9 needs.
      const descending = [...row!].sort((a, b) => b - a);
      const total = descending.reduce((sum, x) => sum + Math.exp(x), 0);
      let mass = 0;
      const last = descending.find((x) => (mass += Math.exp(x)) >= 0.9 * total)!;
      const expected = row!.filter((x) => x >= last).length;
      const kept = filtered!.filter(Number.isFinite).length;
      expect(Math.abs(kept - expected) / expected).toBeLessThan(0.005);
    }
  });

  test("min-p drops tokens below min-p × the best", () => {
    const picks = new Set(draw({ temperature: 1, minP: 0.5, seed: 2 }, [0.45, 0.35, 0.05, 0.15], 80));
    expect([...picks].sort()).toEqual([0, 1]);
  });

  test("min-p 1 keeps only the most likely token (greedy), as mlx-lm, vLLM and llama.cpp take it", () => {
    expect(() => validateSampling(params({ minP: 1 }))).not.toThrow();
    expect(new Set(draw({ temperature: 2, minP: 1, seed: 5 }, [0.3, 0.35, 0.05, 0.3], 40))).toEqual(new Set([1]));
  });

  test("top-k with top-p keeps a token even when the k most likely hold less than 1 - p", () => {
    // 1,000 near-equal tokens: the two best hold ~0.2% of the mass, far below 1 - 0.9.
    const p = Array.from({ length: 1000 }, (_, i) => (i === 5 || i === 7 ? 2 : 1));
    const total = p.reduce((a, b) => a + b, 0);
    const picks = new Set(
      draw(
        { temperature: 1, topK: 2, topP: 0.9, seed: 3 },
        p.map((x) => x / total),
        40,
      ),
    );
    expect([...picks].sort()).toEqual([5, 7]);
  });

  test("a huge temperature draws among the tokens the filters keep, never one they dropped", () => {
    // 1 / 1e50 is 0 in float32: a dropped token's -Infinity times it was NaN, and the draw noise.
    const p = [0.1, 0.5, 0.3, 0.1];
    expect(new Set(draw({ temperature: 1e50, topK: 1, seed: 1 }, p, 30))).toEqual(new Set([1]));
    expect(new Set(draw({ temperature: 1e50, topK: 2, seed: 2 }, p, 60))).toEqual(new Set([1, 2]));
  });

  test("repetition penalty divides positive and multiplies negative logits of recent tokens", () => {
    const out = mx.scope(() =>
      penalizeRepetition(mx.array([2, -2, 4], [1, 3]), mx.array(Int32Array.from([0, 1]), [1, 2]), 2).toArray(),
    );
    expect(out).toEqual([1, -4, 4]);
  });

  test("a repetition penalty far below 1 makes a seen token the most likely, never an infinite logit (a NaN logprob)", () => {
    // 20 / 1e-50 is past float32's largest number (and 1e-50 itself is 0 there): the seen token's
    // logit was Infinity, every logprob NaN, and greedy decoding picked a token regardless of them.
    for (const dtype of [mx.Dtype.float32, mx.Dtype.bfloat16, mx.Dtype.float16])
      for (const penalty of [1e-50, 1e-38, 1e-6]) {
        const logprobs = mx.scope(() => {
          const logits = mx.astype(mx.array([5, 20, -3, 0], [1, 4]), dtype);
          const seen = penalizeRepetition(logits, mx.array(Int32Array.from([1, 2, 3]), [1, 3]), penalty);
          return mx.astype(mx.subtract(seen, mx.logsumexp(seen, -1, true)), mx.Dtype.float32).toArray() as number[];
        });
        expect(logprobs.every((x) => !Number.isNaN(x))).toBe(true);
        expect(logprobs.indexOf(Math.max(...logprobs))).toBe(1);
        expect(logprobs[1]).toBeCloseTo(0, 3);
      }
  });

  test("logit_bias is added before the repetition penalty scales a logit, as mlx-lm, llama.cpp and vLLM apply them", () => {
    // Token 0 (logit -1) was seen and is biased by +5: (-1 + 5) / 2 = 2, where penalizing first gave -1 × 2 + 5 = 3.
    const p = params({ repetitionPenalty: 2, repetitionContext: 20, logitBias: new Map([[0, 5]]) });
    const out = mx.scope(() => {
      let logits = mx.array([-1, 0.5, 0.25], [1, 3]);
      for (const process of logitsProcessors(p, 1)) logits = process([0], logits);
      return logits.toArray();
    });
    expect(out).toEqual([2, 0.5, 0.25]);
  });

  test("presence and frequency penalties count the answer (OpenAI's), or the repetition window, prompt included (Ollama's)", () => {
    const penalized = (o: Partial<SamplingParams>, history: number[], pending?: number) =>
      mx.scope(() => {
        const p = params({ presencePenalty: 1, frequencyPenalty: 0.5, repetitionContext: 3, ...o });
        let logits = mx.zeros([1, 4]);
        const latest = pending === undefined ? undefined : mx.array(Int32Array.from([pending]));
        for (const process of logitsProcessors(p, 2)) logits = process(history, logits, latest);
        return logits.toArray();
      });
    // A prompt of [0, 1], an answer of [1, 2]: the window of 3 holds 1, 1, 2.
    expect(penalized({}, [0, 1, 1, 2])).toEqual([0, -1.5, -1.5, 0]);
    expect(penalized({ penaltiesInWindow: true }, [0, 1, 1, 2])).toEqual([0, -2, -1.5, 0]);
    // The same with the latest token still on its way (the pipelined step).
    expect(penalized({ penaltiesInWindow: true }, [0, 1, 1], 2)).toEqual([0, -2, -1.5, 0]);
    expect(penalized({ penaltiesInWindow: true, repetitionContext: 0 }, [0, 1, 1], 2)).toEqual([0, 0, 0, 0]);
  });

  test("invalid values are refused with the parameter named", () => {
    expect(() => validateSampling(params({ temperature: -1 }))).toThrow(/temperature/);
    expect(() => validateSampling(params({ topP: 0 }))).toThrow(/top_p/);
    expect(() => validateSampling(params({ topK: 1.5 }))).toThrow(/top_k/);
    expect(() => validateSampling(params({ minP: 1.5 }))).toThrow(/min_p/);
    expect(() => validateSampling(params({ repetitionPenalty: 0 }))).toThrow(/repetition/);
  });
});

describe("sampling a tiny model, against the distribution computed from its logits", () => {
  let model: DecoderModel;
  beforeAll(() => {
    const o = { vocabSize: 64 };
    model = buildModel(new Weights(tinyWeights(o), parseConfig(tinyConfig(o))));
  });
  const prompt = [5, 17, 20, 3, 17, 5];

  /** The model's logits after `ids`. */
  function logitsAfter(ids: number[]): number[] {
    const caches = makeCaches(model);
    const logits: number[] = mx.scope(() => {
      const hidden = model.layers(model.embed(mx.array(Int32Array.from(ids), [1, ids.length])), caches);
      return mx.reshape(model.head(mx.slice(hidden, [0, ids.length - 1], [1, ids.length])), [-1]).toArray();
    });
    freeCaches(caches);
    return logits;
  }

  function logSoftmax(logits: number[]): number[] {
    const most = Math.max(...logits);
    const total = most + Math.log(logits.reduce((sum, x) => sum + Math.exp(x - most), 0));
    return logits.map((x) => x - total);
  }

  /** The distribution a sampler should draw from: top-p, min-p and top-k as mlx-lm applies them, then the temperature. */
  function expected(p: SamplingParams, logprobs: number[]): number[] {
    const order = [...logprobs.keys()].sort((a, b) => logprobs[b]! - logprobs[a]!);
    let kept = order;
    if (p.topP < 1) {
      let above = 0; // the mass of the tokens more likely than this one
      kept = kept.filter((id) => (above += Math.exp(logprobs[id]!)) - Math.exp(logprobs[id]!) < p.topP);
    }
    if (p.minP > 0) kept = kept.filter((id) => logprobs[id]! >= logprobs[order[0]!]! + Math.log(p.minP));
    if (p.topK > 0) kept = kept.slice(0, p.topK);
    const weights = logprobs.map((x, id) => (kept.includes(id) ? Math.exp(x / p.temperature) : 0));
    const total = weights.reduce((a, b) => a + b, 0);
    return weights.map((w) => w / total);
  }

  test.each([
    { temperature: 1.5 },
    { temperature: 0.7, topK: 10, topP: 0.8, minP: 0.05 },
    { temperature: 1, topP: 0.5 },
    { temperature: 1, minP: 0.3 },
  ])("the first tokens of 2,000 seeded answers are drawn from softmax(logits / T) after the filters: %o", (o) => {
    const p = params(o);
    const draws = 2000;
    const counts = new Array<number>(64).fill(0);
    for (let seed = 0; seed < draws; seed++)
      for (const { token } of generateTokens(model, { promptIds: prompt, sampling: { ...p, seed }, maxTokens: 1 }))
        counts[token]!++;
    const q = expected(p, logSoftmax(logitsAfter(prompt)));
    // Never a token the filters dropped; and a chi-square far below what a wrong distribution gives.
    expect(counts.filter((_, id) => q[id] === 0).every((n) => n === 0)).toBe(true);
    const cells = q.map((x, id) => [x * draws, counts[id]!] as const).filter(([e]) => e > 0);
    const chi = cells.reduce((sum, [e, n]) => sum + (n - e) ** 2 / e, 0);
    const df = cells.length - 1;
    expect(chi).toBeLessThan(df + 5 * Math.sqrt(2 * df));
  });

  // The presence and frequency penalties over the answer (OpenAI's), or over the repetition window (Ollama's).
  test.each([false, true])(
    "each step's logprobs are the log-softmax of the logits after logit_bias, then the penalties, as computed here (penalties in the window: %p)",
    (penaltiesInWindow) => {
      const p = params({
        temperature: 1,
        seed: 1,
        repetitionPenalty: 1.5,
        repetitionContext: 4,
        presencePenalty: 0.5,
        frequencyPenalty: 0.7,
        penaltiesInWindow,
        logitBias: new Map([
          [5, 2],
          [17, 1.5],
          [9, -1],
        ]),
      });
      const history = [...prompt];
      const request = {
        promptIds: prompt,
        sampling: p,
        maxTokens: 12,
        processors: logitsProcessors(p, prompt.length),
        keepLogprobs: true,
      };
      for (const event of generateTokens(model, request)) {
        const row = event.logprobs!.toArray();
        event.logprobs!.free();
        const logits = logitsAfter(history);
        for (const [id, bias] of p.logitBias!) logits[id]! += bias;
        const recent = history.slice(-p.repetitionContext);
        for (const id of new Set(recent))
          logits[id] = logits[id]! < 0 ? logits[id]! * p.repetitionPenalty : logits[id]! / p.repetitionPenalty;
        const counted = penaltiesInWindow ? recent : history.slice(prompt.length);
        for (const id of new Set(counted))
          logits[id]! -= p.presencePenalty! + p.frequencyPenalty! * counted.filter((t) => t === id).length;
        const reference = logSoftmax(logits);
        row.forEach((x, id) => expect(x).toBeCloseTo(reference[id]!, 4));
        expect(event.logprob).toBeCloseTo(row[event.token]!, 6);
        history.push(event.token);
      }
    },
  );
});

describe("stop strings", () => {
  const feed = (stops: string[], chunks: string[]) => {
    const m = new StopMatcher(stops);
    let shown = "";
    for (const c of chunks) {
      const r = m.push(c);
      shown += r.text;
      if (r.stopped) return { shown, stopped: true };
    }
    return { shown: shown + m.flush(), stopped: false };
  };

  test("text before a stop string is shown; the stop string and what follows are not", () => {
    expect(feed(["END"], ["hello E", "N", "D and more"])).toEqual({ shown: "hello ", stopped: true });
  });

  test("a partial match that does not complete is released", () => {
    expect(feed(["END"], ["hello E", "N", "ough"])).toEqual({ shown: "hello ENough", stopped: false });
  });

  test("the earliest of several stop strings wins", () => {
    expect(feed(["world", "lo w"], ["hello world"])).toEqual({ shown: "hel", stopped: true });
  });

  test("a stop string matches whole characters: never half of an emoji's surrogate pair", () => {
    // JSON lets a client send a lone surrogate; matched inside "🐦" (\ud83d\udc26) it left half the
    // pair as the answer, which clients show as U+FFFD. Python's servers match code points alike.
    expect(feed(["\udc26"], ["a 🐦", " b"])).toEqual({ shown: "a 🐦 b", stopped: false });
    expect(feed(["\ud83d"], ["a 🐦", " b"])).toEqual({ shown: "a 🐦 b", stopped: false });
    expect(feed(["\udc26", "b"], ["a 🐦 ", "b"])).toEqual({ shown: "a 🐦 ", stopped: true });
    expect(feed(["🐦"], ["a \ud83d\udc26"])).toEqual({ shown: "a ", stopped: true });
  });

  test("text that cannot start a stop string is released at once", () => {
    const m = new StopMatcher(["###"]);
    expect(m.push("abc#").text).toBe("abc");
    expect(m.push("x").text).toBe("#x");
  });
});
