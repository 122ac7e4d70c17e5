// Embeddings through the official clients against a real server on loopback (`openai`
// embeddings.create, `ollama` embed and the older embeddings), `mlx embed` on the command line,
// the pooling a sentence-transformers config names, and on the real default model: similar
// sentences closer than unrelated ones.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Ollama } from "ollama";
import OpenAI from "openai";
import type { RunningServer } from "../src/server/app";
import { resolveModelPath } from "../src/store/resolve";
import { cliRunner } from "./helpers/cli";
import { tinyLlamaGGUF, writeGGUF } from "./helpers/gguf-writer";
import { post, serve, healthWhile } from "./helpers/serve";
import { tinyDims, writeTinyModel } from "./helpers/tiny-model";
import { embed, EmbeddingCancelled } from "../src/engine/embed";
import { ContextLengthError, UnsupportedError } from "../src/errors";
import * as mx from "../src/mlx";
import { freeCaches, hiddenStates, makeCaches } from "../src/models";
import { loadModel, type LoadedModel } from "../src/models/load";
import { convertGGUF } from "../src/models/convert";
import { modelPooling } from "../src/models/pooling";

let server: RunningServer;
let openai: OpenAI;
let model: string;
let meanModel: string;
let clsModel: string;
let maxModel: string;
let lastTokenModel: string;
let home: string;

const norm = (v: number[]) => Math.hypot(...v);
const dot = (a: number[], b: number[]) => a.reduce((sum, x, i) => sum + x * b[i]!, 0);

beforeAll(() => {
  const root = mkdtempSync(join(tmpdir(), "mlx-embeddings-"));
  home = join(root, "home");
  process.env.MLX_HOME ??= home;
  model = join(root, "tiny");
  writeTinyModel(model, { contextLength: 64 });
  // The same weights as sentence-transformers models that pool otherwise.
  meanModel = sentenceTransformersCopy(join(root, "tiny-mean"), "pooling_mode_mean_tokens");
  clsModel = sentenceTransformersCopy(join(root, "tiny-cls"), "pooling_mode_cls_token");
  maxModel = sentenceTransformersCopy(join(root, "tiny-max"), "pooling_mode_max_tokens");
  lastTokenModel = sentenceTransformersCopy(join(root, "tiny-lasttoken"), "pooling_mode_lasttoken");
  server = serve({ defaultModel: model, maxLoadedModels: 3 });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});

afterAll(() => server.stop());

/** A copy of the tiny model as a sentence-transformers model: its pooling (the one mode set), then Normalize. */
function sentenceTransformersCopy(dir: string, poolingMode: string): string {
  cpSync(model, dir, { recursive: true });
  writeFileSync(
    join(dir, "modules.json"),
    JSON.stringify([
      { idx: 0, name: "0", path: "", type: "sentence_transformers.models.Transformer" },
      { idx: 1, name: "1", path: "1_Pooling", type: "sentence_transformers.models.Pooling" },
      { idx: 2, name: "2", path: "2_Normalize", type: "sentence_transformers.models.Normalize" },
    ]),
  );
  mkdirSync(join(dir, "1_Pooling"));
  writeFileSync(
    join(dir, "1_Pooling", "config.json"),
    JSON.stringify({ word_embedding_dimension: tinyDims.hidden, [poolingMode]: true }),
  );
  return dir;
}

describe("OpenAI /v1/embeddings", () => {
  test("a batch: one normalised vector per input, in order; base64 (the client's default) equals float exactly", async () => {
    const input = ["Hello there", "Goodbye", "Hello there"];
    const r = await openai.embeddings.create({ model, input });
    expect(r.data.map((d) => d.index)).toEqual([0, 1, 2]);
    for (const d of r.data) {
      expect(d.embedding.length).toBe(tinyDims.hidden);
      expect(norm(d.embedding)).toBeCloseTo(1, 5);
    }
    expect(r.data[2]!.embedding).toEqual(r.data[0]!.embedding);
    expect(r.usage.prompt_tokens).toBeGreaterThan(3);
    // The client decodes base64 to float32s: the JSON's numbers are those float32s, as OpenAI's and vLLM's are.
    const float = await openai.embeddings.create({ model, input, encoding_format: "float" });
    expect(float.data.map((d) => d.embedding)).toEqual(r.data.map((d) => d.embedding));
    for (const x of float.data[0]!.embedding) expect(Math.fround(x)).toBe(x);
  });

  test("dimensions keeps the first values, normalised again", async () => {
    const full = (await openai.embeddings.create({ model, input: "Hello there", encoding_format: "float" })).data[0]!;
    const cut = (await openai.embeddings.create({ model, input: "Hello there", dimensions: 16 })).data[0]!;
    expect(cut.embedding.length).toBe(16);
    const prefix = full.embedding.slice(0, 16);
    cut.embedding.forEach((x, i) => expect(x).toBeCloseTo(prefix[i]! / norm(prefix), 5));
  });

  test("bad requests are 400s naming the field", async () => {
    const cases: [unknown, string][] = [
      [{ model, input: [] }, "input"],
      [{ model, input: "" }, "input"],
      [{ model, input: ["hi", ""] }, "input.1"],
      [{ model, input: "hi", dimensions: 65 }, "dimensions"],
      [{ model, input: "hi", encoding_format: "int8" }, "encoding_format"],
      [{ model, input: "hi", truncate_prompt_tokens: 0 }, "truncate_prompt_tokens"],
      [{ model, input: "hi", truncate_prompt_tokens: 65 }, "truncate_prompt_tokens"],
      [{ model, input: [[1, 2], [-1]] }, "input.1.0"],
    ];
    for (const [body, param] of cases) {
      const r = await post(`${server.url}/v1/embeddings`, body);
      expect(r.status).toBe(400);
      expect(r.json.error.param).toBe(param);
    }
    // A number is no input at all: the message names the shapes `input` may take.
    const number = await post(`${server.url}/v1/embeddings`, { model, input: 5 });
    expect(number.json.error.message).toContain("must be a string, a list of strings");
    const long = await post(`${server.url}/v1/embeddings`, { model, input: "word ".repeat(200) });
    expect(long.status).toBe(400);
    expect(long.json.error.message).toContain("context");
    expect(long.json.error.param).toBe("input");
    const second = await post(`${server.url}/v1/embeddings`, { model, input: ["hi", "word ".repeat(200)] });
    expect(second.json.error.param).toBe("input.1");
  });
});

