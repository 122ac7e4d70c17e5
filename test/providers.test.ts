// Remote providers against real servers on loopback, no mocks: a second `mlx serve` (a child
// process) is the provider, reached as an OpenAI-compatible one (/v1) and through its own
// Anthropic endpoint (/v1/messages); the official clients talk to the proxy in the other
// family. Small real HTTP servers in the test answer 429 with Retry-After, or JSON off the
// schema. The remote is killed mid-stream and restarted; an unreachable provider opens its
// circuit.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import Anthropic from "@anthropic-ai/sdk";
import { Ollama } from "ollama";
import OpenAI from "openai";
import Ajv from "ajv";
import type { Subprocess } from "bun";
import type { RunningServer } from "../src/server/app";
import { remoteModel, streamRemoteCompletion } from "../src/providers";
import { anthropicAdapter } from "../src/providers/anthropic";
import { defaultLimits } from "../src/providers/config";
import {
  answerValidator,
  answerValidatorCount,
  MAX_ANSWER_VALIDATORS,
  Provider,
  RemoteModel,
} from "../src/providers/model";
import { retryAfterMs } from "../src/retry-after";
import { loadAliases } from "../src/store/aliases";
import { cliRunner, mainScript } from "./helpers/cli";
import { eventually, post, serve } from "./helpers/serve";
import { writeScriptedModel } from "./helpers/scripted-model";
import { writeFimTinyModel, writeTinyModel } from "./helpers/tiny-model";

const repo = join(import.meta.dir, "..");
/** The store with the default model (SmolLM2), which the remote serves for the slow stream. */
const modelHome = process.env.MLX_HOME ?? join(repo, ".cache", "mlx-home");
const savedHome = process.env.MLX_HOME;
const root = mkdtempSync(join(tmpdir(), "mlx-providers-"));
/** The proxy's store: only its models.toml matters. */
const home = join(root, "home");
const tiny = join(root, "tiny");
/** A tiny model whose template writes each message's name, where it has one, after its role. */
const namer = join(root, "namer");
const namingTemplate =
  "{%- for m in messages %}{{ m.role }}{% if m.name %}({{ m.name }}){% endif %}: {{ m.content }}\n{% endfor %}" +
  "{%- if add_generation_prompt %}assistant:{% endif %}";
/** A tiny model with a Qwen3-style template: `enable_thinking` false writes an empty reasoning, else the prompt opens <think>. */
const thinker = join(root, "thinker");
const thinkingTemplate =
  "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}" +
  "{%- if add_generation_prompt %}<|im_start|>assistant\n" +
  "{%- if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{%- else %}<think>\n{%- endif %}{%- endif %}";
/**
 * A tiny model with a harmony template (it names <|channel|>, so the remote passes the effort to
 * it, as to gpt-oss's) that writes the effort asked three times into the prompt: the prompt's
 * token count says whether an effort reached the remote.
 */
const effortful = join(root, "effortful");
const effortTemplate =
  "{#- a harmony template: <|channel|> -#}" +
  "{%- for m in messages %}<|start|>{{ m.role }}<|message|>{{ m.content }}<|end|>{%- endfor %}" +
  "{%- if reasoning_effort is defined %}<|start|>system<|message|>Reasoning: {{ (reasoning_effort ~ ' ') * 3 }}<|end|>{%- endif %}" +
  "{%- if add_generation_prompt %}<|start|>assistant{%- endif %}";
/** A tiny model whose template writes an assistant turn's reasoning_content into the prompt. */
const reasoned = join(root, "reasoned");
const reasonedTemplate =
  "{%- for m in messages %}<|im_start|>{{ m.role }}\n{%- if m.reasoning_content %}[{{ m.reasoning_content }}]{%- endif %}{{ m.content }}<|im_end|>\n{%- endfor %}" +
  "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}";
/** A model whose greedy answer is "Hi" and its end token. */
const scripted = join(root, "scripted");
/** A tiny model with FIM tokens (fill-in-the-middle). */
const coder = join(root, "coder");
/** A file the remote cannot load: asked for it, the remote answers a 500. */
const corrupt = join(root, "corrupt.gguf");

let remotePort: number;
/** A port nothing listens on: the provider that opens its circuit. */
let unreachable: number;
/** Another port nothing listens on, for a provider with the default retries. */
let unreachableRetried: number;
let remote: Subprocess | undefined;
let proxy: RunningServer;
let openai: OpenAI;
let anthropic: Anthropic;
const helpers: ReturnType<typeof Bun.serve>[] = [];

/** A port the OS says is free now (the remote is restarted on it). */
function freePort(): number {
  const probe = Bun.serve({ port: 0, fetch: () => new Response() });
  const port = probe.port!;
  probe.stop(true);
  return port;
}

async function startRemote(): Promise<void> {
  remote = Bun.spawn(
    [process.execPath, mainScript, "serve", "--port", String(remotePort), "--max-models", "3", "--keep-alive", "-1"],
    { env: { ...process.env, MLX_HOME: modelHome, NO_COLOR: "1" }, stdout: "ignore", stderr: "ignore" },
  );
  await eventually(async () => {
    try {
      return (await fetch(`http://127.0.0.1:${remotePort}/health`)).ok;
    } catch {
      return false;
    }
  }, 60_000);
}

/** The request the 429 server counts, then answers by forwarding it to the real remote. */
let limitedHits: number[] = [];
/** Requests the always rate-limited server has seen. */
let busyHits = 0;
let wholeHits = 0;
/** Requests the server that ignores tool_choice has seen. */
let ignoresToolsHits = 0;
/** Requests the server that answers off the schema has seen. */
let offSchemaHits = 0;
/** The bodies the recording server forwarded to the real remote. */
const recordedBodies: Record<string, unknown>[] = [];
/** The bodies the server that answers as Anthropic's thinking models do was sent. */
const signedBodies: Record<string, unknown>[] = [];
/** Anthropic's signature of the thinking block that server streams, and its redacted block's data. */
const SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds";
const REDACTED = "EmwKAhgBEgy3va3pzix/LafPsn4aDFIT2Xlxh0L5L8rLVyIwxtE3rAFBa8cr3qpP";
/** The gated server's requests wait for this; and the client port each came from. */
let gate = Promise.withResolvers<void>();
const gatedPorts: number[] = [];

/** A whole OpenAI chat stream with one piece of text. */
function chatStream(text: string): string {
  const chunk = (choice: object) =>
    `data: ${JSON.stringify({ id: "x", object: "chat.completion.chunk", choices: [{ index: 0, ...choice }] })}\n\n`;
  return `${chunk({ delta: { content: text } })}${chunk({ delta: {}, finish_reason: "stop" })}data: [DONE]\n\n`;
}

beforeAll(async () => {
  writeTinyModel(tiny, { contextLength: 1024 });
  writeTinyModel(thinker, { modelType: "qwen3", contextLength: 512, chatTemplate: thinkingTemplate });
  writeTinyModel(namer, { contextLength: 512, chatTemplate: namingTemplate });
  writeTinyModel(effortful, { contextLength: 512, chatTemplate: effortTemplate });
  writeTinyModel(reasoned, { contextLength: 512, chatTemplate: reasonedTemplate });
  writeScriptedModel(scripted, ["Hi"]);
  writeFimTinyModel(coder, { contextLength: 512 });
  writeFileSync(corrupt, "not a model");
  remotePort = freePort();
  await startRemote();
  const base = `http://127.0.0.1:${remotePort}`;

  const limited = Bun.serve({
    port: 0,
    async fetch(req) {
      limitedHits.push(performance.now());
      if (limitedHits.length === 1)
        return Response.json({ error: { message: "slow down" } }, { status: 429, headers: { "Retry-After": "1" } });
      return fetch(`${base}/v1/chat/completions`, { method: "POST", headers: req.headers, body: await req.text() });
    },
  });
  // Forwards each request to the real remote, keeping its body: what the proxy sent, as sent.
  const recording = Bun.serve({
    port: 0,
    async fetch(req) {
      const body = await req.text();
      recordedBodies.push(JSON.parse(body));
      return fetch(`${base}${new URL(req.url).pathname}`, { method: "POST", headers: req.headers, body });
    },
  });
  const offSchema = Bun.serve({
    port: 0,
    fetch() {
      offSchemaHits++;
      return new Response(chatStream('{"age": "old"}'), { headers: { "Content-Type": "text/event-stream" } });
    },
  });
  const gated = Bun.serve({
    port: 0,
    async fetch(req, server) {
      gatedPorts.push(server.requestIP(req)!.port);
      await gate.promise;
      return new Response(chatStream("done"), { headers: { "Content-Type": "text/event-stream" } });
    },
  });
  // Headers and a comment at once, then nothing.
  const silent = Bun.serve({
    port: 0,
    idleTimeout: 0,
    fetch: () =>
      new Response(
        new ReadableStream({
          start(controller) {
            controller.enqueue(new TextEncoder().encode(": hello\n\n"));
          },
        }),
        { headers: { "Content-Type": "text/event-stream" } },
      ),
  });
  // Always rate-limited, asking for a wait past any retry_max.
  const busy = Bun.serve({
    port: 0,
    fetch() {
      busyHits++;
      return Response.json(
        { error: { message: "rate limit reached" } },
        { status: 429, headers: { "Retry-After": "60" } },
      );
    },
  });
  // Ignores stream: true, as some OpenAI-compatible proxies do: the real remote's whole answer as JSON.
  const whole = Bun.serve({
    port: 0,
    async fetch(req) {
      wholeHits++;
      const body = { ...((await req.json()) as object), stream: false, stream_options: undefined };
      return fetch(`${base}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify(body),
      });
    },
  });
  // As mlx_lm.server streams a long prompt's prefill: a comment per prefill step, each far sooner
  // than the read timeout (1 s: a loaded machine that delays a step by 10 times still sends in time),
  // all of them longer (15 sleeps of at least 0.1 s); then its answer (its exact bytes: a role on
  // every delta).
  const keptAlive = Bun.serve({
    port: 0,
    fetch: () =>
      new Response(
        new ReadableStream({
          async start(controller) {
            const send = (text: string) => controller.enqueue(new TextEncoder().encode(text));
            for (let step = 1; step <= 15; step++) {
              send(`: keepalive ${step * 256}/3840\n\n`);
              await Bun.sleep(100);
            }
            const chunk = (choice: object) =>
              `data: ${JSON.stringify({ id: "chatcmpl-1", object: "chat.completion.chunk", model: "default_model", created: 1, choices: [{ index: 0, ...choice }] })}\n\n`;
            send(chunk({ finish_reason: null, delta: { role: "assistant", content: "Hi" } }));
            send(chunk({ finish_reason: "stop", delta: { role: "assistant" } }));
            send("data: [DONE]\n\n");
            controller.close();
          },
        }),
        { headers: { "Content-type": "text/event-stream" } },
      ),
  });
  // As mlx_lm.server answered a request whose tool_choice is "required" (SmolLM2, whose template
  // has no tools): text, its exact chunks, no call.
  const ignoresTools = Bun.serve({
    port: 0,
    fetch() {
      ignoresToolsHits++;
      const chunk = (choice: object) =>
        `data: ${JSON.stringify({ id: "chatcmpl-1", object: "chat.completion.chunk", model: "default_model", created: 1, choices: [{ index: 0, ...choice }] })}\n\n`;
      return new Response(
        `: keepalive 34/34\n\n${chunk({ finish_reason: null, delta: { role: "assistant", content: "Bienvenue" } })}${chunk({ finish_reason: "length", delta: { role: "assistant" } })}data: [DONE]\n\n`,
        { headers: { "Content-type": "text/event-stream" } },
      );
    },
  });
  // Moves the Messages API to another origin (localhost, not 127.0.0.1): the real remote's.
  const moved = Bun.serve({
    port: 0,
    fetch: () =>
      new Response(null, { status: 307, headers: { Location: `http://localhost:${remotePort}/v1/messages` } }),
  });
  // A web server, not the API (a base_url that misses it): nginx's error page.
  const webPage = Bun.serve({
    port: 0,
    fetch: () =>
      new Response(
        "<html>\r\n<head><title>404 Not Found</title></head>\r\n<body>\r\n<center><h1>404 Not Found</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n</body>\r\n</html>\r\n",
        { status: 404, headers: { "Content-Type": "text/html" } },
      ),
  });
  // Anthropic overloaded: mid-stream, an error event after some text (as its streams fail under
  // load); asked for the model "refused", before any, its 529 status.
  const overloaded = Bun.serve({
    port: 0,
    async fetch(req) {
      const body = (await req.json()) as { model: string };
      const error = { type: "error", error: { type: "overloaded_error", message: "Overloaded" } };
      if (body.model === "refused") return Response.json(error, { status: 529 });
      const events = [
        {
          type: "message_start",
          message: {
            id: "msg_3",
            type: "message",
            role: "assistant",
            content: [],
            usage: { input_tokens: 5, output_tokens: 1 },
          },
        },
        { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } },
        { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "Once upon" } },
        error,
      ];
      return new Response(events.map((e) => `event: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`).join(""), {
        headers: { "Content-Type": "text/event-stream" },
      });
    },
  });
  // No real mlx serve signs its thinking, nor writes a prompt cache apart: as Anthropic's thinking
  // models stream a tool call (the event sequence of its documentation), a signed thinking block
  // and a redacted one before it, its prompt's first 1,500 tokens written to its cache. Asked for
  // the model "refusing", as Claude declines: some text, then stop_reason "refusal".
  const signing = Bun.serve({
    port: 0,
    async fetch(req) {
      const body = (await req.json()) as Record<string, unknown>;
      signedBodies.push(body);
      const start = {
        type: "message_start",
        message: {
          id: "msg_2",
          type: "message",
          role: "assistant",
          content: [],
          model: body.model,
          usage: { input_tokens: 9, output_tokens: 1 },
        },
      };
      const refusal = [
        start,
        { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } },
        { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "I can't help" } },
        { type: "content_block_stop", index: 0 },
        { type: "message_delta", delta: { stop_reason: "refusal", stop_sequence: null }, usage: { output_tokens: 4 } },
        { type: "message_stop" },
      ];
      const answer = [
        {
          type: "message_start",
          message: {
            id: "msg_1",
            type: "message",
            role: "assistant",
            content: [],
            model: "claude-sonnet-4-5",
            stop_reason: null,
            stop_sequence: null,
            usage: {
              input_tokens: 40,
              cache_creation_input_tokens: 1500,
              cache_read_input_tokens: 0,
              output_tokens: 1,
            },
          },
        },
        { type: "content_block_start", index: 0, content_block: { type: "thinking", thinking: "", signature: "" } },
        {
          type: "content_block_delta",
          index: 0,
          delta: { type: "thinking_delta", thinking: "The user wants Oslo's weather;" },
        },
        { type: "content_block_delta", index: 0, delta: { type: "thinking_delta", thinking: " the tool has it." } },
        { type: "content_block_delta", index: 0, delta: { type: "signature_delta", signature: SIGNATURE } },
        { type: "content_block_stop", index: 0 },
        { type: "content_block_start", index: 1, content_block: { type: "redacted_thinking", data: REDACTED } },
        { type: "content_block_stop", index: 1 },
        {
          type: "content_block_start",
          index: 2,
          content_block: { type: "tool_use", id: "toolu_01", name: "get_weather", input: {} },
        },
        {
          type: "content_block_delta",
          index: 2,
          delta: { type: "input_json_delta", partial_json: '{"city": "Oslo"}' },
        },
        { type: "content_block_stop", index: 2 },
        {
          type: "message_delta",
          delta: { stop_reason: "tool_use", stop_sequence: null },
          usage: { output_tokens: 30 },
        },
        { type: "message_stop" },
      ];
      const events = body.model === "refusing" ? refusal : answer;
      return new Response(events.map((e) => `event: ${e.type}\ndata: ${JSON.stringify(e)}\n\n`).join(""), {
        headers: { "Content-Type": "text/event-stream" },
      });
    },
  });
  helpers.push(
    overloaded,
    signing,
    recording,
    limited,
    offSchema,
    gated,
    silent,
    keptAlive,
    ignoresTools,
    busy,
    whole,
    moved,
    webPage,
  );
  unreachable = freePort();
  unreachableRetried = freePort();

  process.env.MLX_HOME = home;
  const { mkdirSync } = await import("node:fs");
  mkdirSync(home, { recursive: true });
  writeFileSync(
    join(home, "models.toml"),
    `
[models.ro]
provider = "openai"
base_url = "${base}/v1"
model = "${tiny}"

[models.rslow]
provider = "openai"
base_url = "${base}/v1"
model = "smollm2"

[models.ra]
provider = "anthropic"
base_url = "${base}"
model = "${tiny}"

[models.rthink]
provider = "openai"
base_url = "${base}/v1"
model = "${thinker}"

[models.rathink]
provider = "anthropic"
base_url = "${base}"
model = "${thinker}"

[models.rscripted]
provider = "openai"
base_url = "${base}/v1"
model = "${scripted}"

[models.rrecorded]
provider = "openai"
base_url = "http://127.0.0.1:${recording.port}/v1"
model = "${thinker}"

[models.rreasoned]
provider = "openai"
base_url = "${base}/v1"
model = "${reasoned}"

[models.rarecorded]
provider = "anthropic"
base_url = "http://127.0.0.1:${recording.port}"
model = "${tiny}"

[models.rarefusing]
provider = "anthropic"
base_url = "http://127.0.0.1:${signing.port}"
model = "refusing"

[models.rasigned]
provider = "anthropic"
base_url = "http://127.0.0.1:${signing.port}"
model = "claude-sonnet-4-5"

[models.rathinkrecorded]
provider = "anthropic"
base_url = "http://127.0.0.1:${recording.port}"
model = "${thinker}"

[models.reffort]
provider = "openai"
base_url = "${base}/v1"
model = "${effortful}"

[models.raeffort]
provider = "anthropic"
base_url = "${base}"
model = "${effortful}"

[models.rcoder]
provider = "openai"
base_url = "${base}/v1"
model = "${coder}"

[models.limited]
provider = "openai"
base_url = "http://127.0.0.1:${limited.port}/v1"
model = "${tiny}"
retry_base = 0.05

[models.offschema]
provider = "openai"
base_url = "http://127.0.0.1:${offSchema.port}/v1"
model = "anything"

[models.gated]
provider = "openai"
base_url = "http://127.0.0.1:${gated.port}/v1"
model = "anything"
max_connections = 1
max_queue = 1

[models.silent]
provider = "openai"
base_url = "http://127.0.0.1:${silent.port}/v1"
model = "anything"
read_timeout = 0.3
max_retries = 0

[models.keptalive]
provider = "openai"
base_url = "http://127.0.0.1:${keptAlive.port}/v1"
model = "default_model"
read_timeout = 1
max_retries = 0

[models.notools]
provider = "openai"
base_url = "http://127.0.0.1:${ignoresTools.port}/v1"
model = "default_model"
max_retries = 0

[models.busy]
provider = "openai"
base_url = "http://127.0.0.1:${busy.port}/v1"
model = "anything"

[models.whole]
provider = "openai"
base_url = "http://127.0.0.1:${whole.port}/v1"
model = "${tiny}"

[models.moved]
provider = "anthropic"
base_url = "http://127.0.0.1:${moved.port}"
model = "${tiny}"
api_key_env = "MLX_TEST_MOVED_KEY"

[models.webpage]
provider = "openai"
base_url = "http://127.0.0.1:${webPage.port}"
model = "anything"
max_retries = 0

[models.cligood]
provider = "openai"
base_url = "${base}/v1?via=cli"
model = "${tiny}"
max_retries = 0
circuit_failures = 2
circuit_cooldown = 60

[models.clibroken]
provider = "openai"
base_url = "${base}/v1?via=cli"
model = "${corrupt}"
max_retries = 0
circuit_failures = 2
circuit_cooldown = 60

[models.secretive]
provider = "openai"
base_url = "http://mlx-user:pw-s3cret@127.0.0.1:${remotePort}/v1/?tenant=key-s3cret"
model = "${tiny}"

[models.secretive2]
provider = "openai"
base_url = "http://mlx-user:pw-other@127.0.0.1:${remotePort}/v1/?tenant=key-other"
model = "${tiny}"

[models.keyless]
provider = "openai"
base_url = "${base}/v1"
model = "${tiny}"
api_key_env = "MLX_TEST_KEY_NEVER_SET"

[models.downretried]
provider = "openai"
base_url = "http://127.0.0.1:${unreachableRetried}/v1"
model = "anything"
retry_base = 0.01
circuit_failures = 2
circuit_cooldown = 60

[models.overloaded]
provider = "anthropic"
base_url = "http://127.0.0.1:${overloaded.port}"
model = "streamed"
max_retries = 0

[models.overloaded529]
provider = "anthropic"
base_url = "http://127.0.0.1:${overloaded.port}"
model = "refused"
max_retries = 0

[models.down]
provider = "openai"
base_url = "http://127.0.0.1:${unreachable}/v1"
model = "anything"
max_retries = 0
circuit_failures = 2
circuit_cooldown = 1
`,
  );
  process.env.MLX_TEST_MOVED_KEY = "sk-moved-s3cret";
  proxy = serve();
  openai = new OpenAI({ baseURL: `${proxy.url}/v1`, apiKey: "unused", maxRetries: 0 });
  anthropic = new Anthropic({ baseURL: proxy.url, apiKey: "unused", maxRetries: 0 });
}, 120_000);

