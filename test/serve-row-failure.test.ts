// One request's failure inside a batched decode step is its own: a real `mlx serve` with a model
// whose logits turn NaN for one prompt (an embedding of infinities for one token, as a float16
// overflow leaves a real checkpoint), where a grammar then refuses the token its row drew. The
// other requests decoding beside it go on to the answers they give alone; the failing one gets
// a 500, /metrics counts one failed generation, its rows leave the batch, and the server serves on.
// An embedding of that token is a 500 too, naming its input.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import * as mx from "../src/mlx";
import { Tokenizer } from "../src/tokenizer";
import type { RunningServer } from "../src/server/app";
import { post, serve } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

let root: string;
let model: string;
let server: RunningServer;
let openai: OpenAI;
/** Its embedding is all +Infinity: a prompt holding it gives NaN logits, on its own row alone. */
const POISON = "~";

/** `dir`'s model with token `id`'s embedding made +Infinity (its own head: the logits of other tokens stay finite). */
function poisonEmbedding(dir: string, id: number): void {
  const file = join(dir, "model.safetensors");
  const { tensors } = mx.loadSafetensors(file);
  const name = "model.embed_tokens.weight";
  const embed = tensors.get(name)!;
  const [vocab, hidden] = embed.shape as [number, number];
  const row = new Uint8Array(vocab);
  row[id] = 1;
  const poisoned = mx.keep(
    mx.scope(() =>
      mx.where(mx.array(row, [vocab, 1], mx.Dtype.bool), mx.full([vocab, hidden], Infinity, embed.dtype), embed),
    ),
  );
  embed.free();
  tensors.set(name, poisoned);
  mx.saveSafetensors(file, tensors, { format: "mlx" });
  for (const t of tensors.values()) t.free();
}

beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), "mlx-row-failure-"));
  process.env.MLX_HOME ??= join(root, "home");
  model = join(root, "poisoned");
  writeTinyModel(model, { tied: false, contextLength: 1024 });
  const [id, ...more] = Tokenizer.fromDirectory(model).encode(POISON, { addSpecialTokens: false });
  expect(more).toEqual([]);
  poisonEmbedding(model, id!);
  server = serve({ defaultModel: model });
  openai = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0 });
});

afterAll(() => {
  server.stop();
  rmSync(root, { recursive: true, force: true });
});

const prompts = ["Once upon a time", "The cat sat", "Hello there"];
/** Long enough that each is still decoding when the failing request comes and goes. */
const maxTokens = 300;

/** A greedy streamed completion, opened: its stream (its generation is submitted). */
function open(prompt: string) {
  return openai.completions.create({
    model,
    prompt,
    max_tokens: maxTokens,
    temperature: 0,
    stream: true,
    ignore_eos: true,
  } as OpenAI.CompletionCreateParamsStreaming);
}

/** A streamed completion's text and finish reason. */
async function read(stream: AsyncIterable<OpenAI.Completion>) {
  let text = "";
  let finish: string | null = null;
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      text += c.text;
      finish = c.finish_reason ?? finish;
    }
  }
  return { text, finish };
}