describe("vLLM's truncate_prompt_tokens", () => {
  test("cuts each input to its first N tokens (-1: the context) where the input alone is a 400", async () => {
    const long = "word ".repeat(200);
    const { json } = await post(`${server.url}/tokenize`, { model, content: long, add_special: true });
    // vLLM's field, sent through the client as any unknown field is.
    const params = (keep: number) =>
      ({ model, input: [long, "hi"], truncate_prompt_tokens: keep }) as OpenAI.EmbeddingCreateParams;
    const cut = await openai.embeddings.create(params(8));
    const hi = await openai.embeddings.create({ model, input: "hi" });
    expect(cut.usage.prompt_tokens).toBe(8 + hi.usage.prompt_tokens);
    const byIds = await openai.embeddings.create({ model, input: [json.tokens.slice(0, 8)] });
    expect(cut.data.map((d) => d.embedding)).toEqual([byIds.data[0]!.embedding, hi.data[0]!.embedding]);
    const whole = await openai.embeddings.create(params(-1));
    expect(whole.usage.prompt_tokens).toBe(64 + hi.usage.prompt_tokens);
  });
});

describe("an empty text", () => {
  test("is a 400 naming it whatever the tokenizer adds (an EOS here), not the added token's vector", async () => {
    // As Qwen3-Embedding's tokenizer (or a Llama's BOS): "" is tokenized to the added token alone.
    const eosModel = join(home, "..", "tiny-eos-empty");
    cpSync(model, eosModel, { recursive: true });
    const tokenizerConfig = JSON.parse(readFileSync(join(eosModel, "tokenizer_config.json"), "utf8"));
    writeFileSync(
      join(eosModel, "tokenizer_config.json"),
      JSON.stringify({ ...tokenizerConfig, eos_token: "<|endoftext|>", add_eos_token: true }),
    );
    const { json } = await post(`${server.url}/tokenize`, { model: eosModel, content: "", add_special: true });
    expect(json.tokens.length).toBe(1);
    const alone = await openai.embeddings.create({ model: eosModel, input: "" }).catch((e) => e);
    expect(alone).toMatchObject({ status: 400, param: "input" });
    const second = await openai.embeddings.create({ model: eosModel, input: ["hi", ""] }).catch((e) => e);
    expect(second).toMatchObject({ status: 400, param: "input.1" });
    await expect(new Ollama({ host: server.url }).embed({ model: eosModel, input: ["hi", ""] })).rejects.toThrow(
      "'input.1' is empty",
    );
    // The token ids themselves are taken: the caller asked for them.
    const ids = await openai.embeddings.create({ model: eosModel, input: [json.tokens] });
    expect(ids.data.length).toBe(1);
  });
});

describe("an input of megabytes", () => {
  test("is tokenized a piece at a time, refused or cut at the context: the server answers meanwhile", async () => {
    await post(`${server.url}/api/embed`, { model }); // the model loaded
    const input = "The quick brown fox jumps over the lazy dog, 42 times.\n".repeat(55_000); // 3 MB
    const refused = post(`${server.url}/v1/embeddings`, { model, input });
    expect((await healthWhile(server.url, refused)).meanwhile).toBe(true);
    expect((await refused).json.error).toMatchObject({ code: "context_length_exceeded", param: "input" });
    const cut = post(`${server.url}/api/embed`, { model, input });
    expect((await healthWhile(server.url, cut)).meanwhile).toBe(true);
    expect((await cut).json.prompt_eval_count).toBe(64);
  }, 60_000);
});

describe("OpenAI /v1/embeddings: one list of token ids", () => {
  test("is one input however many ids it holds (the 2,048 limit counts inputs), up to the context", async () => {
    const long = join(home, "..", "tiny-4k");
    writeTinyModel(long, { contextLength: 4096 });
    const ids = Array.from({ length: 3000 }, (_, i) => 5 + (i % 400));
    const flat = await post(`${server.url}/v1/embeddings`, { model: long, input: ids, encoding_format: "float" });
    expect(flat.status).toBe(200);
    expect(flat.json.data.length).toBe(1);
    expect(flat.json.usage.prompt_tokens).toBe(3000);
    const nested = await post(`${server.url}/v1/embeddings`, { model: long, input: [ids], encoding_format: "float" });
    expect(flat.json.data[0].embedding).toEqual(nested.json.data[0].embedding);
    const over = await post(`${server.url}/v1/embeddings`, { model: long, input: [...ids, ...ids] });
    expect(over.status).toBe(400);
    expect(over.json.error.message).toContain("context is 4096 tokens");
    // Inputs are still at most 2,048.
    const many = await post(`${server.url}/v1/embeddings`, { model: long, input: Array(2049).fill("hi") });
    expect(many.status).toBe(400);
    expect(many.json.error.message).toContain("at most 2048 inputs");
  });
});