afterAll(async () => {
  await proxy?.stop();
  remote?.kill();
  for (const h of helpers) h.stop(true);
  if (savedHome === undefined) delete process.env.MLX_HOME;
  else process.env.MLX_HOME = savedHome;
});

const metrics = async () => (await fetch(`${proxy.url}/metrics`)).text();
const metric = (text: string, name: string, labels: string) =>
  Number(new RegExp(`^${name}\\{${labels}\\} (\\S+)$`, "m").exec(text)?.[1] ?? Number.NaN);

const forecastSchema = {
  type: "object" as const,
  properties: { city: { type: "string", maxLength: 10 }, days: { type: "integer", minimum: 1, maximum: 7 } },
  required: ["city", "days"],
  additionalProperties: false,
};
const validForecast = new Ajv().compile(forecastSchema);

describe("every API family reaches either provider kind", () => {
  test("the openai client, chat and streamed, through an Anthropic provider", async () => {
    const whole = await openai.chat.completions.create({
      model: "ra",
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 6,
    });
    expect(whole.model).toBe("ra");
    expect(whole.choices[0]!.message.content!.length).toBeGreaterThan(0);
    expect(whole.choices[0]!.finish_reason).toBe("length");
    expect(whole.usage!.completion_tokens).toBe(6);
    const stream = await openai.chat.completions.create({
      model: "ra",
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 6,
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = "";
    let usage: OpenAI.CompletionUsage | undefined | null;
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? "";
      usage = chunk.usage ?? usage;
    }
    expect(text.length).toBeGreaterThan(0);
    expect(usage!.completion_tokens).toBe(6);
  });

  test("the anthropic client, create and stream, through an OpenAI-compatible provider", async () => {
    const m = await anthropic.messages.create({
      model: "ro",
      max_tokens: 6,
      messages: [{ role: "user", content: "Hi" }],
    });
    expect(m.stop_reason).toBe("max_tokens");
    expect(m.content[0]!.type).toBe("text");
    expect(m.usage.output_tokens).toBe(6);
    const events: string[] = [];
    const stream = anthropic.messages.stream({
      model: "ro",
      max_tokens: 6,
      messages: [{ role: "user", content: "Hi" }],
    });
    for await (const event of stream) events.push(event.type);
    const final = await stream.finalMessage();
    expect(events[0]).toBe("message_start");
    expect(events).toContain("content_block_delta");
    expect(events.at(-1)).toBe("message_stop");
    expect(final.usage.output_tokens).toBe(6);
  });

  test("an Anthropic client's stop sequence, met by the OpenAI-compatible remote, is named as Anthropic names it", async () => {
    const ask = {
      model: "ro",
      max_tokens: 12,
      temperature: 0,
      messages: [{ role: "user" as const, content: "Count" }],
    };
    const full = await anthropic.messages.create(ask);
    const text = full.content[0]!.type === "text" ? full.content[0]!.text : "";
    const stop = text
      .slice(Math.floor(text.length / 2))
      .trim()
      .slice(0, 2);
    expect(stop.length).toBeGreaterThan(0);
    const stopped = await anthropic.messages.create({ ...ask, stop_sequences: ["never-generated-zzz", stop] });
    expect(stopped.stop_reason).toBe("stop_sequence");
    expect(stopped.stop_sequence).toBe(stop);
  });

  test("a tool round-trip: an Anthropic client's forced tool call, made by the OpenAI-compatible remote", async () => {
    const tools: Anthropic.Tool[] = [
      { name: "forecast", description: "The weather forecast", input_schema: forecastSchema },
    ];
    const ask: Anthropic.MessageParam[] = [{ role: "user", content: "Weather in Oslo?" }];
    // Greedy: a sampled call of the random-weight model ran past 60 tokens now and then (a CI run).
    // (This SDK's types no longer list `temperature`; the API and our server still take it.)
    const greedy = { temperature: 0 };
    const call = await anthropic.messages.create({
      ...greedy,
      model: "ro",
      max_tokens: 60,
      messages: ask,
      tools,
      tool_choice: { type: "tool", name: "forecast", disable_parallel_tool_use: true },
    });
    expect(call.stop_reason).toBe("tool_use");
    const use = call.content.find((b) => b.type === "tool_use") as Anthropic.ToolUseBlock;
    expect(use.name).toBe("forecast");
    expect(validForecast(use.input)).toBe(true);
    const answer = await anthropic.messages.create({
      model: "ro",
      max_tokens: 6,
      tools,
      messages: [
        ...ask,
        { role: "assistant", content: call.content },
        { role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "Sunny, 21 C" }] },
      ],
    });
    expect(answer.content.some((b) => b.type === "text")).toBe(true);
  });

  test("an OpenAI client's required tool call, made by the Anthropic remote", async () => {
    const r = await openai.chat.completions.create({
      model: "ra",
      max_tokens: 60,
      // Greedy: the random model's call then ends within the tiny context (sampled, it can run
      // out of room, and a call cut short is finish_reason "length").
      temperature: 0,
      messages: [{ role: "user", content: "Weather in Oslo?" }],
      tools: [{ type: "function", function: { name: "forecast", parameters: forecastSchema } }],
      tool_choice: "required",
      parallel_tool_calls: false,
    });
    expect(r.choices[0]!.finish_reason).toBe("tool_calls");
    const call = r.choices[0]!.message.tool_calls![0]! as OpenAI.ChatCompletionMessageFunctionToolCall;
    expect(call.function.name).toBe("forecast");
    expect(validForecast(JSON.parse(call.function.arguments))).toBe(true);
  });

  test("an Ollama client's tool results, which carry no call ids, reach either provider tied to their calls", async () => {
    const ollama = new Ollama({ host: proxy.url });
    const tools = [
      {
        type: "function",
        function: { name: "forecast", description: "The weather forecast", parameters: forecastSchema },
      },
    ];
    for (const model of ["ro", "ra"]) {
      const r = await ollama.chat({
        model,
        tools,
        options: { num_predict: 4 },
        messages: [
          { role: "user", content: "Weather in Oslo and Rome?" },
          {
            role: "assistant",
            content: "",
            tool_calls: [
              { function: { name: "forecast", arguments: { city: "Oslo", days: 1 } } },
              { function: { name: "forecast", arguments: { city: "Rome", days: 1 } } },
            ],
          },
          { role: "tool", content: "Sunny, 21 C", tool_name: "forecast" },
          { role: "tool", content: "Rain, 12 C", tool_name: "forecast" },
        ],
      });
      expect(r.message.role).toBe("assistant");
      expect(r.done).toBe(true);
    }
  });

  test("Ollama chat and generate, and the Responses API", async () => {
    const chat = await post(`${proxy.url}/api/chat`, {
      model: "ra",
      messages: [{ role: "user", content: "Hi" }],
      stream: false,
      options: { num_predict: 5 },
    });
    expect(chat.status).toBe(200);
    expect(chat.json.done_reason).toBe("length");
    expect(chat.json.eval_count).toBe(5);
    const generate = await post(`${proxy.url}/api/generate`, {
      model: "ro",
      prompt: "Hi",
      stream: false,
      options: { num_predict: 5 },
    });
    expect(generate.status).toBe(200);
    expect(generate.json.response.length).toBeGreaterThan(0);
    const response = await openai.responses.create({ model: "ra", input: "Hi", max_output_tokens: 5 });
    expect(response.status).toBe("incomplete");
    expect(response.output_text.length).toBeGreaterThan(0);
  });

  test("a fill-in-the-middle request (Ollama's suffix) reaches the OpenAI-compatible remote's /completions with its suffix", async () => {
    const request = {
      prompt: "def f(",
      suffix: "\n    return x\n",
      stream: false,
      // No repetition penalty: Ollama's counts the prompt here, OpenAI's the answer alone at the remote.
      options: { temperature: 0, num_predict: 3, repeat_penalty: 1 },
    };
    const direct = await post(`http://127.0.0.1:${remotePort}/api/generate`, { model: coder, ...request });
    const proxied = await post(`${proxy.url}/api/generate`, { model: "rcoder", ...request });
    expect(proxied.status).toBe(200);
    // The remote read the suffix too: the same prompt, so the same greedy answer.
    expect(proxied.json.prompt_eval_count).toBe(direct.json.prompt_eval_count);
    expect(proxied.json.response).toBe(direct.json.response);
  });

  test("a raw completion goes to the OpenAI-compatible remote's /completions; an Anthropic one refuses it", async () => {
    const r = await openai.completions.create({ model: "ro", prompt: "Once upon", max_tokens: 5 });
    expect(r.choices[0]!.text.length).toBeGreaterThan(0);
    const refused = await post(`${proxy.url}/v1/completions`, { model: "ra", prompt: "Once upon", max_tokens: 5 });
    expect(refused.status).toBe(400);
    expect(refused.json.error.message).toContain("chat messages only");
    const logprobs = await post(`${proxy.url}/v1/chat/completions`, {
      model: "ro",
      messages: [{ role: "user", content: "Hi" }],
      logprobs: true,
    });
    expect(logprobs.status).toBe(400);
    expect(logprobs.json.error.param).toBe("logprobs");
    // The provider tokenizes the prompt: its tokens, and their logprobs, are not ours to echo.
    const echo = await post(`${proxy.url}/v1/completions`, { model: "ro", prompt: "Once upon", echo: true });
    expect({ status: echo.status, param: echo.json.error?.param }).toEqual({ status: 400, param: "echo" });
  });
});

