// The library's options as a caller writes them (Bun, in process; test/library-node.test.ts runs
// the package on Node and Bun): a bad value is an InvalidParameterError that names the option by
// its own name, before any generation starts, and never a TypeError from deep in the engine nor a
// value quietly ignored; close() stops what runs on the model. Needs the default model in the store.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import {
  BudgetError,
  ConfigError,
  ContextLengthError,
  InvalidParameterError,
  load,
  SchemaError,
  UnsupportedError,
  type GenerateOptions,
  type Model,
} from "../src/index";
import { memoryFigures } from "../src/engine/device";
import { errorOf } from "./helpers/library";
import { writeTinyModel } from "./helpers/tiny-model";

process.env.MLX_HOME ??= join(import.meta.dir, "..", ".cache", "mlx-home");

let model: Model;
beforeAll(async () => {
  model = await load();
});
afterAll(() => model?.close());

describe("the library's options", () => {
  test("a bad sampling option is named as the library spells it, in generate, stream and chat", async () => {
    const cases: [GenerateOptions, string][] = [
      [{ topP: 2 }, "topP: topP must be in (0, 1] (got 2)"],
      [{ topK: 2.5 }, "topK: topK must be a whole number >= 0 (got 2.5)"],
      [{ minP: 5 }, "minP: minP must be in [0, 1] (got 5)"],
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

  test("a number option of another type (a string, null) is refused as such, never compared or used as it is", async () => {
    const bad = (o: object) => o as GenerateOptions;
    // "0.5" <= 1 and null >= 0 are true in JavaScript: topP "0.5" and minP null used to go through
    // to the sampler, and temperature "0.5" was refused as "must be >= 0 (got 0.5)".
    const cases: [object, string][] = [
      [{ topP: "0.5" }, 'topP: topP must be a number (got "0.5")'],
      [{ minP: null }, "minP: minP must be a number (got null)"],
      [{ minP: "0.1" }, 'minP: minP must be a number (got "0.1")'],
      [{ temperature: "0.5" }, 'temperature: temperature must be a number (got "0.5")'],
      [{ repetitionPenalty: "1.2" }, 'repetitionPenalty: repetitionPenalty must be a number (got "1.2")'],
      [{ topK: "5" }, 'topK: topK must be a number (got "5")'],
      [{ seed: "1" }, 'seed: seed must be a number (got "1")'],
      [{ maxTokens: "3" }, 'maxTokens: maxTokens must be a number (got "3")'],
      [{ thinkingBudget: "5" }, 'thinkingBudget: thinkingBudget must be a number (got "5")'],
    ];
    const chat = model.chat();
    for (const [options, expected] of cases) {
      const o = bad({ maxTokens: 3, ...options });
      expect(await errorOf(() => model.generate("Hi", o))).toBe(expected);
      expect(await errorOf(async () => model.stream("Hi", o).next())).toBe(expected);
      expect(await errorOf(() => chat.send("Hi", o))).toBe(expected);
    }
    expect(chat.messages).toEqual([]);
  }, 120_000);

  test("a format that maxTokens cannot hold is a BudgetError that names maxTokens, in generate and chat", async () => {
    const schema = { type: "object", properties: { name: { type: "string", minLength: 30 } }, required: ["name"] };
    const budgetError = async (call: () => Promise<unknown>) => {
      try {
        await call();
        return "no error";
      } catch (error) {
        // Exported, so that a caller can tell it from other failures.
        if (!(error instanceof BudgetError)) return `${(error as Error).name}: ${(error as Error).message}`;
        return `${error.option}: ${error.message}`;
      }
    };
    const expected =
      /^maxTokens: maxTokens 5 is too small for this format: the shortest valid answer takes \d+ tokens$/;
    expect(await budgetError(() => model.generate("A person", { maxTokens: 5, format: { schema } }))).toMatch(expected);
    const chat = model.chat();
    expect(await budgetError(() => chat.send("A person", { maxTokens: 5, format: { schema } }))).toMatch(expected);
    expect(chat.messages).toEqual([]);
  }, 120_000);

  test("a schema that cannot be enforced is a SchemaError naming format, in generate, stream and chat", async () => {
    // multipleOf is JSON Schema that no grammar enforces: it came as an InvalidParameterError,
    // and the exported SchemaError was never thrown to a library caller.
    const format = { schema: { type: "object", properties: { n: { type: "number", multipleOf: 2 } } } };
    const schemaError = async (call: () => Promise<unknown>) => {
      try {
        await call();
        return "no error";
      } catch (error) {
        if (!(error instanceof SchemaError)) return `${(error as Error).name}: ${(error as Error).message}`;
        // Still an InvalidParameterError, as a caller that catches those for bad options expects.
        expect(error).toBeInstanceOf(InvalidParameterError);
        return `${error.param}: ${error.message.includes("multipleOf")}`;
      }
    };
    expect(await schemaError(() => model.generate("A number", { maxTokens: 5, format }))).toBe("format: true");
    expect(await schemaError(() => model.stream("A number", { maxTokens: 5, format }).next())).toBe("format: true");
    const chat = model.chat();
    expect(await schemaError(() => chat.send("A number", { maxTokens: 5, format }))).toBe("format: true");
    expect(chat.messages).toEqual([]);
  }, 120_000);

  test("an empty or null stop, a signal that is no AbortSignal, a system prompt that is no string and dimensions that are no whole number are refused", async () => {
    const bad = (o: object) => o as GenerateOptions;
    expect(await errorOf(() => model.generate("Hi", { maxTokens: 3, stop: "" }))).toBe(
      "stop: stop must be a non-empty string or an array of them",
    );
    // null was taken as no stop at all, where every other option refuses it.
    for (const stop of [null, 5, { text: "\n" }])
      expect(await errorOf(() => model.generate("Hi", bad({ maxTokens: 3, stop })))).toBe(
        "stop: stop must be a non-empty string or an array of them",
      );
    expect(await errorOf(() => model.generate("Hi", bad({ maxTokens: 3, signal: "stop" })))).toBe(
      "signal: signal must be an AbortSignal",
    );
    expect(await errorOf(() => model.generate("Hi", bad({ maxTokens: 3, system: 5 })))).toBe(
      "system: system must be a string",
    );
    expect(await errorOf(async () => model.chat(bad({ system: 5 })))).toBe("system: system must be a string");
    // The range alone was said of them ("must be between 1 and the model's 576"), which "8" is.
    for (const [dimensions, shown] of [
      ["8", '"8"'],
      [1.5, "1.5"],
      [null, "null"],
    ] as const)
      expect(await errorOf(() => model.embed(["Hi"], { dimensions } as { dimensions: number }))).toBe(
        `dimensions: dimensions must be a whole number (got ${shown})`,
      );
    // The good values still work.
    const controller = new AbortController();
    const result = await model.generate("Hi", { maxTokens: 3, stop: "\n\n", signal: controller.signal, system: "Hi" });
    expect(result.finishReason).toBe("length");
  }, 120_000);

  test("a misspelt or unknown option, options that are no object and wrong-typed flags are refused, never ignored", async () => {
    const bad = (o: unknown) => o as never;
    // Left out, `max_tokens` let the answer run until the context was full.
    expect(await errorOf(() => model.generate("Hi", bad({ max_tokens: 3 })))).toBe(
      "max_tokens: unknown option max_tokens (did you mean maxTokens?)",
    );
    expect(await errorOf(async () => model.stream("Hi", bad({ maxTokens: 3, stop_sequences: ["."] })).next())).toMatch(
      /^stop_sequences: unknown option stop_sequences \(the options are maxTokens, temperature, /,
    );
    expect(await errorOf(() => model.generate("Hi", bad(null)))).toBe(
      "options: the options must be an object (got null)",
    );
    expect(await errorOf(() => model.generate("Hi", bad("fast")))).toBe(
      'options: the options must be an object (got "fast")',
    );
    // "no" is truthy: taken as it was, it turned thinking on.
    expect(await errorOf(() => model.generate("Hi", bad({ maxTokens: 3, think: "no" })))).toBe(
      "think: think must be true or false",
    );
    expect(await errorOf(() => model.generate("Hi", bad({ maxTokens: 3, raw: "yes" })))).toBe(
      "raw: raw must be true or false",
    );
    expect(await errorOf(() => model.embed(["Hi"], bad(null)))).toBe(
      "options: the options must be an object (got null)",
    );
    expect(await errorOf(() => model.embed(["Hi"], bad({ dimension: 8 })))).toBe(
      "dimension: unknown option dimension (the options are dimensions, signal)",
    );
    expect(await errorOf(async () => model.chat(bad(null)))).toBe("options: the options must be an object (got null)");
    // The text at fault is named as the caller wrote the argument, not as the server's `input`.
    expect(await errorOf(() => model.embed(["Hi", ""]))).toBe("texts.1: 'texts.1' is empty");
    expect(await errorOf(() => load(undefined, bad({ max_batch: 2 })))).toBe(
      "max_batch: unknown option max_batch (did you mean maxBatch?)",
    );
    expect(await errorOf(() => load(undefined, bad({ onProgress: "yes" })))).toBe(
      "onProgress: onProgress must be a function",
    );
    // A chat's system prompt is the chat's own; a turn that took one would drop it without a word.
    const chat = model.chat();
    expect(await errorOf(() => chat.send("Hi", bad({ maxTokens: 3, system: "Be brief." })))).toMatch(
      /^system: unknown option system \(the options are /,
    );
    expect(chat.messages).toEqual([]);
  }, 120_000);

  test("a format with a key it does not take, or a strict that is no boolean, is refused, never ignored", async () => {
    const schema = { type: "object", properties: { name: { type: "string" } }, required: ["name"] };
    const bad = (format: object) => ({ maxTokens: 3, format }) as GenerateOptions;
    // Both went through: the misspelt key ignored, "no" taken as a strict schema.
    expect(await errorOf(() => model.generate("Hi", bad({ schema, stict: false })))).toBe(
      "format: format takes schema and strict, not stict",
    );
    expect(await errorOf(() => model.generate("Hi", bad({ schema, strict: "no" })))).toBe(
      'format: format.strict must be true or false (got "no")',
    );
    expect(await errorOf(() => model.chat().send("Hi", bad({ schema, name: "person" })))).toBe(
      "format: format takes schema and strict, not name",
    );
    const result = await model.generate("A person", { maxTokens: 20, format: { schema, strict: false } });
    expect(JSON.parse(result.text)).toHaveProperty("name");
  }, 120_000);

  test("a chat turn's stop ends its answer where a stop string first appears, as generate's does", async () => {
    const free = await model.chat().send("Name three colours.", { maxTokens: 12 });
    const word = free.text.trim().split(/\s+/)[2]!;
    const expected = [free.text.slice(0, free.text.indexOf(word)), "stop"];
    // The option was taken, and then left out of the turn: the answer ran on to maxTokens.
    const chat = model.chat();
    const stopped = await chat.send("Name three colours.", { maxTokens: 12, stop: word });
    expect([stopped.text, stopped.finishReason]).toEqual(expected);
    expect(chat.messages[1]?.content).toBe(expected[0]);
    let streamed = "";
    for await (const piece of model.chat().stream("Name three colours.", { maxTokens: 12, stop: ["\u0000", word] }))
      streamed += piece;
    expect(streamed).toBe(expected[0]!);
  }, 120_000);

  test("a list of messages is refused empty, or with the options of a text prompt it would drop, and a raw text with a system prompt", async () => {
    const hi = [{ role: "user" as const, content: "Hi" }];
    expect(await errorOf(() => model.generate([], { maxTokens: 3 }))).toBe("prompt: the prompt has no messages");
    expect(await errorOf(() => model.generate(hi, { maxTokens: 3, system: "Be brief." }))).toBe(
      "system: system is for a text prompt: put a system message first in the list",
    );
    expect(await errorOf(() => model.generate(hi, { maxTokens: 3, raw: true }))).toBe(
      "raw: raw is for a text prompt, not a list of messages",
    );
    const result = await model.generate(hi, { maxTokens: 3, raw: false });
    expect(result.finishReason).toBe("length");
    // A raw text goes without the template, the system prompt with it: the system prompt was dropped.
    expect(await errorOf(() => model.generate("Hi", { maxTokens: 3, raw: true, system: "Be brief." }))).toBe(
      "system: system goes through the chat template, which raw leaves out",
    );
    expect((await model.generate("Hi", { maxTokens: 3, raw: false, system: "Be brief." })).finishReason).toBe("length");
  }, 120_000);

  test("load() refuses a batch size that would queue every call forever, and a name that is no string", async () => {
    for (const maxBatch of [0, -1, 1.5])
      expect(await errorOf(() => load(undefined, { maxBatch }))).toBe(
        `maxBatch: maxBatch must be a whole number > 0 (got ${maxBatch})`,
      );
    // "2" was refused as "must be a whole number > 0 (got 2)".
    expect(await errorOf(() => load(undefined, { maxBatch: "2" as unknown as number }))).toBe(
      'maxBatch: maxBatch must be a number (got "2")',
    );
    expect(await errorOf(() => load(5 as unknown as string))).toBe("name: the model name must be a string");
  }, 120_000);

  test("calls past maxBatch wait their turn, none refused: the library's queue has no bound, so it exports no QueueFullError", async () => {
    const one = await load(undefined, { maxBatch: 1 });
    try {
      const results = await Promise.all(Array.from({ length: 6 }, () => one.generate("Hi", { maxTokens: 2 })));
      expect(results.map((r) => r.finishReason)).toEqual(Array(6).fill("length"));
    } finally {
      one.close();
    }
    // It was exported, though no library call could ever throw it.
    expect(Object.keys(await import("../src/index")).filter((name) => name.endsWith("Error"))).not.toContain(
      "QueueFullError",
    );
  }, 120_000);

  test("a malformed models.toml is a ConfigError the caller can import and tell apart", async () => {
    const home = mkdtempSync(join(tmpdir(), "mlx-library-config-"));
    writeFileSync(join(home, "models.toml"), "[models.foo\n");
    const before = process.env.MLX_HOME;
    process.env.MLX_HOME = home;
    try {
      const error = await load("smollm2").then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(ConfigError);
      expect((error as Error).message).toStartWith(join(home, "models.toml"));
    } finally {
      process.env.MLX_HOME = before;
    }
  }, 120_000);

  test("an alias's KV cache, rotating cache and speculation apply, as in mlx run -m", async () => {
    // Before, load() took the alias's weights alone.
    const home = mkdtempSync(join(tmpdir(), "mlx-library-alias-"));
    const tiny = join(home, "tiny");
    writeTinyModel(tiny, { headDim: 64, contextLength: 48 });
    writeFileSync(
      join(home, "models.toml"),
      `[models.tiny-tuned]\nsource = "${tiny}"\nkv_bits = 8\nmax_kv_size = 64\nprompt_lookup = true\nnum_draft = 5\n`,
    );
    const before = process.env.MLX_HOME;
    process.env.MLX_HOME = home;
    try {
      const tuned = await load("tiny-tuned");
      try {
        expect(tuned["lm"].kvQuantization).toEqual({ bits: 8, groupSize: 64 });
        expect(tuned["lm"].maxKvSize).toBe(64);
        expect(tuned["lm"].speculation).toEqual({ numDraft: 5 });
        const r = await tuned.generate("one two one two one two", { raw: true, maxTokens: 100, temperature: 0 });
        // Past the model's 48 positions: the cache rotates.
        expect(r.tokenIds).toHaveLength(100);
      } finally {
        tuned.close();
      }
    } finally {
      process.env.MLX_HOME = before;
    }
  }, 120_000);
});

test("an alias's stop strings, num_predict and num_ctx (a Modelfile's PARAMETERs) apply, as in mlx run -m", async () => {
  const home = mkdtempSync(join(tmpdir(), "mlx-library-limits-"));
  const tiny = join(home, "tiny");
  writeTinyModel(tiny, { contextLength: 256 });
  const before = process.env.MLX_HOME;
  process.env.MLX_HOME = home;
  try {
    const plain = await load(tiny);
    const greedy = { raw: true, temperature: 0 };
    const { text } = await plain.generate("one two", { ...greedy, maxTokens: 8 });
    const three = await plain.generate("one two", { ...greedy, maxTokens: 3 });
    plain.close();
    const stop = text.slice(-2);
    writeFileSync(
      join(home, "models.toml"),
      `[models.brief]\nsource = "${tiny}"\nnum_predict = 3\nnum_ctx = 64\nstop = [${JSON.stringify(stop)}]\n`,
    );
    const brief = await load("brief");
    try {
      // num_predict: where the call sets no maxTokens, in a generation and a chat's turn.
      const result = await brief.generate("one two", { ...greedy, stop: ["<|never|>"] });
      expect(result.text).toBe(three.text);
      expect(result.tokenIds).toHaveLength(3);
      const chat = brief.chat();
      expect((await chat.send("Hi", { temperature: 0, stop: ["<|never|>"] })).tokenIds).toHaveLength(3);
      // stop: its answer ends before it; the call's own replaces it.
      expect((await brief.generate("one two", { ...greedy, maxTokens: 8 })).text).toBe(
        text.slice(0, text.indexOf(stop)),
      );
      expect((await brief.generate("one two", { ...greedy, maxTokens: 8, stop: ["<|never|>"] })).text).toBe(text);
      // num_ctx: a longer prompt is refused, naming it.
      await expect(brief.generate("treasure ".repeat(80), greedy)).rejects.toThrow(
        "maximum context length is 64 tokens (num_ctx in models.toml)",
      );
    } finally {
      brief.close();
    }
  } finally {
    process.env.MLX_HOME = before;
  }
}, 120_000);

describe("tokenize() and detokenize()", () => {
  test("give the ids a raw prompt is read as and the text of an answer's ids; a bad id or option is refused", async () => {
    const text = "Name three colours.";
    const answer = await model.generate(text, { raw: true, maxTokens: 8 });
    expect(model.tokenize(text)).toEqual(answer.promptTokenIds);
    expect(model.detokenize(answer.tokenIds)).toBe(answer.text);
    expect(model.detokenize(model.tokenize(text, { addSpecialTokens: false }))).toBe(text);
    const vocab = model["lm"].config.vocabSize;
    // Each would be dropped or read as some other id without a word.
    expect(await errorOf(async () => model.detokenize([1, vocab]))).toBe(
      `ids.1: token id ${vocab} is not one of the model's (whole numbers from 0 to ${vocab - 1})`,
    );
    expect(await errorOf(async () => model.detokenize([-1]))).toStartWith("ids.0: token id -1 is not");
    expect(await errorOf(async () => model.detokenize(["7" as never]))).toStartWith('ids.0: token id "7" is not');
    expect(await errorOf(async () => model.tokenize(text, { add_special_tokens: false } as never))).toBe(
      "add_special_tokens: unknown option add_special_tokens (did you mean addSpecialTokens?)",
    );
    expect(await errorOf(async () => model.tokenize(7 as never))).toBe("text: tokenize() takes a string");
    const own = await load();
    own.close();
    expect(await errorOf(async () => own.tokenize(text))).toStartWith("ClosedError: ");
    expect(await errorOf(async () => own.detokenize([1]))).toStartWith("ClosedError: ");
  }, 120_000);
});

describe("a model without a chat template", () => {
  test("refuses a list of messages and a chat in the library's own terms, and answers a text prompt", async () => {
    const dir = join(mkdtempSync(join(tmpdir(), "mlx-library-template-")), "model");
    writeTinyModel(dir);
    const configPath = join(dir, "tokenizer_config.json");
    const { chat_template: _, ...config } = JSON.parse(readFileSync(configPath, "utf8"));
    writeFileSync(configPath, JSON.stringify(config));
    const plain = await load(dir);
    try {
      const failure = async (call: () => Promise<unknown>) => {
        try {
          await call();
          return "no error";
        } catch (error) {
          return `${(error as Error).name} ${(error as UnsupportedError).param}: ${(error as Error).message}`;
        }
      };
      // The engine's error pointed at the server's endpoints ("use /v1/completions ...") and its "messages".
      expect(await failure(() => plain.generate([{ role: "user", content: "Hi" }], { maxTokens: 3 }))).toBe(
        "UnsupportedError prompt: this model has no chat template: give it a text prompt, not a list of messages",
      );
      expect(await failure(async () => plain.chat())).toBe(
        "UnsupportedError null: this model has no chat template, so it cannot chat: give generate() a text prompt",
      );
      expect((await plain.generate("Hi", { maxTokens: 3 })).finishReason).toBe("length");
    } finally {
      plain.close();
    }
  }, 120_000);
});

describe("the library's close() and clear()", () => {
  test("a chat cleared while a turn streams starts again empty: the turn cut short writes nothing back", async () => {
    const chat = model.chat();
    await chat.send("My name is Ann.", { maxTokens: 5 });
    for await (const _ of chat.stream("Write a long essay about Rome.", { maxTokens: 50 })) chat.clear();
    expect(chat.messages).toEqual([]);
    await chat.send("Hi", { maxTokens: 3 });
    expect(chat.messages.map((m) => m.role)).toEqual(["user", "assistant"]);
    chat.close();
  }, 120_000);

  test("a turn cancelled before it starts (its signal aborts while the turn before runs, or before the call) ends at once and asks nothing", async () => {
    const chat = model.chat();
    const first = chat.send("Write a long essay about Rome.", { maxTokens: 200 });
    let firstDone = false;
    void first.then(() => (firstDone = true));
    const controller = new AbortController();
    const second = chat.send("And then?", { maxTokens: 5, signal: controller.signal });
    const third = chat.send("Thanks.", { maxTokens: 3 });
    controller.abort();
    // It waited for the whole first turn, then left an unanswered "And then?" in the conversation.
    const cancelled = await second;
    expect([cancelled.finishReason, cancelled.text, cancelled.tokenIds, firstDone]).toEqual([
      "cancelled",
      "",
      [],
      false,
    ]);
    // The turn after it still waits for the first.
    await third;
    const turns = () => chat.messages.map((m) => `${m.role}${m.role === "user" ? `:${m.content}` : ""}`);
    expect(turns()).toEqual(["user:Write a long essay about Rome.", "assistant", "user:Thanks.", "assistant"]);
    expect((await chat.send("Hi", { maxTokens: 3, signal: controller.signal })).finishReason).toBe("cancelled");
    expect(turns()).toHaveLength(4);
    chat.close();
  }, 120_000);

  test("close() while embed() is at work ends it with a ClosedError, and the next load works", async () => {
    const own = await load();
    const embedding = own.embed(["The first sentence.", "The second sentence."]);
    // embed() has started and waits for its first pass: that pass would read the freed weights.
    own.close();
    expect(await errorOf(() => embedding)).toBe(
      "ClosedError: the model is closed (close() was called); load it again to use it",
    );
    const again = await load();
    expect((await again.embed(["The first sentence."]))[0]?.length).toBe(again["lm"].config.hiddenSize);
    again.close();
  }, 120_000);
  test("embed()'s signal stops it part way with the signal's reason, and the model embeds on", async () => {
    const controller = new AbortController();
    const embedding = model.embed(["The first sentence.", "The second sentence."], { signal: controller.signal });
    // embed() has started and waits for its first pass.
    controller.abort();
    expect(await errorOf(() => embedding)).toStartWith("AbortError: ");
    expect(await errorOf(() => model.embed(["Hi"], { signal: AbortSignal.abort(new Error("gone")) }))).toBe(
      "Error: gone",
    );
    expect(await errorOf(() => model.embed(["Hi"], { signal: "no" as never }))).toBe(
      "signal: signal must be an AbortSignal",
    );
    expect((await model.embed(["The first sentence."]))[0]?.length).toBe(model["lm"].config.hiddenSize);
  }, 120_000);
  test("a generation aborted while its long prompt is tokenized ends there, cancelled", async () => {
    // About 200,000 tokens, far more than the context: read to the end, it was a ContextLengthError.
    const prompt = "The quick brown fox jumps over the lazy dog. ".repeat(20_000);
    for (const call of [
      (signal: AbortSignal) => model.generate(prompt, { maxTokens: 3, signal }),
      async (signal: AbortSignal) => {
        const stream = model.stream(prompt, { maxTokens: 3, signal });
        // Its first next() starts it (and reads the prompt); cancelled, it ends with no piece.
        const step = await stream.next();
        if (!step.done) throw new Error(`a piece came: ${step.value}`);
        return step.value;
      },
    ]) {
      const controller = new AbortController();
      const answer = call(controller.signal);
      // The call has read the first piece of the prompt and waits for its next turn.
      controller.abort();
      const { finishReason, promptTokenIds, tokenIds } = await answer;
      expect({ finishReason, promptTokenIds, tokenIds }).toEqual({
        finishReason: "cancelled",
        promptTokenIds: [],
        tokenIds: [],
      });
    }
  }, 120_000);
  test("a prompt longer than the context is a ContextLengthError naming the argument as the library calls it", async () => {
    const long = "word ".repeat(9000);
    const paramOf = (call: () => Promise<unknown>) =>
      call().then(
        () => "no error",
        (error) => (error instanceof ContextLengthError ? error.param : `${error}`),
      );
    // They said "messages", the server's field, which no library call takes.
    expect(await paramOf(() => model.generate([{ role: "user", content: long }], { maxTokens: 3 }))).toBe("prompt");
    expect(await paramOf(() => model.generate(long, { maxTokens: 3 }))).toBe("prompt");
    const chat = model.chat();
    expect(await paramOf(() => chat.send(long, { maxTokens: 3 }))).toBe("input");
    chat.close();
  }, 120_000);
  test("load() serves the event loop while it reads the weights, and a signal aborted meanwhile frees them", async () => {
    // Turns of the event loop while load() runs (a caller's timers, sockets, UI): none when it read them in one go.
    let turns = 0;
    let loading = true;
    const turn = () => {
      if (!loading) return;
      turns++;
      setImmediate(turn);
    };
    setImmediate(turn);
    const own = await load();
    loading = false;
    expect(turns).toBeGreaterThan(0);
    own.close();
    const before = memoryFigures().active;
    const controller = new AbortController();
    const loaded = load(undefined, { signal: controller.signal });
    // At the load's first pause (the stored model is found without one): the weights are being read.
    setImmediate(() => controller.abort());
    expect(
      await loaded.then(
        () => "loaded",
        (error: Error) => error.name,
      ),
    ).toBe("AbortError");
    expect(memoryFigures().active).toBeLessThanOrEqual(before);
  }, 120_000);
  test("a chat shows no internals to call: its model's close() closes it, and a turn after is a ClosedError", async () => {
    const own = await load();
    const chat = own.chat();
    await chat.send("Hi", { maxTokens: 2 });
    // Its conversation and onClose were public: onClose() took the chat out of its model's list,
    // so that close() left it open and the next turn ran on freed weights ("use of a freed MLX array").
    expect(Object.keys(chat)).toEqual([]);
    own.close();
    expect(await errorOf(() => chat.send("Hi", { maxTokens: 2 }))).toBe(
      "ClosedError: the chat is closed (close() was called on it or on its model)",
    );
  }, 120_000);

  test("close() gives the model's memory back: its weights and MLX's cache, as serve's unload does", async () => {
    const before = memoryFigures().active;
    const own = await load();
    await own.generate("Hi", { maxTokens: 3 });
    expect(memoryFigures().active).toBeGreaterThan(before);
    own.close();
    // The freed weights and the step's buffers stayed in MLX's cache and the heap: a process
    // that loaded and closed models kept hundreds of MB it no longer used. (At most what was
    // there before: an earlier test's last arrays may be let go meanwhile; CI saw 136 bytes.)
    const after = memoryFigures();
    expect(after.active).toBeLessThanOrEqual(before);
    expect(after.cache).toBe(0);
  }, 120_000);
});

describe("a stream let go of unfinished", () => {
  /**
   * Reads the first piece of the stream `start` makes, then lets go of it (no `break`, no
   * return()), as a caller that lost interest. Made here, the stream is held by no frame of the test.
   */
  async function readOnePieceAndDrop(start: () => AsyncGenerator<string, unknown>): Promise<string> {
    const first = await start().next();
    return first.done ? "" : first.value;
  }

  /**
   * A full collection from a fresh stack, overwritten first: JavaScriptCore scans the stack
   * conservatively, and a stale pointer left there keeps a stream alive.
   */
  function collectFromCleanStack(): Promise<void> {
    const overwrite = (depth: number): number => (depth === 0 ? 0 : overwrite(depth - 1) + 1);
    return new Promise((resolve) =>
      setTimeout(() => {
        overwrite(500);
        Bun.gc(true);
        resolve();
      }, 0),
    );
  }

  /** `pending` settled within `ms` while the collector ran (a stream is cancelled once collected); "still waiting" if not. */
  async function settledWhileCollecting<T>(pending: Promise<T>, ms: number): Promise<T | "still waiting"> {
    const late = Symbol("late");
    let result: T | typeof late = late;
    void pending.then((value) => (result = value));
    for (const deadline = performance.now() + ms; result === late && performance.now() < deadline; ) {
      await collectFromCleanStack();
      await Bun.sleep(50);
    }
    return result === late ? "still waiting" : result;
  }

  test("is cancelled once collected: its batch slot goes to the next call instead of decoding to maxTokens unread", async () => {
    const solo = await load(undefined, { maxBatch: 1 });
    try {
      // Unread, it would decode 4,000 tokens (a minute or more here) before the next call had its slot.
      expect(
        await readOnePieceAndDrop(() => solo.stream("Write a very long essay about Rome.", { maxTokens: 4000 })),
      ).not.toBe("");
      const next = solo.generate("Name a colour.", { maxTokens: 3 }).then((r) => r.finishReason);
      expect(await settledWhileCollecting(next, 20_000)).toBe("length");
    } finally {
      solo.close();
    }
  }, 120_000);

  test("a chat's turn let go of is cancelled and undone: the next turn runs, on the conversation as it was", async () => {
    const chat = model.chat();
    await chat.send("My name is Ann.", { maxTokens: 5 });
    expect(
      await readOnePieceAndDrop(() => chat.stream("Write a very long essay about Rome.", { maxTokens: 4000 })),
    ).not.toBe("");
    // It held back every later turn for good: the finally that lets the next one go never ran.
    const next = chat.send("Hi", { maxTokens: 3 }).then((r) => r.finishReason);
    expect(await settledWhileCollecting(next, 20_000)).toBe("length");
    expect(chat.messages.map((m) => `${m.role}${m.role === "user" ? `:${m.content}` : ""}`)).toEqual([
      "user:My name is Ann.",
      "assistant",
      "user:Hi",
      "assistant",
    ]);
    chat.close();
  }, 120_000);

  test("a chat's turn let go of while it waited for one let go of too is undone to the conversation as it was when it started", async () => {
    const chat = model.chat();
    await chat.send("My name is Ann.", { maxTokens: 5 });
    expect(
      await readOnePieceAndDrop(() => chat.stream("Write a very long essay about Rome.", { maxTokens: 4000 })),
    ).not.toBe("");
    // It waits for the turn before it, then runs once that one is collected, and is let go of in turn.
    const waited = readOnePieceAndDrop(() => chat.stream("Write a very long essay about Greece.", { maxTokens: 4000 }));
    expect(await settledWhileCollecting(waited, 20_000)).not.toBe("still waiting");
    const next = chat.send("Hi", { maxTokens: 3 }).then((r) => r.finishReason);
    expect(await settledWhileCollecting(next, 20_000)).toBe("length");
    // Undone to the conversation as the second turn found it when called: with the first's question.
    expect(chat.messages.map((m) => `${m.role}${m.role === "user" ? `:${m.content}` : ""}`)).toEqual([
      "user:My name is Ann.",
      "assistant",
      "user:Hi",
      "assistant",
    ]);
    chat.close();
  }, 120_000);

  test("a chat let go of without close() gives its KV cache back once collected", async () => {
    const before = memoryFigures().active;
    // A chat per task, used and dropped (never closed), as a bot might.
    const chatAndDrop = (name: string) => model.chat().send(`My name is ${name}.`, { maxTokens: 5 });
    for (const name of ["Ann", "Bob", "Cy"]) await chatAndDrop(name);
    expect(memoryFigures().active).toBeGreaterThan(before);
    // Each kept its KV cache until the model's close(): the model held every chat it made.
    const given = (async () => {
      while (memoryFigures().active > before) await Bun.sleep(20);
      return "given back";
    })();
    expect(await settledWhileCollecting(given, 20_000)).toBe("given back");
  }, 120_000);
});

test("an alias's sampling values (a Modelfile's temperature, seed) apply where the call sets none, as in mlx run -m", async () => {
  const home = mkdtempSync(join(tmpdir(), "mlx-library-sampling-"));
  const tiny = join(home, "tiny");
  writeTinyModel(tiny, { contextLength: 256 });
  const before = process.env.MLX_HOME;
  process.env.MLX_HOME = home;
  try {
    const plain = await load(tiny);
    const ask = { raw: true, maxTokens: 8 };
    const greedy = (await plain.generate("one two", ask)).tokenIds;
    const drawn = (await plain.generate("one two", { ...ask, temperature: 1, seed: 7 })).tokenIds;
    const chatDrawn = (await plain.chat().send("Hi", { maxTokens: 8, temperature: 1, seed: 7 })).tokenIds;
    plain.close();
    expect(drawn).not.toEqual(greedy);
    writeFileSync(join(home, "models.toml"), `[models.sampled]\nsource = "${tiny}"\ntemperature = 1\nseed = 7\n`);
    const sampled = await load("sampled");
    try {
      expect((await sampled.generate("one two", ask)).tokenIds).toEqual(drawn);
      expect((await sampled.chat().send("Hi", { maxTokens: 8 })).tokenIds).toEqual(chatDrawn);
      // The call's own value replaces the alias's.
      expect((await sampled.generate("one two", { ...ask, temperature: 0 })).tokenIds).toEqual(greedy);
    } finally {
      sampled.close();
    }
  } finally {
    process.env.MLX_HOME = before;
  }
}, 120_000);