describe("Ollama /api/embed and /api/embeddings", () => {
  test("embed a batch (the same vectors as OpenAI's route); truncate by default; the older route", async () => {
    const ollama = new Ollama({ host: server.url });
    const r = await ollama.embed({ model, input: ["Hello there", "Goodbye"] });
    expect(r.embeddings.length).toBe(2);
    const openaiVectors = (await openai.embeddings.create({ model, input: ["Hello there", "Goodbye"] })).data;
    expect(r.embeddings).toEqual(openaiVectors.map((d) => d.embedding));
    expect(r.prompt_eval_count).toBeGreaterThan(2);
    const long = await ollama.embed({ model, input: "word ".repeat(200) });
    expect(long.embeddings[0]!.length).toBe(tinyDims.hidden);
    await expect(ollama.embed({ model, input: "word ".repeat(200), truncate: false })).rejects.toThrow("context");
    const legacy = await ollama.embeddings({ model, prompt: "Hello there" });
    expect(legacy.embedding).toEqual(r.embeddings[0]!);
  });

  test("no input, an empty one or an empty list loads the model and embeds nothing (Ollama's preload)", async () => {
    const ollama = new Ollama({ host: server.url });
    // A copy of the tiny model that no other test loads: only the empty request can have loaded it.
    const fresh = `${model}-preload`;
    cpSync(model, fresh, { recursive: true });
    const loaded = async () => (await ollama.ps()).models.map((m) => m.name);
    expect(await loaded()).not.toContain(fresh);
    const empty = await ollama.embed({ model: fresh, input: "" });
    expect(empty.embeddings).toEqual([]);
    expect(empty.prompt_eval_count).toBe(0);
    expect(await loaded()).toContain(fresh);
    expect((await ollama.embed({ model: fresh, input: [] })).embeddings).toEqual([]);
    const none = await post(`${server.url}/api/embed`, { model: fresh });
    expect(none.status).toBe(200);
    expect(none.json.embeddings).toEqual([]);
    expect((await ollama.embeddings({ model: fresh, prompt: "" })).embedding).toEqual([]);
    // The older route names its own field in errors.
    const long = await post(`${server.url}/api/embeddings`, {
      model: fresh,
      prompt: "word ".repeat(200),
      truncate: false,
    });
    expect(long.status).toBe(400);
    expect(long.json.error).toContain("'prompt'");
  });

  test("options.num_ctx shortens the context: a longer input is cut at it, or refused without truncate", async () => {
    const ollama = new Ollama({ host: server.url });
    const input = "word ".repeat(30);
    const cut = await ollama.embed({ model, input, options: { num_ctx: 8 } });
    expect(cut.prompt_eval_count).toBe(8);
    await expect(ollama.embed({ model, input, truncate: false, options: { num_ctx: 8 } })).rejects.toThrow(
      "context is 8 tokens",
    );
    // A num_ctx above the model's context leaves the model's.
    const whole = await ollama.embed({ model, input, options: { num_ctx: 4096 } });
    expect(whole.prompt_eval_count).toBeGreaterThan(8);
  });

  test("a text cut to the context keeps the tokens its tokenizer adds (an EOS, pooled on by Qwen3-Embedding)", async () => {
    // As Qwen3-Embedding's tokenizer: <|endoftext|> after each text, the last token pooled.
    const eosModel = join(home, "..", "tiny-eos");
    cpSync(model, eosModel, { recursive: true });
    const tokenizerConfig = JSON.parse(readFileSync(join(eosModel, "tokenizer_config.json"), "utf8"));
    writeFileSync(
      join(eosModel, "tokenizer_config.json"),
      JSON.stringify({ ...tokenizerConfig, eos_token: "<|endoftext|>", add_eos_token: true }),
    );
    const input = "word ".repeat(30);
    const { json } = await post(`${server.url}/tokenize`, { model: eosModel, content: input, add_special: true });
    const ids = json.tokens as number[];
    expect(ids.length).toBeGreaterThan(8);
    // sentence-transformers' (and Ollama's) cut: the text's first tokens, then the EOS.
    const expected = [...ids.slice(0, 7), ids.at(-1)!];
    const cut = await new Ollama({ host: server.url }).embed({ model: eosModel, input, options: { num_ctx: 8 } });
    expect(cut.prompt_eval_count).toBe(8);
    const byIds = await openai.embeddings.create({ model: eosModel, input: expected, encoding_format: "float" });
    cut.embeddings[0]!.forEach((x, j) => expect(x).toBeCloseTo(byIds.data[0]!.embedding[j]!, 6));
  });

  test("a sentence-transformers max_seq_length shorter than the model's context is the context", async () => {
    // sentence-transformers cuts at it (and vLLM takes it as the context): a longer input is refused or cut there.
    const limited = join(home, "..", "tiny-max-seq");
    cpSync(meanModel, limited, { recursive: true });
    writeFileSync(
      join(limited, "sentence_bert_config.json"),
      JSON.stringify({ max_seq_length: 8, do_lower_case: false }),
    );
    const input = "word ".repeat(30);
    const refused = await post(`${server.url}/v1/embeddings`, { model: limited, input });
    expect(refused.status).toBe(400);
    // 30 words: the space after the last is stripped, as sentence-transformers strips it.
    expect(refused.json.error.message).toBe(
      "'input' is 30 tokens, but the model's context is 8 tokens (its sentence-transformers max_seq_length)",
    );
    const cut = await new Ollama({ host: server.url }).embed({ model: limited, input });
    expect(cut.prompt_eval_count).toBe(8);
  });

  test("takes the options a generation takes (one set sent to both), as Ollama does; an unknown one is a 400", async () => {
    const ollama = new Ollama({ host: server.url });
    const plain = await ollama.embed({ model, input: "Hello there" });
    const options = { temperature: 0, top_k: 20, num_thread: 4, num_gpu: 99, use_mmap: true, num_ctx: 64 };
    const withOptions = await ollama.embed({ model, input: "Hello there", options });
    expect(withOptions.embeddings).toEqual(plain.embeddings);
    const legacy = await ollama.embeddings({ model, prompt: "Hello there", options });
    expect(legacy.embedding).toEqual(plain.embeddings[0]!);
    const unknown = await post(`${server.url}/api/embed`, { model, input: "Hello there", options: { warmth: 1 } });
    expect(unknown.status).toBe(400);
    expect(unknown.json.error).toContain("options.warmth");
  });

  test("a sentence-transformers config's pooling: mean differs from last-token except on one token", async () => {
    const ollama = new Ollama({ host: server.url });
    const [last, mean] = await Promise.all(
      [model, meanModel].map((m) => ollama.embed({ model: m, input: ["Hello there, friend", "a"] })),
    );
    expect(dot(last!.embeddings[0]!, mean!.embeddings[0]!)).toBeLessThan(0.999);
    mean!.embeddings[1]!.forEach((x, j) => expect(x).toBeCloseTo(last!.embeddings[1]![j]!, 5));
  });
});