describe("embeddings", () => {
  test("go to an OpenAI-compatible provider's /embeddings on every route; an Anthropic one's is a 400", async () => {
    const input = ["Hello there", "Goodbye"];
    const direct = new OpenAI({ baseURL: `http://127.0.0.1:${remotePort}/v1`, apiKey: "unused", maxRetries: 0 });
    const expected = (await direct.embeddings.create({ model: tiny, input })).data.map((d) => d.embedding);
    // The client's default, base64, and float, passed through under the alias.
    const proxied = await openai.embeddings.create({ model: "ro", input });
    expect(proxied.model).toBe("ro");
    expect(proxied.data.map((d) => d.embedding)).toEqual(expected);
    expect(proxied.usage.prompt_tokens).toBeGreaterThan(2);
    const float = await openai.embeddings.create({ model: "ro", input, encoding_format: "float", dimensions: 8 });
    expect(float.data[0]!.embedding.length).toBe(8);
    const ollama = new Ollama({ host: proxy.url });
    const embedded = await ollama.embed({ model: "ro:latest", input });
    expect(embedded.embeddings).toEqual(expected);
    expect(embedded.prompt_eval_count).toBe(proxied.usage.prompt_tokens);
    expect((await ollama.embeddings({ model: "ro", prompt: "Goodbye" })).embedding).toEqual(expected[1]!);
    // Nothing to load ahead: an empty input is answered at once.
    expect((await ollama.embed({ model: "ro", input: [] })).embeddings).toEqual([]);
    await expect(ollama.embed({ model: "ro", input, options: { num_ctx: 8 } })).rejects.toThrow("num_ctx");
    // The provider's refusal is the client's 400, in its words.
    const refused = await openai.embeddings.create({ model: "ro", input: [[999_999]] }).catch((e) => e);
    expect(refused).toMatchObject({ status: 400 });
    expect(refused.message).toContain("vocabulary");
    const anthropicProvider = await openai.embeddings.create({ model: "ra", input }).catch((e) => e);
    expect(anthropicProvider).toMatchObject({ status: 400, param: "model" });
    expect(anthropicProvider.message).toContain("has no embeddings");
  });
});

describe("thinking", () => {
  const hi = [{ role: "user" as const, content: "Hi" }];
  /** The remote's own answer to a chat request, for the proxy's to equal. */
  const direct = async (body: Record<string, unknown>) =>
    (await post(`http://127.0.0.1:${remotePort}/v1/chat/completions`, { model: thinker, messages: hi, ...body })).json
      .choices[0].message;

  test("is asked of either provider kind and its reasoning comes back apart from the answer", async () => {
    // Before, --think and a budget were not sent, and a provider's reasoning was dropped.
    const expected = await direct({ max_tokens: 24, temperature: 0, thinking_budget: 4 });
    expect(expected.reasoning_content.length).toBeGreaterThan(0);
    for (const model of ["rthink", "rathink"]) {
      const r = await post(`${proxy.url}/v1/chat/completions`, {
        model,
        messages: hi,
        max_tokens: 24,
        temperature: 0,
        reasoning_effort: "high",
        thinking_budget: 4,
      });
      expect(r.status).toBe(200);
      expect([r.json.choices[0].message.reasoning_content, r.json.choices[0].message.content]).toEqual([
        expected.reasoning_content,
        expected.content,
      ]);
    }
    // An Anthropic client's thinking block, from the OpenAI-compatible provider.
    const m = await anthropic.messages.create({
      model: "rthink",
      max_tokens: 24,
      ...({ temperature: 0 } as object), // this SDK's types list no sampling fields
      thinking: { type: "enabled", budget_tokens: 4 },
      messages: hi,
    });
    expect(m.content[0]).toMatchObject({ type: "thinking", thinking: expected.reasoning_content });
  });

  test("switched off, the provider's template leaves it out", async () => {
    for (const model of ["rthink", "rathink"]) {
      const r = await post(`${proxy.url}/v1/chat/completions`, {
        model,
        messages: hi,
        max_tokens: 8,
        temperature: 0,
        reasoning_effort: "none",
      });
      expect(r.status).toBe(200);
      expect(r.json.choices[0].message.reasoning_content).toBeUndefined();
      expect(r.json.choices[0].message.content).toBe(
        (await direct({ max_tokens: 8, temperature: 0, reasoning_effort: "none" })).content,
      );
    }
  });

  test("reasoning_effort 'none' goes to an OpenAI-compatible provider as asked, beside enable_thinking false; other switches send no effort", async () => {
    const sent = async (ask: () => Promise<unknown>) => {
      recordedBodies.length = 0;
      await ask();
      expect(recordedBodies).toHaveLength(1);
      const { reasoning_effort, chat_template_kwargs } = recordedBodies[0]!;
      return { reasoning_effort, chat_template_kwargs };
    };
    const off = { reasoning_effort: "none", chat_template_kwargs: { enable_thinking: false } };
    // Before, only enable_thinking went: a template that reads reasoning_effort (gpt-oss's on vLLM) was not told.
    const chat = await openai.chat.completions.create({
      model: "rrecorded",
      messages: hi,
      max_tokens: 8,
      temperature: 0,
      reasoning_effort: "none",
    });
    expect(recordedBodies[0]).toMatchObject(off);
    expect(chat.choices[0]!.message.content).toBe(
      (await direct({ max_tokens: 8, temperature: 0, reasoning_effort: "none" })).content,
    );
    expect(
      await sent(() =>
        openai.responses.create({
          model: "rrecorded",
          input: "Hi",
          max_output_tokens: 4,
          reasoning: { effort: "none" },
        }),
      ),
    ).toEqual(off);
    // Thinking switched off by a field that names no effort: none is added, which older providers refuse.
    const noEffort = { reasoning_effort: undefined, chat_template_kwargs: { enable_thinking: false } };
    expect(
      await sent(() =>
        new Ollama({ host: proxy.url }).chat({
          model: "rrecorded",
          messages: hi,
          think: false,
          options: { num_predict: 4 },
        }),
      ),
    ).toEqual(noEffort);
    expect(
      await sent(() =>
        post(`${proxy.url}/v1/chat/completions`, {
          model: "rrecorded",
          messages: hi,
          max_tokens: 4,
          chat_template_kwargs: { enable_thinking: false },
        }),
      ),
    ).toEqual(noEffort);
  });

  test("an effort (reasoning_effort, the Responses API's reasoning.effort, Ollama's think, Anthropic's output_config.effort) reaches either provider kind", async () => {
    // The remote's own prompt, with and without an effort: its template writes the effort into it.
    const promptTokens = async (body: Record<string, unknown>) =>
      (
        await post(`http://127.0.0.1:${remotePort}/v1/chat/completions`, {
          model: effortful,
          messages: hi,
          max_tokens: 1,
          ...body,
        })
      ).json.usage.prompt_tokens as number;
    const withLow = await promptTokens({ reasoning_effort: "low" });
    expect(withLow).toBeGreaterThan(await promptTokens({}));
    // Before, the effort was dropped on the way: the remote's prompt had none.
    const chat = await openai.chat.completions.create({
      model: "reffort",
      messages: hi,
      max_tokens: 1,
      reasoning_effort: "low",
    });
    expect(chat.usage!.prompt_tokens).toBe(withLow);
    const response = await openai.responses.create({
      model: "reffort",
      input: "Hi",
      max_output_tokens: 1,
      reasoning: { effort: "low" },
    });
    expect(response.usage!.input_tokens).toBe(withLow);
    const ollama = await new Ollama({ host: proxy.url }).chat({
      model: "reffort",
      messages: hi,
      think: "low",
      options: { num_predict: 1 },
    });
    expect(ollama.prompt_eval_count).toBe(withLow);
    // Anthropic's output_config.effort, to either provider kind (an Anthropic provider is sent it as that).
    for (const model of ["reffort", "raeffort"]) {
      const m = await anthropic.messages.create({
        model,
        max_tokens: 1,
        messages: hi,
        output_config: { effort: "low" },
      });
      expect(m.usage.input_tokens + (m.usage.cache_read_input_tokens ?? 0)).toBe(withLow);
    }
  });

  test("mlx run and chat send --think and --thinking-budget, and show the reasoning", async () => {
    const expected = await direct({ max_tokens: 24, temperature: 0, thinking_budget: 4 });
    const cli = cliRunner(home);
    const run = await cli([
      "run",
      "-m",
      "rathink",
      "--think",
      "--thinking-budget",
      "4",
      "--max-tokens",
      "24",
      "--json",
      "Hi",
    ]);
    expect(run.code).toBe(0);
    expect(JSON.parse(run.stdout)).toMatchObject({ reasoning: expected.reasoning_content, text: expected.content });
    const chat = await cli(["chat", "-m", "rthink", "--thinking-budget", "4", "--max-tokens", "24"], "Hi\n");
    expect(chat.code).toBe(0);
    expect(chat.stdout).toContain(expected.reasoning_content.trim());
  });
});

test("ignore_eos reaches an OpenAI-compatible provider; an Anthropic one, which has no such switch, refuses it", async () => {
  const ask = (model: string, extra: Record<string, unknown> = {}) =>
    post(`${proxy.url}/v1/chat/completions`, {
      model,
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 6,
      temperature: 0,
      ...extra,
    });
  const ended = await ask("rscripted");
  expect(ended.json.choices[0].finish_reason).toBe("stop");
  expect(ended.json.usage.completion_tokens).toBeLessThan(6);
  // Before, ignore_eos was dropped on the way: the remote stopped at its end token.
  const past = await ask("rscripted", { ignore_eos: true });
  expect(past.json.choices[0].finish_reason).toBe("length");
  expect(past.json.usage.completion_tokens).toBe(6);
  const refused = await ask("ra", { ignore_eos: true });
  expect(refused.status).toBe(400);
  expect(refused.json.error).toMatchObject({
    param: "ignore_eos",
    message: "'ignore_eos' is not supported by model 'ra' (an Anthropic provider)",
  });
});

test("the end user, the prompt cache key and its retention a request names reach the provider, as its API names them", async () => {
  const hi = [{ role: "user" as const, content: "Hi" }];
  const sent = async (ask: () => Promise<unknown>) => {
    recordedBodies.length = 0;
    await ask();
    expect(recordedBodies).toHaveLength(1);
    const { user, safety_identifier, prompt_cache_key, prompt_cache_retention, metadata } = recordedBodies[0]!;
    return { user, safety_identifier, prompt_cache_key, prompt_cache_retention, metadata };
  };
  const hints = {
    user: "u-1",
    safety_identifier: "s-1",
    prompt_cache_key: "k-1",
    prompt_cache_retention: "24h" as const,
  };
  // Before, each was dropped on the way.
  const chat = (model: string) => () =>
    openai.chat.completions.create({ model, messages: hi, max_tokens: 2, ...hints });
  expect(await sent(chat("rrecorded"))).toEqual({ ...hints, metadata: undefined });
  expect(
    await sent(() => openai.responses.create({ model: "rrecorded", input: "Hi", max_output_tokens: 2, ...hints })),
  ).toEqual({ ...hints, metadata: undefined });
  // The spelling OpenAI's clients first had for in_memory, which agent frameworks still send.
  const legacy = { ...hints, prompt_cache_retention: "in-memory" } as object;
  expect(
    await sent(() => openai.chat.completions.create({ model: "rrecorded", messages: hi, max_tokens: 2, ...legacy })),
  ).toEqual({ ...hints, prompt_cache_retention: "in_memory", metadata: undefined });
  const anthropicAsked = (model: string) => () =>
    anthropic.messages.create({ model, max_tokens: 2, messages: hi, metadata: { user_id: "u-2" } });
  expect(await sent(anthropicAsked("rrecorded"))).toMatchObject({ user: "u-2", metadata: undefined });
  // To an Anthropic provider: the end user as its metadata.user_id, which is all it takes of them.
  expect(await sent(anthropicAsked("rarecorded"))).toMatchObject({ user: undefined, metadata: { user_id: "u-2" } });
  expect(await sent(chat("rarecorded"))).toEqual({
    user: undefined,
    safety_identifier: undefined,
    prompt_cache_key: undefined,
    prompt_cache_retention: undefined,
    metadata: { user_id: "u-1" },
  });
});

