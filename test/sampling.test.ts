// Sampling filters, seeds and stop strings.
import { describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import {
  defaultSampling,
  logitsProcessors,
  makeSampler,
  penalizeRepetition,
  validateSampling,
  type SamplingParams,
} from "../src/engine/sampling";
import { StopMatcher } from "../src/engine/stop";

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

  test("a top-p too small for float32 (1 - p rounds to 1) keeps the most likely token, never none", () => {
    expect(new Set(draw({ temperature: 1, topP: 1e-9, seed: 4 }, [0.25, 0.4, 0.2, 0.15], 40))).toEqual(new Set([1]));
  });

  test("min-p drops tokens below min-p × the best", () => {
    const picks = new Set(draw({ temperature: 1, minP: 0.5, seed: 2 }, [0.45, 0.35, 0.05, 0.15], 80));
    expect([...picks].sort()).toEqual([0, 1]);
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

  test("invalid values are refused with the parameter named", () => {
    expect(() => validateSampling(params({ temperature: -1 }))).toThrow(/temperature/);
    expect(() => validateSampling(params({ topP: 0 }))).toThrow(/top_p/);
    expect(() => validateSampling(params({ topK: 1.5 }))).toThrow(/top_k/);
    expect(() => validateSampling(params({ minP: 1 }))).toThrow(/min_p/);
    expect(() => validateSampling(params({ repetitionPenalty: 0 }))).toThrow(/repetition/);
  });
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

  test("text that cannot start a stop string is released at once", () => {
    const m = new StopMatcher(["###"]);
    expect(m.push("abc#").text).toBe("abc");
    expect(m.push("x").text).toBe("#x");
  });
});