describe("sentence-transformers' numbers", () => {
  // Its Transformer, Pooling and Normalize on this tiny model's weights, computed in float64 (numpy,
  // from model.safetensors, as transformers' LlamaModel): the first 8 values of each vector.
  const inputs = ["Hello there, friend", "The quick brown fox jumps over the lazy dog"];
  const reference = {
    mean: [
      [-0.029263, -0.013863, 0.178535, -0.01105, 0.076964, -0.019156, -0.060478, -0.030144],
      [0.090417, 0.02142, 0.178748, -0.053604, 0.083852, -0.09598, -0.118512, 0.165961],
    ],
    cls: [
      [-0.023788, 0.049381, 0.17311, 0.034002, -0.120733, 0.081936, 0.114935, -0.160879],
      [0.390883, 0.090541, 0.08805, -0.020177, 0.083351, -0.094761, 0.122208, -0.020697],
    ],
    max: [
      [-0.014415, 0.048765, 0.216557, 0.03111, 0.185325, 0.074967, 0.105159, 0.058162],
      [0.310553, 0.071934, 0.16768, 0.12269, 0.181383, 0.001094, 0.097093, 0.179744],
    ],
    last: [
      [-0.02736, -0.105574, 0.035709, -0.002896, 0.133415, -0.086269, -0.170201, 0.062593],
      [-0.054858, 0.068137, 0.211761, 0.154944, -0.010255, -0.109865, -0.069236, 0.159487],
    ],
    // truncate_dim 16, normalised again.
    mean16: [
      [-0.068151, -0.032285, 0.415795, -0.025734, 0.179243, -0.044612, -0.140848, -0.070202],
      [0.191195, 0.045296, 0.377978, -0.11335, 0.177313, -0.202957, -0.250604, 0.35094],
    ],
  };
  // 1e-4 of the vectors' largest values (about 0.3 to 0.4), as float32 arithmetic keeps them.
  const close = (got: number[][], expected: number[][]) =>
    expected.forEach((row, i) => row.forEach((x, j) => expect(Math.abs(got[i]![j]! - x)).toBeLessThan(3e-5)));

  test("mean, CLS, max and last-token pooling, in one batch; no modules.json pools the last token", async () => {
    const ollama = new Ollama({ host: server.url });
    const cases: [string, number[][]][] = [
      [meanModel, reference.mean],
      [clsModel, reference.cls],
      [maxModel, reference.max],
      [lastTokenModel, reference.last],
      [model, reference.last],
    ];
    for (const [m, expected] of cases) close((await ollama.embed({ model: m, input: inputs })).embeddings, expected);
    close((await ollama.embed({ model: meanModel, input: inputs, dimensions: 16 })).embeddings, reference.mean16);
  });
});

describe("a sentence-transformers module past the pooling (Dense)", () => {
  test("is refused naming it, on the server (a 400, and it keeps serving) and in mlx embed, not left out", async () => {
    const denseModel = join(home, "..", "tiny-dense");
    cpSync(meanModel, denseModel, { recursive: true });
    writeFileSync(
      join(denseModel, "modules.json"),
      JSON.stringify([
        { idx: 0, name: "0", path: "", type: "sentence_transformers.models.Transformer" },
        { idx: 1, name: "1", path: "1_Pooling", type: "sentence_transformers.models.Pooling" },
        { idx: 2, name: "2", path: "2_Dense", type: "sentence_transformers.models.Dense" },
        { idx: 3, name: "3", path: "3_Normalize", type: "sentence_transformers.models.Normalize" },
      ]),
    );
    const expected = `${denseModel}: modules.json has a sentence_transformers.models.Dense module ('2_Dense'), which embeddings here do not apply (only the model, its pooling and normalisation)`;
    // Before, the vector was the pooled hidden state, of another size than the model's embeddings.
    const r = await post(`${server.url}/v1/embeddings`, { model: denseModel, input: "Hello" });
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({ message: expected, param: "model" });
    expect((await openai.embeddings.create({ model, input: "Hello" })).data).toHaveLength(1);
    const cli = await cliRunner(home)(["embed", "-m", denseModel, "Hello"]);
    expect(cli).toMatchObject({ code: 1, stdout: "", stderr: `error: ${expected}\n` });
  });
});