test("an Anthropic client's signed and redacted thinking, its cache_control markers and a failed tool's is_error reach an Anthropic provider unchanged", async () => {
  // As Anthropic answered turn 1 of a tool loop with extended thinking: it verifies the
  // signatures of the thinking blocks sent back before the tool result (before, each was dropped).
  const thinking = {
    type: "thinking" as const,
    thinking: "Oslo's weather: ask the tool.",
    signature: "EqQBCkYIBRgCKkD-sig",
  };
  const redacted = { type: "redacted_thinking" as const, data: "EmwKAhgBEgy3va3pzix-encrypted" };
  const call = { type: "tool_use" as const, id: "toolu_01", name: "get_weather", input: { city: "Oslo" } };
  const result = {
    type: "tool_result" as const,
    tool_use_id: "toolu_01",
    content: "Error: the weather service is down",
    is_error: true,
    cache_control: { type: "ephemeral" as const, ttl: "1h" as const },
  };
  const tool = {
    name: "get_weather",
    description: "The weather in a city",
    input_schema: { type: "object" as const, properties: { city: { type: "string" } } },
    cache_control: { type: "ephemeral" as const },
  };
  const system = [
    { type: "text" as const, text: "You report the weather.", cache_control: { type: "ephemeral" as const } },
  ];
  const messages: Anthropic.MessageParam[] = [
    { role: "user", content: [{ type: "text", text: "Weather in Oslo?" }] },
    { role: "assistant", content: [thinking, redacted, { type: "text", text: "Let me look." }, call] },
    { role: "user", content: [result] },
  ];
  for (const stream of [false, true]) {
    recordedBodies.length = 0;
    const ask = {
      model: "rathinkrecorded",
      max_tokens: 8,
      thinking: { type: "enabled" as const, budget_tokens: 4 },
      cache_control: { type: "ephemeral" as const },
      system,
      tools: [tool],
      messages,
    };
    const answer = stream
      ? await anthropic.messages.stream(ask).finalMessage()
      : await anthropic.messages.create({ ...ask, stream: false });
    expect(answer.type).toBe("message");
    expect(recordedBodies).toHaveLength(1);
    expect(recordedBodies[0]).toMatchObject({ system, tools: [tool], messages, cache_control: { type: "ephemeral" } });
  }
});

test("an Anthropic client's adaptive thinking and its display 'omitted' reach an Anthropic provider", async () => {
  const sent = async (thinking: Anthropic.ThinkingConfigParam) => {
    recordedBodies.length = 0;
    const ask = { model: "rathinkrecorded", max_tokens: 8, messages: [{ role: "user" as const, content: "Hi" }] };
    await anthropic.messages.create({ ...ask, thinking });
    return recordedBodies[0]!.thinking;
  };
  // Before, "adaptive" was dropped (the provider's default, no thinking, instead), and so was the display.
  expect(await sent({ type: "adaptive" })).toEqual({ type: "adaptive" });
  expect(await sent({ type: "adaptive", display: "omitted" })).toEqual({ type: "adaptive", display: "omitted" });
  expect(await sent({ type: "enabled", budget_tokens: 4, display: "omitted" })).toEqual({
    type: "enabled",
    budget_tokens: 4,
    display: "omitted",
  });
  expect(await sent({ type: "enabled", budget_tokens: 4, display: "summarized" })).toEqual({
    type: "enabled",
    budget_tokens: 4,
    display: "summarized",
  });
});

test("an Anthropic provider's signed and redacted thinking reach the Anthropic client, which sends them back for the tool loop's next turn", async () => {
  const tools: Anthropic.Tool[] = [
    { name: "get_weather", input_schema: { type: "object", properties: { city: { type: "string" } } } },
  ];
  const ask: Anthropic.MessageParam[] = [{ role: "user", content: "Weather in Oslo?" }];
  const request = {
    model: "rasigned",
    max_tokens: 2048,
    thinking: { type: "enabled" as const, budget_tokens: 1024 },
    tools,
  };
  const thinking = "The user wants Oslo's weather; the tool has it.";
  // Before, the signature came empty and the redacted block not at all.
  const expected = [
    { type: "thinking", thinking, signature: SIGNATURE },
    { type: "redacted_thinking", data: REDACTED },
    { type: "tool_use", id: "toolu_01", name: "get_weather", input: { city: "Oslo" } },
  ];
  const whole = await anthropic.messages.create({ ...request, messages: ask });
  expect(whole.content as unknown[]).toEqual(expected);
  expect(whole.stop_reason).toBe("tool_use");
  const stream = anthropic.messages.stream({ ...request, messages: ask });
  const events: string[] = [];
  stream.on("streamEvent", (e) =>
    events.push(
      e.type === "content_block_start"
        ? `start:${e.content_block.type}`
        : e.type === "content_block_delta"
          ? e.delta.type
          : e.type,
    ),
  );
  const streamed = await stream.finalMessage();
  expect(streamed.content as unknown[]).toEqual(expected);
  expect(events.filter((e) => e !== "ping")).toEqual([
    "message_start",
    "start:thinking",
    "thinking_delta",
    "thinking_delta",
    "signature_delta",
    "content_block_stop",
    "start:redacted_thinking",
    "content_block_stop",
    "start:tool_use",
    "input_json_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
  ]);
  // The next turn sends them back, unchanged, before the tool's result.
  signedBodies.length = 0;
  const result: Anthropic.ToolResultBlockParam = { type: "tool_result", tool_use_id: "toolu_01", content: "12 C" };
  const next = [
    ...ask,
    { role: "assistant" as const, content: streamed.content },
    { role: "user" as const, content: [result] },
  ];
  await anthropic.messages.create({ ...request, messages: next });
  expect(signedBodies[0]!.messages).toEqual([
    { role: "user", content: [{ type: "text", text: "Weather in Oslo?" }] },
    { role: "assistant", content: expected },
    { role: "user", content: [result] },
  ]);
});

test("an Anthropic provider's refusal is stop_reason 'refusal' to the Anthropic client, whole and streamed", async () => {
  const ask = { model: "rarefusing", max_tokens: 64, messages: [{ role: "user" as const, content: "Hi" }] };
  // Before, "end_turn", as if the model had answered in full.
  const whole = await anthropic.messages.create(ask);
  expect(whole).toMatchObject({ stop_reason: "refusal", content: [{ type: "text", text: "I can't help" }] });
  expect((await anthropic.messages.stream(ask).finalMessage()).stop_reason).toBe("refusal");
});

test("the prompt tokens an Anthropic provider wrote to its cache count in the prompt, and an Anthropic client is told of them apart", async () => {
  const tools: Anthropic.Tool[] = [{ name: "get_weather", input_schema: { type: "object" } }];
  const ask = { model: "rasigned", max_tokens: 2048, tools, messages: [{ role: "user" as const, content: "Hi" }] };
  // Before, the 1,500 tokens written were in neither.
  const usage = { input_tokens: 40, cache_creation_input_tokens: 1500, cache_read_input_tokens: 0, output_tokens: 30 };
  expect((await anthropic.messages.create(ask)).usage).toMatchObject(usage);
  expect((await anthropic.messages.stream(ask).finalMessage()).usage).toMatchObject(usage);
  // Streamed, message_start passes the provider's own on (before, input_tokens 0 there).
  let start: Anthropic.Usage | undefined;
  // A copy: the stream updates its message (this object) with message_delta's usage.
  for await (const event of anthropic.messages.stream(ask))
    if (event.type === "message_start") start = { ...event.message.usage };
  const { output_tokens: _, ...prompt } = usage;
  expect(start).toMatchObject(prompt);
  const chat = await openai.chat.completions.create({
    model: "rasigned",
    max_tokens: 2048,
    messages: [{ role: "user", content: "Hi" }],
    tools: [{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } }],
  });
  expect(chat.usage).toMatchObject({ prompt_tokens: 1540, completion_tokens: 30 });
});

test("count_tokens for a model of an Anthropic provider is the provider's count; for an OpenAI-compatible one, a 400 saying why", async () => {
  const direct = new Anthropic({ baseURL: `http://127.0.0.1:${remotePort}`, apiKey: "unused", maxRetries: 0 });
  const tools: Anthropic.Tool[] = [
    { name: "get_weather", input_schema: { type: "object", properties: { city: { type: "string" } } } },
  ];
  const ask = { system: "Be brief.", messages: [{ role: "user" as const, content: "Weather in Oslo?" }], tools };
  const expected = await direct.messages.countTokens({ model: tiny, ...ask });
  expect(expected.input_tokens).toBeGreaterThan(10);
  // Before, a 400 for both: the model "has no weights to load or pull".
  expect(await anthropic.messages.countTokens({ model: "ra", ...ask })).toEqual(expected);
  const refused = await anthropic.messages.countTokens({ model: "ro", ...ask }).catch((e: unknown) => e);
  expect(refused).toBeInstanceOf(Anthropic.BadRequestError);
  expect((refused as InstanceType<typeof Anthropic.BadRequestError>).message).toMatch(
    /model 'ro' is served by a remote openai provider \(http:\S+\), whose API counts no tokens apart from a generation/,
  );
});

test("a JSON Schema's name and description reach an OpenAI-compatible provider, whose model reads them", async () => {
  const schema = { type: "object", properties: { n: { type: "integer" } }, required: ["n"] };
  const spec = { name: "count", description: "How many there are", schema, strict: true };
  recordedBodies.length = 0;
  await openai.chat.completions.create({
    model: "rrecorded",
    messages: [{ role: "user", content: "Hi" }],
    max_tokens: 12,
    response_format: { type: "json_schema", json_schema: spec },
  });
  // Before, the name was ours ("answer") and the description dropped.
  expect((recordedBodies[0]!.response_format as { json_schema: unknown }).json_schema).toEqual(spec);
  recordedBodies.length = 0;
  await openai.responses.create({
    model: "rrecorded",
    input: "Hi",
    max_output_tokens: 12,
    text: { format: { type: "json_schema", ...spec } },
  });
  expect((recordedBodies[0]!.response_format as { json_schema: unknown }).json_schema).toEqual(spec);
});

test("a function's strict (OpenAI: its arguments follow the schema exactly) reaches an OpenAI-compatible provider as set", async () => {
  const fn = { name: "count", parameters: { type: "object", properties: { n: { type: "integer" } }, required: ["n"] } };
  const sentTools = async (ask: () => Promise<unknown>) => {
    recordedBodies.length = 0;
    await ask();
    return (recordedBodies[0]!.tools as { function: Record<string, unknown> }[]).map((t) => t.function.strict);
  };
  const hi = [{ role: "user" as const, content: "Hi" }];
  // Before, it was dropped on the way.
  expect(
    await sentTools(() =>
      openai.chat.completions.create({
        model: "rrecorded",
        messages: hi,
        max_tokens: 2,
        tools: [
          { type: "function", function: { ...fn, strict: true } },
          { type: "function", function: { ...fn, name: "other" } },
        ],
      }),
    ),
  ).toEqual([true, undefined]);
  expect(
    await sentTools(() =>
      openai.responses.create({
        model: "rrecorded",
        input: "Hi",
        max_output_tokens: 2,
        tools: [{ type: "function", ...fn, strict: false }],
      }),
    ),
  ).toEqual([false]);
  // A local model's prompt is as it was: strict is the provider's.
  const prompt = async (strict?: boolean) =>
    (
      await post(`http://127.0.0.1:${remotePort}/apply-template`, {
        model: tiny,
        messages: hi,
        tools: [{ type: "function", function: { ...fn, strict } }],
      })
    ).json.prompt;
  expect(await prompt(true)).toBe(await prompt());
});

test("max_completion_tokens goes to an OpenAI-compatible provider under that name (OpenAI's reasoning models refuse max_tokens)", async () => {
  const ask = async (limit: Record<string, number>) => {
    recordedBodies.length = 0;
    const r = await openai.chat.completions.create({
      model: "rrecorded",
      messages: [{ role: "user", content: "Hi" }],
      temperature: 0,
      reasoning_effort: "none",
      ...limit,
    });
    const { max_tokens, max_completion_tokens } = recordedBodies[0]!;
    return { max_tokens, max_completion_tokens, tokens: r.usage!.completion_tokens };
  };
  // Before, it went as max_tokens, which OpenAI's reasoning models answer with a 400 the client never caused.
  expect(await ask({ max_completion_tokens: 3 })).toEqual({
    max_tokens: undefined,
    max_completion_tokens: 3,
    tokens: 3,
  });
  expect(await ask({ max_tokens: 3 })).toEqual({ max_tokens: 3, max_completion_tokens: undefined, tokens: 3 });
});

test("a message's name (OpenAI's participant name) reaches the template, and an OpenAI-compatible provider", async () => {
  const messages = [
    { role: "system", content: "Be brief", name: "rules" },
    { role: "user", content: "Hi", name: "ada" },
    { role: "assistant", content: "Hello", name: "bot" },
    { role: "user", content: "Bye" },
  ];
  // Before, a name was read nowhere: the template saw none, and a provider was sent none.
  const rendered = await post(`http://127.0.0.1:${remotePort}/apply-template`, { model: namer, messages });
  expect(rendered.json.prompt).toBe(
    "system(rules): Be brief\nuser(ada): Hi\nassistant(bot): Hello\nuser: Bye\nassistant:",
  );
  recordedBodies.length = 0;
  await post(`${proxy.url}/v1/chat/completions`, { model: "rrecorded", messages, max_tokens: 1 });
  expect((recordedBodies[0]!.messages as { name?: string }[]).map((m) => m.name)).toEqual([
    "rules",
    "ada",
    "bot",
    undefined,
  ]);
});

