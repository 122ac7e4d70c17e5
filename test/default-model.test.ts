// The real default model (SmolLM2-135M, fetched into the store on first use, as the parity
// tests do) under a constraint: JSON that matches a schema, and a required function call
// through the server.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import Ajv from "ajv";
import OpenAI from "openai";
import { createJsonConstraint } from "../src/engine/grammar";
import { promptTokens } from "../src/engine/prompt";
import { defaultSampling } from "../src/engine/sampling";
import { generateTokens } from "../src/engine/batch";
import * as mx from "../src/mlx";
import { forward, freeCaches, makeCaches } from "../src/models";
import type { KvQuantization } from "../src/models/cache";
import { loadModel } from "../src/models/load";
import type { RunningServer } from "../src/server/app";
import { resolveModelPath } from "../src/store/resolve";
import { completeAlone } from "./helpers/generate";
import { serve } from "./helpers/serve";
import { forecastParameters, forecastTools } from "./helpers/forecast-tools";
import { cliRunner } from "./helpers/cli";
import { dirname, join } from "node:path";

const ajv = new Ajv({ strict: false, validateFormats: false });
let path: string;
let server: RunningServer;

beforeAll(async () => {
  path = await resolveModelPath(undefined);
  server = serve();
});
afterAll(() => server.stop());

describe("the default model", () => {
  test("mlx show reads the GGUF's metadata: its shape, parameters, license and template", async () => {
    const home = process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home");
    const shown = await cliRunner(home)(["show", "smollm2", "--json"]);
    expect(shown.code).toBe(0);
    expect(JSON.parse(shown.stdout).config).toEqual({
      model_name: expect.any(String),
      parameters: "135M",
      hidden_size: 576,
      num_hidden_layers: 30,
      num_attention_heads: 9,
      num_key_value_heads: 3,
      vocab_size: 49152,
      max_position_embeddings: 8192,
      rope_theta: 100000,
      license: "apache-2.0",
      chat_template: "yes",
    });
    // Its folder in the store (one GGUF file, no config.json) shows as that file, as run loads it.
    const file = JSON.parse((await cliRunner(home)(["show", path, "--json"])).stdout);
    const folder = await cliRunner(home)(["show", dirname(path), "--json"]);
    expect(folder.code).toBe(0);
    expect(JSON.parse(folder.stdout)).toEqual(file);
  });

  test("under a schema, answers with JSON that matches it", async () => {
    const lm = loadModel(path);
    const schema = {
      type: "object",
      properties: { name: { type: "string", maxLength: 16 }, age: { type: "integer", minimum: 0, maximum: 120 } },
      required: ["name", "age"],
    };
    const c = await createJsonConstraint(lm.tokenizer, { schema });
    const result = await completeAlone(
      lm,
      promptTokens(lm.tokenizer, "Describe a person named Anna, aged 31, as JSON."),
      { sampling: defaultSampling, maxTokens: 40, processors: [c.processor] },
    );
    c.dispose();
    lm.free();
    expect(result.finishReason).toBe("stop");
    expect(ajv.validate(schema, JSON.parse(result.text))).toBe(true);
  }, 90_000);

  test("made to call a function, calls forecast for the city in the question, with valid arguments", async () => {
    const parameters = forecastParameters;
    const tools = forecastTools;
    const openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused" });
    const question: OpenAI.ChatCompletionMessageParam[] = [
      { role: "user", content: "What will the weather be in Paris tomorrow?" },
    ];
    const r = await openai.chat.completions.create({
      model: path,
      messages: question,
      tools,
      tool_choice: "required",
      parallel_tool_calls: false,
      temperature: 0,
      max_tokens: 80,
    });
    const choice = r.choices[0]!;
    expect(choice.finish_reason).toBe("tool_calls");
    expect(choice.message.tool_calls).toHaveLength(1);
    const call = choice.message.tool_calls![0]!;
    expect(call.type).toBe("function");
    if (call.type !== "function") return;
    expect(call.function.name).toBe("forecast");
    const args = JSON.parse(call.function.arguments);
    expect(ajv.validate(parameters, args)).toBe(true);
    expect(args.city).toBe("Paris");
  }, 300_000);
});

describe("the default model with a quantized KV cache", () => {
  test("8-bit keeps the float cache's greedy answers; 4-bit's logits differ more than 8-bit's", () => {
    const lm = loadModel(path);
    // Two prompts, few tokens: this test runs in CI on a slow shared machine (bench/kv-cache.ts measures 10 × 64).
    const prompts = ["Write a short poem about the sea.", "List three colors."].map((p) =>
      promptTokens(lm.tokenizer, p),
    );
    const answer = (prompt: number[], kv?: KvQuantization) =>
      [...generateTokens(lm.model, { promptIds: prompt, sampling: defaultSampling, maxTokens: 12 }, kv)].map(
        (e) => e.token,
      );
    for (const prompt of prompts) expect(answer(prompt, { bits: 8, groupSize: 64 })).toEqual(answer(prompt));
    const logits = (kv?: KvQuantization) => {
      const caches = makeCaches(lm.model, { quantization: kv });
      const out = mx.keep(
        mx.scope(() => forward(lm.model, mx.array(Int32Array.from(prompts[0]!), [1, prompts[0]!.length]), caches)),
      );
      freeCaches(caches);
      return out;
    };
    const [float, eight, four] = [logits(), logits({ bits: 8, groupSize: 64 }), logits({ bits: 4, groupSize: 64 })];
    const meanDiff = (a: mx.MxArray) => mx.scope(() => mx.mean(mx.abs(mx.subtract(a, float))).item());
    expect(meanDiff(eight)).toBeGreaterThan(0);
    expect(meanDiff(four)).toBeGreaterThan(meanDiff(eight));
    for (const t of [float, eight, four]) t.free();
    lm.free();
  }, 180_000);
});