describe("a sentence-transformers pooling mode not applied here", () => {
  test("is refused naming it (a 400), alone or beside a mode applied here, not pooled by the other", async () => {
    for (const [name, modes] of [
      ["tiny-weighted", { pooling_mode_weightedmean_tokens: true }],
      ["tiny-mean-sqrt", { pooling_mode_mean_tokens: true, pooling_mode_mean_sqrt_len_tokens: true }],
    ] as const) {
      const dir = join(home, "..", name);
      cpSync(meanModel, dir, { recursive: true });
      writeFileSync(
        join(dir, "1_Pooling", "config.json"),
        JSON.stringify({ word_embedding_dimension: tinyDims.hidden, ...modes }),
      );
      const other = Object.keys(modes).at(-1);
      const r = await post(`${server.url}/v1/embeddings`, { model: dir, input: "Hello" });
      expect(r.status).toBe(400);
      expect(r.json.error.message).toStartWith(`${dir}: its sentence-transformers pooling sets ${other}, which`);
    }
  });
});

describe("a sentence-transformers model's prompts (config_sentence_transformers.json)", () => {
  /** The mean-pooled tiny model, with `config` as its config_sentence_transformers.json. */
  const withPrompts = (name: string, config: unknown) => {
    const dir = join(home, "..", name);
    cpSync(meanModel, dir, { recursive: true });
    writeFileSync(join(dir, "config_sentence_transformers.json"), JSON.stringify(config));
    return dir;
  };
  const prompts = { query: "query: ", document: "passage: " };

  test("the default prompt is put before every text, as SentenceTransformer.encode does; token ids are kept as they are", async () => {
    const prompted = withPrompts("tiny-prompted", { prompts, default_prompt_name: "query" });
    const inputs = ["Hello there, friend", "a"];
    const [got, expected] = await Promise.all([
      openai.embeddings.create({ model: prompted, input: inputs, encoding_format: "float" }),
      openai.embeddings.create({ model: meanModel, input: inputs.map((t) => `query: ${t}`), encoding_format: "float" }),
    ]);
    expect(got.data.map((d) => d.embedding)).toEqual(expected.data.map((d) => d.embedding));
    expect(got.usage.prompt_tokens).toBe(expected.usage.prompt_tokens);
    const ids = [5, 6, 7];
    const [idsPrompted, idsPlain] = await Promise.all(
      [prompted, meanModel].map((m) => openai.embeddings.create({ model: m, input: ids, encoding_format: "float" })),
    );
    expect(idsPrompted.data[0]!.embedding).toEqual(idsPlain.data[0]!.embedding);
  });

  test("prompts without a default name are not applied (encode names none); a default name it lacks is an error", async () => {
    const named = withPrompts("tiny-prompts-only", { prompts });
    const [got, expected] = await Promise.all(
      [named, meanModel].map((m) => openai.embeddings.create({ model: m, input: "Hello", encoding_format: "float" })),
    );
    expect(got.data[0]!.embedding).toEqual(expected.data[0]!.embedding);
    const missing = withPrompts("tiny-prompt-missing", { prompts, default_prompt_name: "classification" });
    // The model's files, not the request, are at fault: a model load error (500), as a bad pooling config is.
    const r = await post(`${server.url}/v1/embeddings`, { model: missing, input: "Hello" });
    expect([r.status, r.json.error.code]).toEqual([500, "model_load_failed"]);
    expect(r.json.error.message).toBe(
      `${missing}: config_sentence_transformers.json's default_prompt_name 'classification' is not among its prompts (query, document)`,
    );
  });

  test("a prompt its mean pooling leaves out (include_prompt false, as INSTRUCTOR's) is refused, not pooled with it", async () => {
    const instructor = withPrompts("tiny-instructor", { prompts, default_prompt_name: "query" });
    writeFileSync(
      join(instructor, "1_Pooling", "config.json"),
      JSON.stringify({
        word_embedding_dimension: tinyDims.hidden,
        pooling_mode_mean_tokens: true,
        include_prompt: false,
      }),
    );
    const r = await post(`${server.url}/v1/embeddings`, { model: instructor, input: "Hello" });
    expect(r.status).toBe(400);
    expect(r.json.error).toMatchObject({
      message: `${instructor}: its sentence-transformers pooling leaves the prompt's tokens out (include_prompt false), which embeddings here do not do`,
      param: "model",
    });
  });
});

describe("a sentence-transformers model's text", () => {
  test("is stripped of the white space around it before tokenizing, as its Transformer module does; another model's is not", async () => {
    const embedded = async (m: string, input: string[]) =>
      (await openai.embeddings.create({ model: m, input, encoding_format: "float" })).data.map((d) => d.embedding);
    const [spaced, plain] = await Promise.all([
      embedded(meanModel, [" Hello there\n", "\ta  "]),
      embedded(meanModel, ["Hello there", "a"]),
    ]);
    expect(spaced).toEqual(plain);
    // Python's str.strip(), not JavaScript's trim(): \x85 and \x1c-\x1f go, a BOM (\ufeff) stays and is tokenized.
    const { json } = await post(`${server.url}/tokenize`, { model: meanModel, content: "\ufeffa", add_special: true });
    const [python, bom] = await Promise.all([
      embedded(meanModel, ["\x85Hello there\x1c", "\ufeffa"]),
      embedded(meanModel, [json.tokens]),
    ]);
    expect(python).toEqual([plain[0]!, bom[0]!]);
    expect(dot(bom[0]!, plain[1]!)).toBeLessThan(0.999);
    const [otherSpaced, otherPlain] = await Promise.all([
      embedded(model, [" Hello there\n"]),
      embedded(model, ["Hello there"]),
    ]);
    expect(dot(otherSpaced[0]!, otherPlain[0]!)).toBeLessThan(0.999);
  });
});