test("top_k off goes to an OpenAI-compatible provider as -1, which every remote takes (vLLM's older releases refuse 0)", async () => {
  const ask = async (topK: number) => {
    recordedBodies.length = 0;
    const r = await post(`${proxy.url}/v1/chat/completions`, {
      model: "rrecorded",
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 2,
      top_k: topK,
    });
    expect(r.status).toBe(200);
    return recordedBodies[0]!.top_k;
  };
  // 0 and -1 both mean off here; the remote was sent 0 for either.
  expect(await ask(0)).toBe(-1);
  expect(await ask(-1)).toBe(-1);
  expect(await ask(5)).toBe(5);
});

test("the repetition penalty's window (repetition_context_size, Ollama's repeat_last_n) reaches an OpenAI-compatible provider", async () => {
  const hi = [{ role: "user", content: "Tell me a story about a cat" }];
  const answer = async (url: string, model: string, extra: Record<string, unknown>) =>
    (await post(`${url}/v1/chat/completions`, { model, messages: hi, max_tokens: 16, temperature: 0, ...extra })).json
      .choices[0].message.content as string;
  const direct = (extra: Record<string, unknown>) => answer(`http://127.0.0.1:${remotePort}`, tiny, extra);
  const windowed = { repetition_penalty: 2, repetition_context_size: 1 };
  const expected = await direct(windowed);
  expect(expected).not.toBe(await direct({ repetition_penalty: 2 }));
  // Before, the window was dropped on the way: the remote penalized its default 20 tokens.
  expect(await answer(proxy.url, "ro", windowed)).toBe(expected);
  const ollama = new Ollama({ host: proxy.url });
  const viaOllama = (options: Record<string, number>) =>
    ollama.chat({ model: "ro", messages: hi, options: { num_predict: 16, temperature: 0, ...options } });
  expect((await viaOllama({ repeat_penalty: 2, repeat_last_n: 1 })).message.content).toBe(expected);
  // repeat_last_n 0 turns the penalty off, as for a local model.
  expect((await viaOllama({ repeat_penalty: 2, repeat_last_n: 0 })).message.content).toBe(await direct({}));
});

test("an assistant turn's reasoning reaches an OpenAI-compatible provider, whose template reads it back", async () => {
  const messages = [
    { role: "user", content: "What is two and two?" },
    { role: "assistant", content: "Four.", reasoning_content: "two and two make four, a small sum" },
    { role: "user", content: "And three?" },
  ];
  const ask = (url: string, model: string, sent = messages) =>
    post(`${url}/v1/chat/completions`, { model, messages: sent, max_tokens: 4, temperature: 0 });
  const direct = (await ask(`http://127.0.0.1:${remotePort}`, reasoned)).json;
  const unreasoned = messages.map(({ reasoning_content, ...m }) => m);
  expect(direct.usage.prompt_tokens).toBeGreaterThan(
    (await ask(`http://127.0.0.1:${remotePort}`, reasoned, unreasoned)).json.usage.prompt_tokens,
  );
  // Before, it was dropped on the way: the remote's prompt had no reasoning.
  const proxied = (await ask(proxy.url, "rreasoned")).json;
  expect([proxied.choices[0].message.content, proxied.usage.prompt_tokens]).toEqual([
    direct.choices[0].message.content,
    direct.usage.prompt_tokens,
  ]);
});

test("an answer's start (continue_final_message, an Anthropic client's prefill) is gone on by an OpenAI-compatible provider, not answered anew", async () => {
  const messages = [
    { role: "user", content: "Tell me a story" },
    { role: "assistant", content: "Once upon a time" },
  ];
  const ask = (url: string, model: string, extra: Record<string, unknown>) =>
    post(`${url}/v1/chat/completions`, { model, messages, max_tokens: 8, temperature: 0, ...extra });
  const continued = { continue_final_message: true, add_generation_prompt: false };
  const direct = (await ask(`http://127.0.0.1:${remotePort}`, tiny, continued)).json;
  const anew = (await ask(`http://127.0.0.1:${remotePort}`, tiny, {})).json;
  expect(direct.usage.prompt_tokens).toBeLessThan(anew.usage.prompt_tokens);
  // Before, the field was dropped on the way: the remote answered a new turn after the assistant's.
  const proxied = (await ask(proxy.url, "ro", continued)).json;
  expect([proxied.choices[0].message.content, proxied.usage.prompt_tokens]).toEqual([
    direct.choices[0].message.content,
    direct.usage.prompt_tokens,
  ]);
  const prefilled = await anthropic.messages.create({
    model: "ro",
    max_tokens: 8,
    ...({ temperature: 0 } as object),
    messages: messages as Anthropic.MessageParam[],
  });
  // Anthropic counts the prompt tokens the remote had cached apart.
  const promptTokens = prefilled.usage.input_tokens + (prefilled.usage.cache_read_input_tokens ?? 0);
  expect([prefilled.content[0], promptTokens]).toEqual([
    expect.objectContaining({ text: direct.choices[0].message.content }),
    direct.usage.prompt_tokens,
  ]);
});

describe("vLLM's extra parameters", () => {
  type Extra = Record<string, unknown>;
  /** The remote's end token (the tiny model's <|im_end|>), and the ids of a few texts. */
  const EOS = 2;
  let ids: Record<string, number>;
  beforeAll(async () => {
    const id = async (content: string) =>
      (await post(`http://127.0.0.1:${remotePort}/tokenize`, { model: tiny, content })).json.tokens[0] as number;
    ids = { a: await id("a"), b: await id("b"), start: await id("<|im_start|>") };
  });
  const bias = (id: number) => ({ logit_bias: { [id]: 100 } });

  /** A greedy answer on `path` as a client sees it: text, finish and stop reason, usage; streamed or whole. */
  async function answer(url: string, path: string, body: Extra, stream: boolean) {
    const r = await fetch(`${url}${path}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...body, stream, ...(stream && { stream_options: { include_usage: true } }) }),
    });
    expect(r.status).toBe(200);
    const chunks = stream
      ? (await r.text())
          .split("\n")
          .filter((line) => line.startsWith("data: {"))
          .map((line) => JSON.parse(line.slice(6)))
      : [await r.json()];
    let text = "";
    let finish: unknown;
    let stopReason: unknown;
    let usage: unknown;
    for (const chunk of chunks) {
      usage = chunk.usage ?? usage;
      const choice = chunk.choices?.[0];
      if (!choice) continue;
      text += choice.text ?? choice.delta?.content ?? choice.message?.content ?? "";
      finish = choice.finish_reason ?? finish;
      stopReason = choice.stop_reason ?? stopReason;
    }
    const u = usage as { prompt_tokens: number; completion_tokens: number };
    return { text, finish, stopReason, promptTokens: u.prompt_tokens, completionTokens: u.completion_tokens };
  }

  const endpoints = [
    { path: "/v1/chat/completions", prompt: { messages: [{ role: "user", content: "Hello there, how are you?" }] } },
    { path: "/v1/completions", prompt: { prompt: "Hello there, how are you?" } },
  ];
  // Each asks for something its `without` (the same request less the field) answers otherwise.
  const cases: [string, Extra, Extra][] = [
    ["min_tokens", { min_tokens: 5 }, {}],
    ["stop_token_ids", { stop_token_ids: [1, 0] }, {}],
    ["include_stop_str_in_output", { stop_token_ids: [0], include_stop_str_in_output: true }, { stop_token_ids: [0] }],
    ["include_stop_str_in_output (a stop string)", { stop: ["a"], include_stop_str_in_output: true }, { stop: ["a"] }],
    ["skip_special_tokens", { skip_special_tokens: false }, { skip_special_tokens: true }],
    ["allowed_token_ids", { allowed_token_ids: [1] }, {}],
    ["bad_words", { bad_words: ["a"] }, {}],
    ["truncate_prompt_tokens", { truncate_prompt_tokens: 3 }, {}],
    ["guided_choice", { guided_choice: ["alpha", "beta"] }, {}],
    ["guided_regex", { guided_regex: "(yes|no) [0-9]{2}" }, {}],
    ["guided_grammar", { guided_grammar: 'root ::= "hello " ("world" | "there") "!"' }, {}],
    ["structured_outputs", { structured_outputs: { regex: "[a-c]{4}" } }, {}],
  ];
  /** The ids the cases name (0: "a", 1: "b"), and a bias that shows the field's effect. */
  const withIds = (name: string, extra: Extra): Extra => {
    const real = (list: unknown) => (list as number[]).map((i) => (i === 0 ? ids.a : ids.b));
    const out = { ...extra };
    if (out.stop_token_ids) out.stop_token_ids = real(out.stop_token_ids);
    if (out.allowed_token_ids) out.allowed_token_ids = real(out.allowed_token_ids);
    const biased = name === "min_tokens" ? EOS : name === "skip_special_tokens" ? ids.start! : ids.a!;
    return { ...bias(biased), ...out };
  };

  test("reach an OpenAI-compatible provider as sent: the answer through the proxy is the remote's own, streamed and whole", async () => {
    for (const { path, prompt } of endpoints)
      for (const [name, extra, without] of cases) {
        const body = { max_tokens: 8, temperature: 0, ...prompt };
        for (const stream of [false, true]) {
          const direct = await answer(
            `http://127.0.0.1:${remotePort}`,
            path,
            { ...body, model: tiny, ...withIds(name, extra) },
            stream,
          );
          const other = await answer(
            `http://127.0.0.1:${remotePort}`,
            path,
            { ...body, model: tiny, ...withIds(name, without) },
            stream,
          );
          // The field changes the remote's answer...
          expect({ name, path, stream, same: Bun.deepEquals(direct, other) }).toEqual({
            name,
            path,
            stream,
            same: false,
          });
          // ...and reaches it through the proxy: before, a 400 said it could not be sent.
          const proxied = await answer(proxy.url, path, { ...body, model: "ro", ...withIds(name, extra) }, stream);
          expect({ name, path, stream, ...proxied }).toEqual({ name, path, stream, ...direct });
        }
      }
  });

  test("an Anthropic provider, whose API has none of them, refuses each with a 400 naming it", async () => {
    for (const [extra, param] of [
      [{ min_tokens: 2 }, "min_tokens"],
      [{ stop_token_ids: [2] }, "stop_token_ids"],
      [{ include_stop_str_in_output: true }, "include_stop_str_in_output"],
      [{ skip_special_tokens: false }, "skip_special_tokens"],
      [{ allowed_token_ids: [2] }, "allowed_token_ids"],
      [{ bad_words: ["no"] }, "bad_words"],
      [{ truncate_prompt_tokens: 3 }, "truncate_prompt_tokens"],
      [{ guided_choice: ["a", "b"] }, "guided_choice"],
      [{ structured_outputs: { regex: "a+" } }, "structured_outputs.regex"],
    ] as const) {
      const refused = await post(`${proxy.url}/v1/chat/completions`, {
        model: "ra",
        messages: [{ role: "user", content: "Hi" }],
        max_tokens: 6,
        ...extra,
      });
      expect(refused.status).toBe(400);
      expect(refused.json.error).toMatchObject({
        param,
        message: `'${param}' is not supported by model 'ra' (an Anthropic provider)`,
      });
    }
  });
});

describe("the command line", () => {
  test("mlx run and chat refuse a flag for a model loaded here (a KV cache, an adapter, drafting), which was ignored", async () => {
    const cli = cliRunner(home);
    const refusal = (flag: string) =>
      `error: --${flag} is for a model loaded here; 'rthink' is served by a remote provider (models.toml)\n`;
    expect(await cli(["run", "-m", "rthink", "--kv-bits", "8", "Hi"])).toMatchObject({
      code: 1,
      stdout: "",
      stderr: refusal("kv-bits"),
    });
    expect(await cli(["chat", "-m", "rthink", "--prompt-lookup"], "Hi\n")).toMatchObject({
      code: 1,
      stderr: refusal("prompt-lookup"),
    });
    // Nor is a remote model split across processes here: --hostfile was ignored too.
    expect(await cli(["run", "-m", "rthink", "--hostfile", "hosts.json", "--rank", "0", "Hi"])).toMatchObject({
      code: 1,
      stdout: "",
      stderr: refusal("hostfile"),
    });
  });
});