async function metric(pattern: RegExp): Promise<number> {
  const text = await (await fetch(`${server.url}/metrics`)).text();
  return Number(pattern.exec(text)?.[1] ?? 0);
}
const failedGenerations = () => metric(/^mlx_generations_total\{route="[^"]+",finish_reason="error"\} (\d+)$/m);
const running = () => metric(/^mlx_requests_running (\d+)$/m);

describe("a request that fails on its own row of a batched step", () => {
  test("fails alone: the others in its batch give their answers alone, and the server serves on", async () => {
    const alone: Awaited<ReturnType<typeof read>>[] = [];
    for (const prompt of prompts) alone.push(await read(await open(prompt)));
    for (const answer of alone) expect(answer.finish).toBe("length");
    // The grammar compiled before the batch, so the failing request joins it at once.
    const warm = await post(`${server.url}/v1/completions`, {
      model,
      prompt: "Hi",
      max_tokens: 4,
      guided_choice: ["yes", "no"],
    });
    expect(warm.status).toBe(200);
    expect(await failedGenerations()).toBe(0);

    const streams = await Promise.all(prompts.map(open));
    // NaN logits under a grammar: its row draws a token the grammar refuses at the next step.
    const failure = await post(`${server.url}/v1/completions`, {
      model,
      prompt: POISON,
      max_tokens: 8,
      temperature: 0,
      guided_choice: ["yes", "no"],
    });
    // The others were decoding beside it when it ended, and go on without it.
    expect(await running()).toBeGreaterThan(0);
    const answers = await Promise.all(streams.map(read));

    expect(failure.status).toBe(500);
    expect(failure.json.error.type).toBe("server_error");
    expect(failure.json.error.message).not.toContain("\n");
    answers.forEach((answer, i) => {
      expect(answer.text).toBe(alone[i]!.text);
      expect(answer.finish).toBe("length");
    });
    expect(await failedGenerations()).toBe(1);
    expect(await running()).toBe(0);
    const next = await openai.completions.create({ model, prompt: "Once upon a time", max_tokens: 4, temperature: 0 });
    expect(next.choices[0]!.text).toBe(alone[0]!.text.slice(0, next.choices[0]!.text.length));
  });

  test("streamed, it ends its own stream with the error, through the official client; the others go on", async () => {
    const alone = await read(await open(prompts[0]!));
    const before = await failedGenerations();
    const other = await open(prompts[0]!);
    const failing = await openai.completions.create({
      model,
      prompt: POISON,
      max_tokens: 8,
      temperature: 0,
      stream: true,
      guided_choice: ["yes", "no"],
    } as OpenAI.CompletionCreateParamsStreaming);
    const error = await read(failing).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect((error as InstanceType<typeof OpenAI.APIError>).message).toContain("internal server error");
    expect(await running()).toBeGreaterThan(0);
    expect(await read(other)).toEqual(alone);
    expect(await failedGenerations()).toBe(before + 1);
    expect(await running()).toBe(0);
  });

  test("a streamed Response ends with the error event, then response.failed with one of OpenAI's response error codes", async () => {
    const events: OpenAI.Responses.ResponseStreamEvent[] = [];
    const stream = await openai.responses.create({
      model,
      input: POISON,
      text: { format: { type: "json_object" } },
      max_output_tokens: 8,
      temperature: 0,
      stream: true,
    });
    for await (const event of stream) events.push(event);
    const [error, failed] = events.slice(-2);
    expect(error).toMatchObject({ type: "error", code: "internal_error", message: "internal server error" });
    // ResponseError's code is an enum in the client's types: ours ("internal_error") is not among them.
    expect(failed).toMatchObject({
      type: "response.failed",
      response: { status: "failed", error: { code: "server_error" } },
    });
    expect(await running()).toBe(0);
  });

  test("a choice that fails a whole (not streamed) response stops the request's other choices: cancelled, not left decoding", async () => {
    const cancelled = () =>
      metric(/^mlx_generations_total\{route="\/v1\/completions",finish_reason="cancelled"\} (\d+)$/m);
    const [failedBefore, cancelledBefore] = [await failedGenerations(), await cancelled()];
    // Two prompts, one choice each; the grammar lets the sound one go on to its max_tokens.
    const failure = await post(`${server.url}/v1/completions`, {
      model,
      prompt: [prompts[0], POISON],
      max_tokens: 300,
      temperature: 0,
      guided_regex: "[a-z ]{0,400}",
    });
    expect(failure.status).toBe(500);
    expect(await failedGenerations()).toBe(failedBefore + 1);
    // Before, the sound choice decoded on to its end for the response already sent, counted as
    // if answered ("stop" or "length"), never as cancelled.
    expect(await cancelled()).toBe(cancelledBefore + 1);
    expect(await running()).toBe(0);
  });
});

describe("an embedding whose hidden states are not finite", () => {
  test("is a 500 naming its input, not a vector of nulls (JSON's NaN), on every route; the server embeds on", async () => {
    const healthy = await openai.embeddings.create({ model, input: "Hello there", encoding_format: "float" });
    const failure = await openai.embeddings.create({ model, input: ["Hello there", POISON] }).catch((e) => e);
    expect(failure).toMatchObject({ status: 500, param: "input.1", code: "non_finite_embedding" });
    expect(failure.message).toContain("not finite");
    const ollama = await post(`${server.url}/api/embed`, { model, input: POISON });
    expect(ollama.status).toBe(500);
    expect(ollama.json.error).toContain("'input' has no embedding");
    const again = await openai.embeddings.create({ model, input: "Hello there", encoding_format: "float" });
    expect(again.data[0]!.embedding).toEqual(healthy.data[0]!.embedding);
  });
});