describe("a sentence-transformers model's do_lower_case (sentence_bert_config.json)", () => {
  test("lower-cases each text, its prompt too, before tokenizing, as its Transformer module does", async () => {
    const lower = join(home, "..", "tiny-lower");
    cpSync(meanModel, lower, { recursive: true });
    writeFileSync(
      join(lower, "sentence_bert_config.json"),
      JSON.stringify({ max_seq_length: 64, do_lower_case: true }),
    );
    const embedded = async (m: string, input: string[]) =>
      (await openai.embeddings.create({ model: m, input, encoding_format: "float" })).data.map((d) => d.embedding);
    const [got, lowered, asWritten] = await Promise.all([
      embedded(lower, ["Hello THERE, Friend", "a"]),
      embedded(meanModel, ["hello there, friend", "a"]),
      embedded(meanModel, ["Hello THERE, Friend"]),
    ]);
    expect(got).toEqual(lowered);
    expect(dot(got[0]!, asWritten[0]!)).toBeLessThan(0.999);
    // SentenceTransformer.encode puts the prompt first; the Transformer module lower-cases the whole.
    writeFileSync(
      join(lower, "config_sentence_transformers.json"),
      JSON.stringify({ prompts: { query: "Query: " }, default_prompt_name: "query" }),
    );
    const prompted = join(home, "..", "tiny-lower-prompted");
    cpSync(lower, prompted, { recursive: true });
    expect(await embedded(prompted, ["Hello"])).toEqual(await embedded(meanModel, ["query: hello"]));
  });
});

describe("a GGUF's pooling (llama.cpp's <arch>.pooling_type)", () => {
  const root = mkdtempSync(join(tmpdir(), "mlx-embeddings-gguf-"));
  const { metadata, tensors } = tinyLlamaGGUF({ hidden: 64, heads: 4, kvHeads: 2, ffn: 128, layers: 2, type: "F32" });
  /** The same tiny llama, its metadata saying `pooling_type` (llama.cpp's enum) or nothing. */
  const gguf = (name: string, poolingType?: number) => {
    const path = join(root, `${name}.gguf`);
    writeGGUF(path, poolingType === undefined ? metadata : { ...metadata, "llama.pooling_type": poolingType }, tensors);
    return path;
  };
  const text = "Hello there, friend";

  test("mean (1), CLS (2) and last (3) pool as they say; a GGUF that says none pools the last token", async () => {
    const cases: [string, number | undefined, "mean" | "cls" | "last"][] = [
      ["mean", 1, "mean"],
      ["cls", 2, "cls"],
      ["last", 3, "last"],
      ["unsaid", undefined, "last"],
    ];
    for (const [name, poolingType, pooling] of cases) {
      const lm = loadModel(gguf(name, poolingType));
      const [vector] = (await embed(lm, [text])).vectors;
      const expected = onePass(lm, lm.tokenizer.encode(text, { addSpecialTokens: true }), pooling);
      expect([name, vector!.length]).toEqual([name, expected.length]);
      expected.forEach((x, i) => expect(vector![i]!).toBeCloseTo(x, 5));
      lm.free();
    }
  });

  test("a directory converted from the GGUF keeps its pooling (sentence-transformers' files); one that says none needs none", async () => {
    for (const [name, poolingType] of [
      ["cls", 2],
      ["unsaid", undefined],
    ] as const) {
      const path = gguf(name, poolingType);
      const dir = join(root, `${name}-converted`);
      await convertGGUF(path, dir, { bits: 0 });
      expect([name, existsSync(join(dir, "modules.json"))]).toEqual([name, poolingType !== undefined]);
      const [fromGGUF, converted] = [loadModel(path), loadModel(dir)];
      const [[a], [b]] = [(await embed(fromGGUF, [text])).vectors, (await embed(converted, [text])).vectors];
      a!.forEach((x, i) => expect(b![i]!).toBeCloseTo(x, 5));
      expect(modelPooling(dir)).toBe(poolingType === undefined ? "last" : "cls");
      fromGGUF.free();
      converted.free();
    }
  });

  test("none (0) and rank (4) are refused naming the key once an embedding is asked for (a 400 on the server)", async () => {
    for (const [name, poolingType, meaning] of [
      ["none", 0, "none"],
      ["rank", 4, "rank"],
    ] as const) {
      const path = gguf(name, poolingType);
      const expected = `${path}: its llama.pooling_type is ${poolingType} (${meaning}), which embeddings here do not apply (only 1 mean, 2 cls or 3 last)`;
      const lm = loadModel(path);
      await expect(embed(lm, [text])).rejects.toThrow(new UnsupportedError(expected, "model"));
      lm.free();
      const r = await post(`${server.url}/v1/embeddings`, { model: path, input: text });
      expect([r.status, r.json.error]).toMatchObject([400, { message: expected, param: "model" }]);
    }
    expect((await openai.embeddings.create({ model, input: "Hello" })).data).toHaveLength(1);
  });
});

describe("Ollama /api/show's capabilities", () => {
  test("an embedding model (sentence-transformers, or a GGUF naming a pooling) is 'embedding' alone, any other 'completion' without 'embedding', as Ollama's", async () => {
    // Ollama's CLI runs a model whose capabilities hold "embedding" as an embedding model
    // (`ollama run` prints a vector instead of chatting).
    const root = mkdtempSync(join(tmpdir(), "mlx-embeddings-show-"));
    const { metadata, tensors } = tinyLlamaGGUF({ hidden: 64, heads: 4, kvHeads: 2, ffn: 128, layers: 2, type: "F32" });
    const pooledGGUF = join(root, "pooled.gguf");
    writeGGUF(pooledGGUF, { ...metadata, "llama.pooling_type": 1 }, tensors);
    const plainGGUF = join(root, "plain.gguf");
    writeGGUF(plainGGUF, metadata, tensors);
    const capabilities = async (name: string) =>
      (await post(`${server.url}/api/show`, { model: name })).json.capabilities;
    expect(await capabilities(meanModel)).toEqual(["embedding"]);
    expect(await capabilities(pooledGGUF)).toEqual(["embedding"]);
    for (const name of [model, plainGGUF]) {
      const listed = await capabilities(name);
      expect(listed).toContain("completion");
      expect(listed).not.toContain("embedding");
    }
    // Any model still embeds when asked.
    expect((await new Ollama({ host: server.url }).embed({ model, input: "Hello" })).embeddings).toHaveLength(1);
  });
});