describe("structured output", () => {
  test("the schema is passed to an OpenAI-compatible remote, which enforces it", async () => {
    const r = await openai.chat.completions.create({
      model: "ro",
      max_tokens: 60,
      messages: [{ role: "user", content: "A forecast" }],
      response_format: { type: "json_schema", json_schema: { name: "f", schema: forecastSchema, strict: true } },
    });
    expect(validForecast(JSON.parse(r.choices[0]!.message.content!))).toBe(true);
  });

  test("a raw completion's schema is passed to the remote's /completions too, which enforces it", async () => {
    const r = await post(`${proxy.url}/v1/completions`, {
      model: "ro",
      prompt: "A forecast:",
      max_tokens: 60,
      response_format: { type: "json_schema", json_schema: { name: "f", schema: forecastSchema, strict: true } },
    });
    expect(r.status).toBe(200);
    expect(validForecast(JSON.parse(r.json.choices[0].text))).toBe(true);
  });

  test("a tuple (prefixItems, items: false) is checked by its own draft: a valid answer passes", async () => {
    // Under draft-07 `items: false` refuses every item, and prefixItems means nothing.
    const schema = {
      type: "object",
      properties: {
        // Bounded: a random-weight model's unbounded integer can run its digits past max_tokens.
        pair: {
          type: "array",
          prefixItems: [{ type: "integer", minimum: 0, maximum: 99 }, { type: "boolean" }],
          items: false,
        },
      },
      required: ["pair"],
    };
    const r = await post(`${proxy.url}/v1/chat/completions`, {
      model: "ro",
      max_tokens: 40,
      messages: [{ role: "user", content: "A pair" }],
      response_format: { type: "json_schema", json_schema: { name: "p", schema } },
    });
    expect(r.status).toBe(200);
    const { pair } = JSON.parse(r.json.choices[0].message.content);
    expect([typeof pair[0], typeof pair[1], pair.length]).toEqual(["number", "boolean", 2]);
  });

  test("a provider that ignores tool_choice 'required' (mlx_lm.server) is asked once more, then it is a 502 saying so, not text", async () => {
    const error = await openai.chat.completions
      .create({
        model: "notools",
        messages: [{ role: "user", content: "Weather in Paris?" }],
        tools: [{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } }],
        tool_choice: "required",
      })
      .catch((e) => e);
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect(error.status).toBe(502);
    expect(error.message).toContain("answered without the tool call tool_choice requires, twice: it answered text");
    expect(ignoresToolsHits).toBe(2);
    // Under "auto" its text is an answer.
    const answer = await openai.chat.completions.create({
      model: "notools",
      messages: [{ role: "user", content: "Weather in Paris?" }],
      tools: [{ type: "function", function: { name: "get_weather", parameters: { type: "object" } } }],
    });
    expect(answer.choices[0]!.message.content).toBe("Bienvenue");
  });

  test("an answer off the schema is retried once, then a 502 names where it failed", async () => {
    offSchemaHits = 0;
    const schema = { type: "object", properties: { age: { type: "integer" } }, required: ["age"] };
    const r = await post(`${proxy.url}/v1/chat/completions`, {
      model: "offschema",
      messages: [{ role: "user", content: "How old?" }],
      response_format: { type: "json_schema", json_schema: { name: "a", schema } },
    });
    expect(r.status).toBe(502);
    expect(r.json.error.message).toContain(
      "does not match response_format.json_schema.schema, twice: /age must be integer",
    );
    expect(r.json.error.message).toContain("#/properties/age/type");
    expect(offSchemaHits).toBe(2);
    // An Anthropic provider takes the schema in its system prompt; random weights do not follow it.
    const anthropicFormat = await post(`${proxy.url}/api/chat`, {
      model: "ra",
      messages: [{ role: "user", content: "How old?" }],
      format: schema,
      stream: false,
      options: { num_predict: 8 },
    });
    expect(anthropicFormat.status).toBe(502);
    expect(anthropicFormat.json.error).toMatch(/does not match format, twice: (the answer is not JSON|\/)/);
  });
});

describe("answer validators", () => {
  test("kept for the latest schemas only: a schema of its own per request does not grow the server's memory", () => {
    const schemaNumbered = (i: number) => ({ type: "object", properties: { [`field${i}`]: { type: "integer" } } });
    for (let i = 0; i < MAX_ANSWER_VALIDATORS + 20; i++) answerValidator({ schema: schemaNumbered(i) });
    expect(answerValidatorCount()).toBe(MAX_ANSWER_VALIDATORS);
    // One let go is compiled again when asked, and checks as before.
    expect(answerValidator({ schema: schemaNumbered(0) })('{"field0": "x"}')).toContain("/field0 must be integer");
    expect(answerValidatorCount()).toBe(MAX_ANSWER_VALIDATORS);
  });
});

describe("failures", () => {
  test("a 429 with Retry-After is retried after the wait it asks for", async () => {
    limitedHits = [];
    const r = await openai.chat.completions.create({
      model: "limited",
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 4,
    });
    expect(r.choices[0]!.message.content!.length).toBeGreaterThan(0);
    expect(limitedHits.length).toBe(2);
    expect(limitedHits[1]! - limitedHits[0]!).toBeGreaterThanOrEqual(950);
    const m = await metrics();
    expect(metric(m, "mlx_provider_retries_total", `provider="[^"]+",model="limited",reason="429"`)).toBe(1);
    expect(metric(m, "mlx_provider_requests_total", `provider="[^"]+",model="limited",outcome="ok"`)).toBe(1);
  });

  test("an Anthropic provider's overloaded_error, mid-stream or as its 529, keeps its type (clients retry on it)", async () => {
    const messages = [{ role: "user" as const, content: "Hi" }];
    const failure = (p: Promise<unknown>) =>
      p.then(
        () => undefined,
        (error: unknown) => error as any,
      );
    // Mid-stream, to an Anthropic client streaming: the error event with the provider's type.
    const streamed = await failure(
      (async () => {
        const stream = await anthropic.messages.create({ model: "overloaded", max_tokens: 8, messages, stream: true });
        for await (const _ of stream);
      })(),
    );
    expect(streamed).toBeInstanceOf(Anthropic.APIError);
    expect(streamed.error.error.type).toBe("overloaded_error");
    // Read whole, the same as a status of Anthropic's own.
    const whole = await failure(anthropic.messages.create({ model: "overloaded", max_tokens: 8, messages }));
    expect([whole.status, whole.error.error.type]).toEqual([529, "overloaded_error"]);
    // Before any text, its 529: the same.
    const refused = await failure(anthropic.messages.create({ model: "overloaded529", max_tokens: 8, messages }));
    expect([refused.status, refused.error.error.type]).toEqual([529, "overloaded_error"]);
    // To an OpenAI client streaming: a server error it can tell by its code.
    const openaiStreamed = await failure(
      (async () => {
        const stream = await openai.chat.completions.create({
          model: "overloaded",
          max_tokens: 8,
          messages,
          stream: true,
        });
        for await (const _ of stream);
      })(),
    );
    expect(openaiStreamed).toBeInstanceOf(OpenAI.APIError);
    expect([openaiStreamed.error.type, openaiStreamed.code]).toEqual(["server_error", "provider_overloaded"]);
  });

  test("the pool: one connection in use, one request queued, the next refused; connections are kept alive", async () => {
    gate = Promise.withResolvers<void>();
    gatedPorts.length = 0;
    const ask = () =>
      post(`${proxy.url}/v1/chat/completions`, { model: "gated", messages: [{ role: "user", content: "Hi" }] });
    const queueWaited = async () => Number(/^mlx_queue_wait_seconds_sum (\S+)$/m.exec(await metrics())?.[1] ?? 0);
    const waitedBefore = await queueWaited();
    const first = ask();
    const second = ask();
    await eventually(async () => /mlx_provider_queue_waiting\{[^}]+\} 1$/m.test(await metrics()));
    const m = await metrics();
    expect(m).toMatch(/^mlx_provider_connections_in_use\{provider="[^"]+"\} 1$/m);
    const refused = await ask();
    expect(refused.status).toBe(429);
    expect(refused.json.error.message).toContain("all 1 connections are busy and 1 requests already wait");
    expect(refused.headers.get("retry-after")).toBe("1");
    await Bun.sleep(200); // the second request waits in the queue meanwhile
    gate.resolve();
    for (const r of await Promise.all([first, second])) {
      expect(r.status).toBe(200);
      expect(r.json.choices[0].message.content).toBe("done");
    }
    // The second request went out over the connection the first one had used.
    expect(gatedPorts.length).toBe(2);
    expect(gatedPorts[1]).toBe(gatedPorts[0]!);
    // Its wait for that connection is its queue wait (a remote request's was always 0).
    expect((await queueWaited()) - waitedBefore).toBeGreaterThan(0.15);
  });

  test("a client gone before the provider's first event is counted as cancelled, and its request ends", async () => {
    gate = Promise.withResolvers<void>();
    gatedPorts.length = 0;
    const client = new AbortController();
    const asked = fetch(`${proxy.url}/v1/chat/completions`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ model: "gated", messages: [{ role: "user", content: "Hi" }] }),
      signal: client.signal,
    }).catch((e) => e);
    await eventually(async () => gatedPorts.length === 1);
    client.abort();
    expect(await asked).toBeInstanceOf(Error);
    // helpers[2] is the gated server: its connection is given back.
    const gatedProvider = `provider="http://127.0.0.1:${helpers[2]!.port}/v1"`;
    await eventually(async () => metric(await metrics(), "mlx_provider_connections_in_use", gatedProvider) === 0);
    const m = await metrics();
    expect(metric(m, "mlx_provider_requests_total", `provider="[^"]+",model="gated",outcome="cancelled"`)).toBe(1);
    expect(metric(m, "mlx_provider_requests_total", `provider="[^"]+",model="gated",outcome="error"`)).toBeNaN();
    gate.resolve();
  });

  test("a provider silent past its read timeout is a 504", async () => {
    const r = await post(`${proxy.url}/api/chat`, {
      model: "silent",
      messages: [{ role: "user", content: "Hi" }],
      stream: false,
    });
    expect(r.status).toBe(504);
    expect(r.json.error).toContain("sent nothing for 0.3 s");
  });

  test("a provider's keep-alive comments (mlx_lm.server's while it prefills a long prompt) are not silence", async () => {
    const answer = await openai.chat.completions.create({
      model: "keptalive",
      messages: [{ role: "user", content: "Hi" }],
    });
    expect(answer.choices[0]!.message.content).toBe("Hi");
  });

  test("a request the provider refuses is a 400 in the client's shape, naming the problem, not a 502", async () => {
    // The remote's own model has a context of 1024 tokens: more is its 400.
    const error = await anthropic.messages
      .create({ model: "ro", max_tokens: 5000, messages: [{ role: "user", content: "Hi" }] })
      .catch((e) => e);
    expect(error).toBeInstanceOf(Anthropic.BadRequestError);
    expect(error.status).toBe(400);
    expect(error.error.error.type).toBe("invalid_request_error");
    expect(error.message).toContain("answered 400");
    expect(error.message).toContain("max_tokens is 5000");
    // The parameter the provider named is passed on.
    const refused = await openai.chat.completions
      .create({
        model: "ro",
        max_tokens: 4,
        logit_bias: { "99999999": 5 },
        messages: [{ role: "user", content: "Hi" }],
      })
      .catch((e) => e);
    expect(refused).toBeInstanceOf(OpenAI.BadRequestError);
    expect(refused.param).toBe("logit_bias");
    expect(refused.message).toContain("outside the vocabulary");
    expect(
      metric(await metrics(), "mlx_provider_requests_total", `provider="[^"]+",model="ro",outcome="rejected"`),
    ).toBe(2);
  });

  test("a provider still rate-limiting after the retries is a 429 with its Retry-After, not a 502", async () => {
    busyHits = 0;
    const started = performance.now();
    const r = await post(`${proxy.url}/v1/chat/completions`, {
      model: "busy",
      messages: [{ role: "user", content: "Hi" }],
    });
    // Its wait (60 s) is past retry_max: not waited for, and passed on.
    expect(performance.now() - started).toBeLessThan(5_000);
    expect(busyHits).toBe(1);
    expect(r.status).toBe(429);
    expect(r.headers.get("retry-after")).toBe("60");
    expect(r.json.error.type).toBe("rate_limit_error");
    expect(r.json.error.message).toContain("answered 429: rate limit reached");
    const a = await post(`${proxy.url}/v1/messages`, {
      model: "busy",
      max_tokens: 4,
      messages: [{ role: "user", content: "Hi" }],
    });
    expect(a.status).toBe(429);
    expect(a.json.error.type).toBe("rate_limit_error");
  });

  test("a provider that answers one JSON body, not a stream, is a 502 saying so, not asked again", async () => {
    wholeHits = 0;
    const r = await post(`${proxy.url}/v1/chat/completions`, {
      model: "whole",
      max_tokens: 4,
      messages: [{ role: "user", content: "Hi" }],
    });
    expect(r.status).toBe(502);
    expect(r.json.error.message).toContain(
      'answered one JSON body, not a stream of events: it must support "stream": true',
    );
    expect(wholeHits).toBe(1);
  });

  test("an unreachable provider opens its circuit, which says so, then half-opens after its cool-down", async () => {
    const ask = () =>
      post(`${proxy.url}/v1/messages`, { model: "down", max_tokens: 4, messages: [{ role: "user", content: "Hi" }] });
    for (let i = 0; i < 2; i++) {
      const r = await ask();
      expect(r.status).toBe(502);
      expect(r.json.type).toBe("error");
      expect(r.json.error.message).toContain("cannot be reached");
    }
    const open = await ask();
    expect(open.status).toBe(503);
    expect(open.json.error.message).toContain("circuit is open after 2 consecutive failures");
    expect(open.headers.get("retry-after")).toBe("1");
    const down = `provider="http://127.0.0.1:${unreachable}/v1"`;
    expect(metric(await metrics(), "mlx_provider_circuit_state", `${down},state="open"`)).toBe(1);
    await Bun.sleep(1100);
    // Half-open: one request may try (and fails again, reopening it).
    expect((await ask()).status).toBe(502);
    expect((await ask()).status).toBe(503);
  });

  test("a request whose own retries open the circuit reports why they failed, not the circuit", async () => {
    const ask = () =>
      post(`${proxy.url}/v1/chat/completions`, { model: "downretried", messages: [{ role: "user", content: "Hi" }] });
    // Its first two tries (of three) fail, which opens the circuit (circuit_failures = 2).
    const first = await ask();
    expect(first.status).toBe(502);
    expect(first.json.error.message).toContain("cannot be reached: connection refused");
    const next = await ask();
    expect(next.status).toBe(503);
    expect(next.json.error.message).toContain("circuit is open after 2 consecutive failures");
  });

  test("an api_key_env that is not set is named with the models.toml line of its entry", async () => {
    const file = join(home, "models.toml");
    const line = readFileSync(file, "utf8").split("\n").indexOf("[models.keyless]") + 1;
    const r = await post(`${proxy.url}/v1/chat/completions`, {
      model: "keyless",
      messages: [{ role: "user", content: "Hi" }],
    });
    expect(r.status).toBe(502);
    expect(r.json.error.message).toBe(
      `model 'keyless' (${file}:${line}): api_key_env names the environment variable MLX_TEST_KEY_NEVER_SET, which is not set`,
    );
    // Set, but to nothing (KEY= in a shell): said as it is, not "not set" beside an `export` that shows it.
    process.env.MLX_TEST_KEY_NEVER_SET = "";
    try {
      const empty = await post(`${proxy.url}/v1/chat/completions`, {
        model: "keyless",
        messages: [{ role: "user", content: "Hi" }],
      });
      expect(empty.json.error.message).toEndWith("MLX_TEST_KEY_NEVER_SET, which is empty");
    } finally {
      delete process.env.MLX_TEST_KEY_NEVER_SET;
    }
  });

  test("a provider's redirect is not followed (the key would go along to another host), and says where it points", async () => {
    const r = await post(`${proxy.url}/v1/messages`, {
      model: "moved",
      max_tokens: 4,
      messages: [{ role: "user", content: "Hi" }],
    });
    expect(r.status).toBe(502);
    expect(r.json.error.message).toContain(
      `answered 307: a redirect to http://localhost:${remotePort}/v1/messages, which is not followed`,
    );
    expect(r.json.error.message).not.toContain("s3cret");
  });

  test("the remote killed mid-stream: the client gets a clean error, and the pool recovers once it is back", async () => {
    const stream = await openai.chat.completions.create({
      model: "rslow",
      messages: [{ role: "user", content: "Tell me a long story about a river." }],
      max_tokens: 400,
      temperature: 0,
      stream: true,
    });
    let text = "";
    const error = await (async () => {
      try {
        for await (const chunk of stream) {
          text += chunk.choices[0]?.delta.content ?? "";
          if (text.length > 0 && remote && !remote.killed) remote.kill("SIGKILL");
        }
      } catch (e) {
        return e;
      }
    })();
    expect(text.length).toBeGreaterThan(0);
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect((error as Error).message).toMatch(/provider http:\/\/127\.0\.0\.1:\d+\/v1/);
    // In our words, not Bun's advice for debugging its fetch ("pass `verbose: true` ...").
    expect((error as Error).message).toContain("the connection was closed by the server");
    await eventually(
      async () => metric(await metrics(), "mlx_provider_connections_in_use", `provider="[^"]+/v1"`) === 0,
    );
    // While it is down: a 502 at once (not a hang).
    const down = await post(`${proxy.url}/v1/chat/completions`, {
      model: "ro",
      messages: [{ role: "user", content: "Hi" }],
    });
    expect(down.status).toBe(502);
    await startRemote();
    const again = await openai.chat.completions.create({
      model: "ro",
      messages: [{ role: "user", content: "Hi" }],
      max_tokens: 4,
    });
    expect(again.choices[0]!.message.content!.length).toBeGreaterThan(0);
  }, 120_000);
});

