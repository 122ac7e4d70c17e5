// The library's options as a caller writes them (Bun, in process; test/library-node.test.ts runs
// the package on Node and Bun): a bad value is an InvalidParameterError that names the option by
// its own name, before any generation starts, and never a TypeError from deep in the engine nor a
// value quietly ignored. Needs the default model in the store.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { join } from "node:path";
import { InvalidParameterError, load, type GenerateOptions, type Model } from "../src/index";

process.env.MLX_HOME ??= join(import.meta.dir, "..", ".cache", "mlx-home");

let model: Model;
beforeAll(async () => {
  model = await load();
});
afterAll(() => model?.close());

/** The error a call fails with, as "param: message"; "no error" when it succeeds. */
async function errorOf(call: () => Promise<unknown>): Promise<string> {
  try {
    await call();
    return "no error";
  } catch (error) {
    if (!(error instanceof InvalidParameterError)) return `${(error as Error).name}: ${(error as Error).message}`;
    return `${error.param}: ${error.message}`;
  }
}

describe("the library's options", () => {
  test("a bad sampling option is named as the library spells it, in generate, stream and chat", async () => {
    const cases: [GenerateOptions, string][] = [
      [{ topP: 2 }, "topP: topP must be in (0, 1] (got 2)"],
      [{ topK: 2.5 }, "topK: topK must be a whole number >= 0 (got 2.5)"],
      [{ minP: 5 }, "minP: minP must be in [0, 1) (got 5)"],
      [{ repetitionPenalty: -1 }, "repetitionPenalty: repetitionPenalty must be > 0 (got -1)"],
      [{ temperature: -1 }, "temperature: temperature must be >= 0 (got -1)"],
    ];
    const chat = model.chat();
    for (const [options, expected] of cases) {
      const o = { ...options, maxTokens: 3 };
      expect(await errorOf(() => model.generate("Hi", o))).toBe(expected);
      expect(await errorOf(async () => model.stream("Hi", o).next())).toBe(expected);
      expect(await errorOf(() => chat.send("Hi", o))).toBe(expected);
    }
    expect(chat.messages).toEqual([]);
  }, 120_000);

  test("an empty stop string, a signal that is no AbortSignal and a system prompt that is no string are refused", async () => {
    const bad = (o: object) => o as GenerateOptions;
    expect(await errorOf(() => model.generate("Hi", { maxTokens: 3, stop: "" }))).toBe(
      "stop: stop must be a non-empty string or an array of them",
    );
    expect(await errorOf(() => model.generate("Hi", bad({ maxTokens: 3, signal: "stop" })))).toBe(
      "signal: signal must be an AbortSignal",
    );
    expect(await errorOf(() => model.generate("Hi", bad({ maxTokens: 3, system: 5 })))).toBe(
      "system: system must be a string",
    );
    expect(await errorOf(async () => model.chat(bad({ system: 5 })))).toBe("system: system must be a string");
    // The good values still work.
    const controller = new AbortController();
    const result = await model.generate("Hi", { maxTokens: 3, stop: "\n\n", signal: controller.signal, system: "Hi" });
    expect(result.finishReason).toBe("length");
  }, 120_000);

  test("load() refuses a batch size that would queue every call forever, and a name that is no string", async () => {
    for (const maxBatch of [0, -1, 1.5])
      expect(await errorOf(() => load(undefined, { maxBatch }))).toBe(
        `maxBatch: maxBatch must be a whole number > 0 (got ${maxBatch})`,
      );
    expect(await errorOf(() => load(5 as unknown as string))).toBe("name: the model name must be a string");
  }, 120_000);
});