describe("the request timeout", () => {
  test("bounds an embedding request as it bounds a generation: a 504 once it passes, on both routes", async () => {
    // The model loaded first; then 2,048 inputs, a pass each, take far longer than 200 ms.
    const hasty = serve({ requestTimeoutMs: 200, defaultModel: model });
    try {
      await hasty.state.models.acquire(model).then((lease) => lease.release());
      const input = Array.from({ length: 2048 }, (_, i) => `sentence ${i} `.repeat(8));
      const openaiRoute = await post(`${hasty.url}/v1/embeddings`, { model, input });
      expect(openaiRoute.status).toBe(504);
      expect(openaiRoute.json.error.code).toBe("request_timeout");
      const ollamaRoute = await post(`${hasty.url}/api/embed`, { model, input });
      expect(ollamaRoute.status).toBe(504);
      expect(ollamaRoute.json.error).toContain("request timeout");
    } finally {
      await hasty.stop();
    }
  });
});

describe("the queue bound (--max-batch plus --max-queue)", () => {
  test("holds for embedding requests too: past it a 429 with Retry-After; a request cancelled frees its place", async () => {
    const bounded = serve({ maxBatch: 1, maxQueue: 1, defaultModel: model });
    try {
      await bounded.state.models.acquire(model).then((lease) => lease.release());
      const input = Array.from({ length: 2048 }, (_, i) => `sentence ${i} `.repeat(8));
      const clients = [new AbortController(), new AbortController()];
      const longOnes = clients.map((client) =>
        fetch(`${bounded.url}/v1/embeddings`, {
          method: "POST",
          headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ model, input }),
          signal: client.signal,
        }).catch(() => undefined),
      );
      const [entry] = bounded.state.models.loaded;
      while (entry!.active < 2) await Bun.sleep(5);
      const refused = await post(`${bounded.url}/v1/embeddings`, { model, input: "one more" });
      expect(refused.status).toBe(429);
      expect(refused.json.error.code).toBe("queue_full");
      expect(refused.headers.get("retry-after")).toBe("1");
      expect((await post(`${bounded.url}/api/embed`, { model, input: "one more" })).status).toBe(429);
      // Not ready meanwhile, as with its generations' queue full: a balancer sends the next one elsewhere.
      const ready = await fetch(`${bounded.url}/ready`);
      expect([ready.status, ((await ready.json()) as { reason: string }).reason]).toEqual([
        503,
        `queue full for ${model}`,
      ]);
      clients[0]!.abort();
      while (entry!.active > 1) await Bun.sleep(5);
      expect((await post(`${bounded.url}/v1/embeddings`, { model, input: "now" })).status).toBe(200);
      clients[1]!.abort();
      await Promise.all(longOnes);
    } finally {
      await bounded.stop();
    }
  });
});

describe("the server's shutdown", () => {
  test("ends an embedding request in flight with a 503, as it ends a generation, not a cut connection", async () => {
    const stopping = serve({ defaultModel: model });
    await stopping.state.models.acquire(model).then((lease) => lease.release());
    const input = Array.from({ length: 2048 }, (_, i) => `sentence ${i} `.repeat(8));
    const answer = post(`${stopping.url}/v1/embeddings`, { model, input });
    // Stopped once the request holds the model, its inputs part done.
    while (!stopping.state.models.loaded.some((e) => e.active > 0)) await Bun.sleep(5);
    await stopping.stop();
    const { status, json } = await answer;
    expect(status).toBe(503);
    expect(json.error.code).toBe("server_shutting_down");
  });
});

describe("mlx embed", () => {
  test("one JSON array per input line, the server's vectors; an empty line is an error", async () => {
    const run = cliRunner(home);
    const out = await run(["embed", "-m", model, "--dimensions", "8"], "Hello there\nGoodbye\n");
    expect(out.code).toBe(0);
    const lines = out.stdout
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as number[]);
    const served = (await openai.embeddings.create({ model, input: ["Hello there", "Goodbye"], dimensions: 8 })).data;
    expect(lines.length).toBe(2);
    lines.forEach((v, i) => v.forEach((x, j) => expect(x).toBeCloseTo(served[i]!.embedding[j]!, 5)));
    const bad = await run(["embed", "-m", model], "Hello\n\n");
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain("input line 2 is empty");
    // Texts given as arguments are named as such, not as lines of stdin.
    const args = await run(["embed", "-m", model, "Hello", ""]);
    expect(args.code).not.toBe(0);
    expect(args.stderr).toContain("argument 2 is empty");
    // More dimensions than the model has: named as the flag, in one line.
    const wide = await run(["embed", "-m", model, "--dimensions", "100000", "Hello"]);
    expect(wide.code).toBe(1);
    expect(wide.stderr).toMatch(/^error: --dimensions must be between 1 and the model's \d+ \(got 100000\)\n$/);
    const long = await run(["embed", "-m", model, "Hello", "word ".repeat(200)]);
    expect(long.stderr).toContain("'argument 2' is 201 tokens");
  });
});