test("a streamed Responses answer whose provider dies ends with error, then response.failed", async () => {
  // Read raw: the SDK stops at the error event, and what follows it is the point.
  const raw = await fetch(`${proxy.url}/v1/responses`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model: "rslow", input: "Tell me a long story.", max_output_tokens: 400, stream: true }),
  });
  const reader = raw.body!.getReader();
  let text = "";
  for (let killed = false; ; ) {
    const { value, done } = await reader.read();
    if (done) break;
    text += new TextDecoder().decode(value);
    if (!killed && text.includes("response.output_text.delta")) {
      killed = true;
      remote!.kill("SIGKILL");
    }
  }
  await startRemote();
  // Clients wait for one of response.completed, .incomplete or .failed.
  const names = [...text.matchAll(/^event: (\S+)$/gm)].map((m) => m[1]);
  expect(names).toContain("response.output_text.delta");
  expect(names.slice(-2)).toEqual(["error", "response.failed"]);
  const last = JSON.parse(text.trim().split("\n").at(-1)!.slice("data: ".length));
  expect(last.response.status).toBe("failed");
  expect(last.response.error.message).toContain("the connection was closed by the server");
  // It holds the answer written before the failure, cut there.
  const deltas = [...text.matchAll(/^data: (.*"response\.output_text\.delta".*)$/gm)].map(
    (m) => JSON.parse(m[1]!).delta,
  );
  expect(last.response.output).toEqual([
    expect.objectContaining({
      type: "message",
      status: "incomplete",
      content: [expect.objectContaining({ text: deltas.join("") })],
    }),
  ]);
}, 120_000);

test("base_url's user:password and query reach the provider, and are masked wherever the URL is shown", async () => {
  // The query must stay a query: the API path goes before it, not into it.
  const r = await openai.chat.completions.create({
    model: "secretive",
    messages: [{ role: "user", content: "Hi" }],
    max_tokens: 4,
  });
  expect(r.choices[0]!.message.content!.length).toBeGreaterThan(0);
  const refused = await openai.chat.completions
    .create({ model: "secretive", max_tokens: 5000, messages: [{ role: "user", content: "Hi" }] })
    .catch((e) => e);
  expect(refused).toBeInstanceOf(OpenAI.BadRequestError);
  expect(refused.message).toContain(`provider http://***@127.0.0.1:${remotePort}/v1?tenant=*** answered 400`);
  const cli = await cliRunner(home)(["run", "-m", "secretive", "--max-tokens", "5000", "Hi"]);
  expect(cli.stderr).toContain("answered 400");
  const shown = [refused.message, await metrics(), await (await fetch(`${proxy.url}/api/tags`)).text(), cli.stderr];
  for (const text of shown) expect(text).not.toContain("s3cret");
  expect(shown[1]).toContain(`provider="http://***@127.0.0.1:${remotePort}/v1?tenant=***"`);
  // Another account on that URL shows alike, masked: its series are told apart, not listed twice
  // (a scrape with two samples of one series is refused whole by Prometheus).
  await openai.chat.completions.create({
    model: "secretive2",
    messages: [{ role: "user", content: "Hi" }],
    max_tokens: 4,
  });
  const samples = (await metrics()).split("\n").filter((line) => line.startsWith("mlx_provider_"));
  const series = samples.map((line) => line.slice(0, line.lastIndexOf(" ")));
  expect(series.filter((name, i) => series.indexOf(name) !== i)).toEqual([]);
  expect(samples).toContain(
    `mlx_provider_connections_max{provider="http://***@127.0.0.1:${remotePort}/v1?tenant=*** (2)"} 8`,
  );
}, 60_000);

test("an answer the command line reads to its end counts as the provider's success for its circuit", async () => {
  const ask = async (alias: string) => {
    const pieces = streamRemoteCompletion(remoteModel(alias)!, {
      prompt: { kind: "chat", messages: [{ role: "user", content: "Hi" }] },
      sampling: {},
      maxTokens: 3,
    });
    for (let next = await pieces.next(); !next.done; next = await pieces.next());
  };
  // The remote's 500s count against the circuit (2 consecutive failures open it); a success between them resets the count.
  expect(await ask("clibroken").catch((e) => e.message)).toContain("answered 500");
  await ask("cligood");
  expect(await ask("clibroken").catch((e) => e.message)).toContain("answered 500");
  await ask("cligood");
});

test("a web page a provider's base_url answers with is told by its text on one line, not its first line of markup", async () => {
  const pieces = streamRemoteCompletion(remoteModel("webpage")!, {
    prompt: { kind: "chat", messages: [{ role: "user", content: "Hi" }] },
    sampling: {},
    maxTokens: 3,
  });
  const message = await pieces.next().then(
    () => "answered",
    (error: Error) => error.message,
  );
  expect(message).toMatch(/answered 404: 404 Not Found 404 Not Found nginx\/1\.24\.0$/);
  const cli = await cliRunner(home)(["run", "-m", "webpage", "Hi"]);
  expect(cli.code).toBe(1);
  expect(cli.stderr).toEndWith("answered 404: 404 Not Found 404 Not Found nginx/1.24.0\n");
});