describe("the default model", () => {
  test("similar sentences are closer than unrelated ones", async () => {
    const path = await resolveModelPath(undefined);
    const r = await openai.embeddings.create({
      model: path,
      input: ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."],
    });
    const [cat, cat2, stocks] = r.data.map((d) => d.embedding);
    expect(dot(cat!, cat2!)).toBeGreaterThan(dot(cat!, stocks!) + 0.05);
    expect(dot(cat!, cat2!)).toBeGreaterThan(dot(cat2!, stocks!) + 0.05);
  });
});

/** What `work` resolves to, and how many turns the event loop took meanwhile (the yields it made). */
/** The pooled hidden states of one pass over all of `ids`, normalised: what embed must give, chunked or not. */
function onePass(lm: LoadedModel, ids: number[], pooling: "mean" | "last" | "cls"): number[] {
  // Keys and values in float32, as embed keeps them.
  const caches = makeCaches(lm.model).map((cache) => Object.assign(cache, { keepsActivationsDtype: true }));
  const vector = mx.scope(() => {
    const h = mx.astype(
      hiddenStates(lm.model, mx.array(Int32Array.from(ids), [1, ids.length]), caches),
      mx.Dtype.float32,
    );
    const position = (p: number) => mx.slice(h, [0, p, 0], [1, p + 1, h.shape[2]!]);
    const pooled = pooling === "mean" ? mx.mean(h, [1]) : position(pooling === "cls" ? 0 : ids.length - 1);
    return mx.reshape(pooled, [-1]).toArray();
  });
  freeCaches(caches);
  const n = norm(vector);
  return vector.map((x) => x / n);
}

async function countingTurns<T>(work: () => Promise<T>): Promise<{ result: T; turns: number }> {
  let turns = 0;
  let ticking = true;
  const tick = () => {
    if (!ticking) return;
    turns++;
    setImmediate(tick);
  };
  setImmediate(tick);
  try {
    return { result: await work(), turns };
  } finally {
    ticking = false;
  }
}

describe("a long input", () => {
  // Longer than a prefill chunk (512 positions): pooled a chunk at a time.
  const root = mkdtempSync(join(tmpdir(), "mlx-embeddings-long-"));
  const ids = Array.from({ length: 1300 }, (_, i) => 5 + ((i * 37) % 400));

  test("is pooled a chunk at a time as in one pass (mean and last token)", async () => {
    writeTinyModel(join(root, "last"), { contextLength: 2048 });
    const last = loadModel(join(root, "last"));
    const [chunked] = (await embed(last, [ids])).vectors;
    onePass(last, ids, "last").forEach((x, i) => expect(chunked![i]!).toBeCloseTo(x, 4));
    last.free();
    cpSync(join(root, "last"), join(root, "mean"), { recursive: true });
    cpSync(join(meanModel, "modules.json"), join(root, "mean", "modules.json"));
    cpSync(join(meanModel, "1_Pooling"), join(root, "mean", "1_Pooling"), { recursive: true });
    const mean = loadModel(join(root, "mean"));
    const [pooled] = (await embed(mean, [ids])).vectors;
    onePass(mean, ids, "mean").forEach((x, i) => expect(pooled![i]!).toBeCloseTo(x, 4));
    mean.free();
  });

  test("is cut into chunks of the size asked (the server's prefill chunk), yielding between two", async () => {
    writeTinyModel(join(root, "chunked"), { contextLength: 2048 });
    const lm = loadModel(join(root, "chunked"));
    const input = ids.slice(0, 100);
    const [whole] = (await embed(lm, [input])).vectors;
    // Only a yield between two chunks lets a turn pass during embed().
    const { result, turns } = await countingTurns(() => embed(lm, [input], { chunk: 16 }));
    const [chunked] = result.vectors;
    expect(turns).toBeGreaterThanOrEqual(6); // 7 chunks of 16
    whole!.forEach((x, i) => expect(chunked![i]!).toBeCloseTo(x, 4));
    lm.free();
  });

  test("stops at its next chunk once cancelled", async () => {
    writeTinyModel(join(root, "cancel"), { contextLength: 2048 });
    const lm = loadModel(join(root, "cancel"));
    const controller = new AbortController();
    controller.abort();
    await expect(embed(lm, [ids], { signal: controller.signal })).rejects.toBeInstanceOf(EmbeddingCancelled);
    lm.free();
  });
});

describe("many inputs in one request", () => {
  const root = mkdtempSync(join(tmpdir(), "mlx-embeddings-many-"));

  test("many short inputs take a turn each: streams go on between two, and a cancel stops them", async () => {
    writeTinyModel(join(root, "many"), { contextLength: 2048 });
    const lm = loadModel(join(root, "many"));
    const inputs = Array.from({ length: 8 }, (_, i) => `sentence number ${i}`);
    const { turns } = await countingTurns(() => embed(lm, inputs));
    expect(turns).toBeGreaterThanOrEqual(7);
    const controller = new AbortController();
    setImmediate(() => controller.abort());
    await expect(embed(lm, inputs, { signal: controller.signal })).rejects.toBeInstanceOf(EmbeddingCancelled);
    lm.free();
  });

  test("tokenizing many long inputs takes turns too, before an input over the context is refused", async () => {
    writeTinyModel(join(root, "tokenizing"), { contextLength: 2048 });
    const lm = loadModel(join(root, "tokenizing"));
    // About 4 MB of text (the server's default largest body) to tokenize, and no pass at all.
    const inputs = Array.from({ length: 2047 }, (_, i) => `word ${i} `.repeat(200));
    inputs.push("word ".repeat(3000));
    const { result, turns } = await countingTurns(() => embed(lm, inputs).catch((error: Error) => error));
    expect(result).toBeInstanceOf(ContextLengthError);
    expect(turns).toBeGreaterThan(0);
    lm.free();
  });
});