test("/metrics counts per provider and model", async () => {
  const m = await metrics();
  expect(metric(m, "mlx_provider_requests_total", `provider="[^"]+/v1",model="ro",outcome="ok"`)).toBeGreaterThan(0);
  expect(m).toMatch(/^mlx_provider_time_to_first_byte_seconds_count\{provider="[^"]+",model="ra"\} \d+$/m);
  expect(m).toMatch(/^mlx_provider_request_duration_seconds_bucket\{provider="[^"]+",model="ro",le="\+Inf"\} \d+$/m);
  expect(m).toMatch(/^mlx_provider_connections_max\{provider="[^"]+\/v1"\} 8$/m);
  expect(m).toMatch(/^mlx_provider_queue_waiting\{provider="[^"]+"\} 0$/m);
});

test("mlx run, chat and bench take a remote alias", async () => {
  const run = cliRunner(home);
  const answer = await run(["run", "-m", "ro", "--max-tokens", "5", "--json", "Hi"]);
  expect(answer.stderr).toBe("");
  expect(answer.code).toBe(0);
  const result = JSON.parse(answer.stdout);
  expect(result.text.length).toBeGreaterThan(0);
  expect(result.stats.generated_tokens).toBe(5);
  const chat = await run(["chat", "-m", "ro", "--max-tokens", "4", "--stats"], "Hi\nAnd then?\n/show\n");
  expect(chat.code).toBe(0);
  expect(chat.stdout.trim().split("\n").length).toBe(2);
  expect(chat.stderr).toContain("(remote, openai provider at http://127.0.0.1:");
  // The second turn sent the whole conversation: more prompt tokens than the first.
  const prompts = [...chat.stderr.matchAll(/prompt (\d+) new \+ (\d+) cached/g)].map(
    (m) => Number(m[1]) + Number(m[2]),
  );
  expect(prompts.length).toBe(2);
  expect(prompts[1]!).toBeGreaterThan(prompts[0]!);
  const bench = await run(["bench", "-m", "ro", "-p", "32", "-g", "8", "-d", "64", "-n", "1", "--json"]);
  expect(bench.code).toBe(0);
  const [row] = JSON.parse(bench.stdout).models;
  expect(row.format).toBe("remote");
  expect(row.prompt_tokens).toBeGreaterThan(16);
  // --depth: the generation test's prompt is prose of about that many tokens, as the provider counted.
  expect(row.depth).toBeGreaterThan(32);
}, 60_000);

test("mlx chat with a remote model, stopped mid-answer, shows the tokens and time it measured: no usage came", async () => {
  const proc = Bun.spawn([process.execPath, mainScript, "chat", "-m", "rslow", "--max-tokens", "2000", "--stats"], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" },
  });
  proc.stdin.write("Tell me a long story about the sea.\n");
  proc.stdin.flush();
  // Stopped once a good part of the answer has come (Ctrl-C from the terminal is SIGINT for a piped chat).
  const reader = proc.stdout.getReader();
  let answered = "";
  while (answered.length < 100) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`the chat ended before it was stopped: ${answered}`);
    answered += new TextDecoder().decode(value);
  }
  proc.kill("SIGINT");
  proc.stdin.end();
  reader.releaseLock();
  const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
  expect(code).toBe(0);
  expect(stderr).toContain("(stopped)");
  const stats = /([\d.]+) tokens\/s · first token ([\d.]+) s .* context (\d+)/.exec(stderr);
  // It said "0.0 tokens/s ... context 0", as if nothing had been generated.
  expect(Number(stats?.[1])).toBeGreaterThan(0);
  expect(Number(stats?.[2])).toBeGreaterThan(0);
  expect(Number(stats?.[3])).toBeGreaterThan(0);
}, 60_000);

test("a remote stream its client leaves counts the tokens it streamed in /metrics, as a local one does", async () => {
  const series = async (name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(await metrics())?.[1] ?? 0);
  const generated = () => series("mlx_generation_tokens_total");
  const firstToken = async () => [
    await series("mlx_time_to_first_token_seconds_count"),
    await series("mlx_time_to_first_token_seconds_sum"),
  ];
  const before = await generated();
  const [countBefore, sumBefore] = await firstToken();
  const stop = new AbortController();
  const stream = await openai.chat.completions.create(
    { model: "rslow", messages: [{ role: "user", content: "Tell me a long story." }], max_tokens: 1000, stream: true },
    { signal: stop.signal },
  );
  let chunks = 0;
  await (async () => {
    for await (const chunk of stream) if (chunk.choices[0]?.delta.content && ++chunks === 20) stop.abort();
  })().catch(() => {});
  // Nothing was counted: the usage that would have said never came. (Counted once the proxy has let its remote go:
  // on a loaded machine that took over 5 s once.)
  await eventually(async () => (await generated()) - before >= 20, 30_000);
  // Its time to first token is the one it had (a 0 would pull the histogram down).
  const [count, sum] = await firstToken();
  expect(count).toBe(countBefore! + 1);
  expect(sum! - sumBefore!).toBeGreaterThan(0);
}, 60_000);

test("the dashboard counts a remote stream's tokens as they come (its events carry no token ids)", async () => {
  const generatedBefore = proxy.state.inflight.generatedTokens;
  const stop = new AbortController();
  const stream = await openai.chat.completions.create(
    { model: "rslow", messages: [{ role: "user", content: "Tell me a long story." }], max_tokens: 1000, stream: true },
    { signal: stop.signal },
  );
  let chunks = 0;
  for await (const chunk of stream) if (chunk.choices[0]?.delta.content && ++chunks === 10) break;
  const [flight] = proxy.state.inflight.list.filter((f) => f.model === "rslow");
  expect(flight!.tokens).toBeGreaterThanOrEqual(10);
  expect(proxy.state.inflight.generatedTokens - generatedBefore).toBeGreaterThanOrEqual(10);
  stop.abort();
  await eventually(() => proxy.state.inflight.list.length === 0);
}, 60_000);

test("a provider that sends no usage: the server's usage counts the pieces it streamed, not 0 tokens", async () => {
  const r = await openai.chat.completions.create({ model: "offschema", messages: [{ role: "user", content: "Hi" }] });
  expect(r.choices[0]!.message.content).toBe('{"age": "old"}');
  // One piece of text, and a finish without usage.
  expect(r.usage!.completion_tokens).toBe(1);
});

test("mlx run with a provider that sends no usage counts the pieces it streamed, not 0 tokens", async () => {
  const answer = await cliRunner(home)(["run", "-m", "offschema", "--json", "Hi"]);
  expect(answer.code).toBe(0);
  // One piece of text, and a finish without usage.
  expect(JSON.parse(answer.stdout).stats.generated_tokens).toBe(1);
});

const hasPromtool = Bun.spawnSync(["which", "promtool"]).exitCode === 0;
test.skipIf(!hasPromtool)("promtool accepts /metrics with the providers' series", async () => {
  const check = Bun.spawnSync(["promtool", "check", "metrics"], { stdin: new Blob([await metrics()]), stderr: "pipe" });
  expect(check.stderr.toString()).toBe("");
  expect(check.exitCode).toBe(0);
});

test("/v1/models lists the remote aliases; /api/tags too, as Ollama lists its cloud models", async () => {
  const ids = (await openai.models.list()).data.map((m) => m.id);
  expect(ids).toEqual(expect.arrayContaining(["ro", "ra", "rslow"]));
  const { models } = await new Ollama({ host: proxy.url }).list();
  const ro = models.find((m) => m.name === "ro") as (typeof models)[number] & Record<string, unknown>;
  expect(ro).toMatchObject({
    model: "ro",
    size: 0,
    remote_model: tiny,
    remote_host: `http://127.0.0.1:${remotePort}/v1`,
  });
  expect(Number.isNaN(new Date(ro.modified_at).getTime())).toBe(false);
  expect(models.map((m) => m.name)).toEqual(expect.arrayContaining(["ra", "rslow"]));
});

test("/api/show describes a remote alias, as Ollama shows a cloud model, rather than refusing a model /api/tags lists", async () => {
  // Ollama clients (Copilot, Open WebUI) ask /api/show of every model /api/tags lists, for its capabilities.
  const ollama = new Ollama({ host: proxy.url });
  for (const name of ["ro", "ro:latest"]) {
    const shown = (await ollama.show({ model: name })) as Awaited<ReturnType<Ollama["show"]>> & Record<string, unknown>;
    expect(shown).toMatchObject({
      remote_model: tiny,
      remote_host: `http://127.0.0.1:${remotePort}/v1`,
      capabilities: ["completion", "tools"],
      model_info: {},
    });
    expect(shown.details.format).toBe("");
  }
});

test("mlx show describes a remote alias from models.toml, its URL's secrets masked, rather than refusing a model run takes", async () => {
  const cli = cliRunner(home);
  const shown = await cli(["show", "secretive", "--json"]);
  expect([shown.code, shown.stderr]).toEqual([0, ""]);
  expect(JSON.parse(shown.stdout)).toEqual({
    name: "secretive",
    provider: "openai",
    base_url: `http://***@127.0.0.1:${remotePort}/v1?tenant=***`,
    model: tiny,
    api_key_env: null,
    max_tokens: 4096,
    defined_at: expect.stringMatching(/models\.toml:\d+$/),
  });
  const table = await cli(["show", "moved"]);
  expect(table.code).toBe(0);
  expect(table.stdout).toContain("api key env  MLX_TEST_MOVED_KEY\n");
  expect(table.stdout).not.toContain("s3cret");
});

describe("models.toml", () => {
  /** loadAliases' error for a user models.toml holding `entry` as model 'x'. */
  function aliasError(entry: string): string {
    const dir = mkdtempSync(join(tmpdir(), "mlx-providers-toml-"));
    writeFileSync(join(dir, "models.toml"), `[models.x]\n${entry}\n`);
    process.env.MLX_HOME = dir;
    try {
      loadAliases();
      return "no error";
    } catch (error) {
      return (error as Error).message;
    } finally {
      process.env.MLX_HOME = home;
    }
  }

  test("a remote entry with a mistake is refused with the file, the alias and the problem", () => {
    expect(aliasError('provider = "cohere"\nmodel = "m"')).toContain(
      `model 'x': provider must be "openai" or "anthropic"`,
    );
    expect(aliasError('provider = "openai"')).toContain(
      `model 'x': a remote model needs model = "<the provider's model name>"`,
    );
    expect(aliasError('provider = "openai"\nmodel = "m"\nbase_url = "ftp://h"')).toContain(
      "base_url must be an http(s) URL",
    );
    expect(aliasError('provider = "openai"\nmodel = "m"\nmax_connections = 0')).toContain(
      "max_connections must be at least 1",
    );
    expect(aliasError('provider = "openai"\nmodel = "m"\nread_timeout = -1')).toContain(
      "read_timeout must be a number of seconds >= 0",
    );
    expect(aliasError('provider = "openai"\nmodel = "m"\nsource = "x"')).toContain(
      "unknown key 'source' for a remote model",
    );
    expect(aliasError('provider = "anthropic"\nmodel = "m"\nconnect_timeout = 2.5')).toBe("no error");
  });

  test("a timeout of 0, which would fail every request at once, is refused", () => {
    for (const key of ["connect_timeout", "read_timeout"])
      expect(aliasError(`provider = "openai"\nmodel = "m"\n${key} = 0`)).toContain(
        `model 'x': ${key} must be more than 0 seconds`,
      );
  });

  test("a duration past a timer's limit, which would fire at once (every request timed out), is refused", () => {
    for (const key of ["connect_timeout", "read_timeout", "retry_base", "retry_max", "circuit_cooldown"])
      expect(aliasError(`provider = "openai"\nmodel = "m"\n${key} = 3000000`)).toContain(
        `model 'x': ${key} must be at most 2147483 seconds (about 24 days)`,
      );
    expect(aliasError('provider = "openai"\nmodel = "m"\nread_timeout = 2147483')).toBe("no error");
  });

  test("a remote entry's mistake names the file and the line of the entry", () => {
    const dir = mkdtempSync(join(tmpdir(), "mlx-providers-toml-"));
    const file = join(dir, "models.toml");
    const entries = [
      '[models.fine]\nprovider = "openai"\nmodel = "m"\n',
      '[ models . "x" ]  # the broken one\nprovider = "cohere"\nmodel = "m"\n',
    ];
    writeFileSync(file, entries.join("\n"));
    process.env.MLX_HOME = dir;
    try {
      expect(() => loadAliases()).toThrow(`${file}:5: model 'x': provider must be "openai" or "anthropic"`);
    } finally {
      process.env.MLX_HOME = home;
    }
  });

  test("two entries on one base_url that disagree on its provider are refused, each named with its line", () => {
    const dir = mkdtempSync(join(tmpdir(), "mlx-providers-toml-"));
    const file = join(dir, "models.toml");
    const entry = (name: string, kind: string) =>
      `[models.${name}]\nprovider = "${kind}"\nbase_url = "http://127.0.0.1:${unreachable}"\nmodel = "m"\n`;
    writeFileSync(file, [entry("chat", "openai"), entry("messages", "anthropic")].join("\n"));
    process.env.MLX_HOME = dir;
    try {
      expect(() => loadAliases()).toThrow(
        `${file}:6: model 'messages': its base_url http://127.0.0.1:${unreachable} is also that of model 'chat' (${file}:1), with another provider kind or other limits`,
      );
    } finally {
      process.env.MLX_HOME = home;
    }
  });

  test("a remote alias has no weights: pulling or loading it says so", async () => {
    const r = await post(`${proxy.url}/v1/messages/count_tokens`, {
      model: "ro",
      messages: [{ role: "user", content: "Hi" }],
    });
    expect(r.status).toBe(400);
    expect(r.json.error.message).toContain("model 'ro' is served by a remote openai provider");
    // Pulling it was "unknown model 'ro' (not an alias, ...)", over HTTP "name an alias": it is one.
    const pulled = await post(`${proxy.url}/api/pull`, { model: "ro", stream: false });
    expect(pulled.status).toBe(400);
    expect(pulled.json.error).toContain("model 'ro' is served by a remote openai provider");
    const cli = await cliRunner(home)(["pull", "ro"]);
    expect(cli.code).toBe(1);
    expect(cli.stderr).toContain("model 'ro' is served by a remote openai provider");
    expect(cli.stderr).toContain("it has no weights to load or pull");
  });
});

/** A remote model on the OpenAI-compatible server at `port`, made here rather than read from models.toml. */
function directModel(name: string, port: number, provider: Provider): RemoteModel {
  const config = {
    name,
    kind: "openai" as const,
    baseUrl: provider.label,
    endpoint: `http://127.0.0.1:${port}/v1`,
    definedAt: "test",
    model: name,
    defaultMaxTokens: 16,
    limits: provider.limits,
  };
  return new RemoteModel(config, provider);
}

const hiRequest = {
  prompt: { kind: "chat" as const, messages: [{ role: "user" as const, content: "Hi" }] },
  sampling: {},
};

test("a tool call whose name a provider repeats in each piece (as the openai client reads it, the name is set, not added to)", async () => {
  const piece = (fn: object, finish: string | null = null) =>
    `data: ${JSON.stringify({ choices: [{ index: 0, delta: { tool_calls: [{ index: 0, ...fn }] }, finish_reason: finish }] })}\n\n`;
  const server = Bun.serve({
    port: 0,
    fetch: () =>
      new Response(
        piece({ id: "call_1", type: "function", function: { name: "get_weather", arguments: "" } }) +
          piece({ function: { name: "get_weather", arguments: '{"city":' } }) +
          piece({ function: { name: "get_weather", arguments: '"Paris"}' } }, "tool_calls") +
          "data: [DONE]\n\n",
        { headers: { "Content-Type": "text/event-stream" } },
      ),
  });
  helpers.push(server);
  const model = directModel("repeats", server.port!, new Provider("test", defaultLimits, "openai"));
  const events = [];
  for await (const event of model.stream(hiRequest)) events.push(event);
  const done = events.at(-1)!;
  expect(done.type === "done" && done.calls).toEqual([
    { id: "call_1", name: "get_weather", arguments: { city: "Paris" } },
  ]);
});

test("a function without parameters (OpenAI allows it) goes to an Anthropic provider with the input_schema type it requires", () => {
  const config = {
    ...directModel("claude", 1, new Provider("test", defaultLimits, "anthropic")).config,
    kind: "anthropic" as const,
  };
  const tools = { tools: [{ name: "now", parameters: {} }], choice: "auto" as const, parallel: true };
  const { body } = anthropicAdapter.request(config, { ...hiRequest, tools });
  expect(body.tools).toEqual([{ name: "now", input_schema: { type: "object" } }]);
  const withSchema = { name: "w", parameters: { type: "object", properties: { city: { type: "string" } } } };
  const full = anthropicAdapter.request(config, { ...hiRequest, tools: { ...tools, tools: [withSchema] } });
  expect(full.body.tools).toEqual([{ name: "w", input_schema: withSchema.parameters }]);
});

test("the half-open circuit's trial request, gone while it waited for a connection, lets the next request try", async () => {
  // Requests for "hold" wait for the gate; one for "fail" waits for its own, then is a 500.
  const hold = Promise.withResolvers<void>();
  const failing = Promise.withResolvers<void>();
  const server = Bun.serve({
    port: 0,
    async fetch(req) {
      const { model } = (await req.json()) as { model: string };
      if (model === "fail") {
        await failing.promise;
        return Response.json({ error: { message: "overloaded" } }, { status: 500 });
      }
      await hold.promise;
      return new Response(chatStream("done"), { headers: { "Content-Type": "text/event-stream" } });
    },
  });
  helpers.push(server);
  const limits = {
    ...defaultLimits,
    maxConnections: 2,
    maxQueue: 1,
    maxRetries: 0,
    circuitFailures: 1,
    circuitCooldownMs: 50,
  };
  const provider = new Provider("test", limits, "openai");
  const model = (name: string) => directModel(name, server.port!, provider);
  const answer = async (name: string, signal?: AbortSignal) => {
    let text = "";
    for await (const event of model(name).stream(hiRequest, { signal })) if (event.type === "text") text += event.text;
    return text;
  };
  const settled = (p: Promise<string>) =>
    p.then(
      (text) => text,
      (error: Error) => error.message,
    );
  // Both connections in use: one held, one failing; a third request waits for one.
  const first = settled(answer("hold"));
  const failed = settled(answer("fail"));
  await eventually(async () => provider.pool.inUse === 2);
  const queued = settled(answer("hold"));
  await eventually(async () => provider.pool.waiting === 1);
  failing.resolve();
  expect(await failed).toContain("answered 500: overloaded");
  // The circuit opened; the queued request took the freed connection; both are in use again.
  await eventually(async () => provider.pool.inUse === 2 && provider.circuit.state === "half_open");
  // The trial request waits for a connection, and its client goes away.
  const client = new AbortController();
  const trial = settled(answer("hold", client.signal));
  await eventually(async () => provider.pool.waiting === 1);
  client.abort(new Error("client gone"));
  expect(await trial).toBe("client gone");
  // The next request is the trial now (it was refused: "its circuit is open").
  const next = settled(answer("hold"));
  await Bun.sleep(50);
  hold.resolve();
  expect(await next).toBe("done");
  expect(await first).toBe("done");
  expect(await queued).toBe("done");
  expect(provider.circuit.state).toBe("closed");
});

test("Retry-After is read as seconds or as an HTTP date", () => {
  const now = Date.parse("Tue, 01 Dec 2026 10:00:00 GMT");
  expect(retryAfterMs("2", now)).toBe(2000);
  expect(retryAfterMs("Tue, 01 Dec 2026 10:00:03 GMT", now)).toBe(3000);
  expect(retryAfterMs("Tue, 01 Dec 2026 09:00:00 GMT", now)).toBe(0);
  expect(retryAfterMs("soon", now)).toBeUndefined();
  expect(retryAfterMs(null, now)).toBeUndefined();
});

test("an Anthropic provider's answer its context ended (stop_reason model_context_window_exceeded) was cut short: finish 'length'", async () => {
  const data = [
    { type: "message_start", message: { usage: { input_tokens: 5, output_tokens: 0 } } },
    { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } },
    { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "Once upon" } },
    { type: "content_block_stop", index: 0 },
    { type: "message_delta", delta: { stop_reason: "model_context_window_exceeded" }, usage: { output_tokens: 2 } },
    { type: "message_stop" },
  ];
  async function* stream() {
    for (const event of data) yield { event: event.type, data: JSON.stringify(event) };
  }
  const events = [];
  for await (const event of anthropicAdapter.events(stream())) events.push(event);
  expect(events.at(-1)).toMatchObject({ type: "done", finishReason: "length" });
});
