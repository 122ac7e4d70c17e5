// An alias's system prompt and messages (models.toml's `system` and `messages`, as an Ollama
// Modelfile's SYSTEM and MESSAGE): every API puts them before the request's own turns, a request
// with a system message of its own keeps it, and an alias naming another inherits them. A real
// server on loopback with a tiny random-weight model: what a prompt held is read back from the
// prompt's token count, from /apply-template, and from /api/generate's context.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Ollama } from "ollama";
import type { RunningServer } from "../src/server/app";
import { cliRunner } from "./helpers/cli";
import { post, serve } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const savedHome = process.env.MLX_HOME;
const SYSTEM = "You are a pirate who answers in rhymes.";
let server: RunningServer;
let ollama: Ollama;
let tiny: string;
let home: string;

beforeAll(() => {
  const root = mkdtempSync(join(tmpdir(), "mlx-model-prompt-"));
  home = join(root, "home");
  process.env.MLX_HOME = home;
  tiny = join(root, "tiny");
  writeTinyModel(tiny, { contextLength: 512 });
  mkdirSync(home, { recursive: true });
  writeFileSync(
    join(home, "models.toml"),
    `[models.pirate]\nsource = "${tiny}"\nsystem = "${SYSTEM}"\n\n` +
      `[models.primed]\nsource = "${tiny}"\nsystem = "${SYSTEM}"\n` +
      `messages = [{ role = "user", content = "Ahoy?" }, { role = "assistant", content = "Arr!" }]\n\n` +
      // Inherits pirate's system prompt, as it would its sampling values.
      `[models.captain]\nsource = "pirate"\ntemperature = 0.5\n`,
  );
  server = serve({});
  ollama = new Ollama({ host: server.url });
}, 60_000);

afterAll(() => {
  server.stop();
  if (savedHome === undefined) delete process.env.MLX_HOME;
  else process.env.MLX_HOME = savedHome;
});

const once = { num_predict: 1, temperature: 0 };
const user = { role: "user", content: "Where is the treasure?" };
const system = { role: "system", content: SYSTEM };

/** The prompt's tokens as Ollama's /api/chat counts them. */
async function chatPromptTokens(model: string, messages: { role: string; content: string }[]): Promise<number> {
  const r = await ollama.chat({ model, messages, stream: false, options: once });
  return r.prompt_eval_count;
}

/** The text the chat template makes of `messages` for `model`, as a generation renders it. */
async function rendered(model: string, messages: object[]): Promise<string> {
  const r = await post(`${server.url}/apply-template`, { model, messages });
  expect(r.status).toBe(200);
  return r.json.prompt;
}

describe("an alias's system prompt", () => {
  test("goes first where the request brings none; a request's own system message replaces it", async () => {
    expect(await rendered("pirate", [user])).toBe(await rendered(tiny, [system, user]));
    const own = { role: "system", content: "Be brief." };
    expect(await rendered("pirate", [own, user])).toBe(await rendered(tiny, [own, user]));
    // Inherited down the chain.
    expect(await rendered("captain", [user])).toBe(await rendered(tiny, [system, user]));
  });

  test("every API's prompt holds it", async () => {
    const withSystem = await chatPromptTokens(tiny, [system, user]);
    // (SmolLM2's template writes a default system prompt of its own where there is none.)
    expect(withSystem).not.toBe(await chatPromptTokens(tiny, [user]));
    expect(await chatPromptTokens("pirate", [user])).toBe(withSystem);
    expect(await chatPromptTokens("pirate:latest", [user])).toBe(withSystem);

    const openai = await post(`${server.url}/v1/chat/completions`, {
      model: "pirate",
      messages: [user],
      max_tokens: 1,
    });
    expect(openai.json.usage.prompt_tokens).toBe(withSystem);

    const responses = await post(`${server.url}/v1/responses`, {
      model: "pirate",
      input: user.content,
      max_output_tokens: 16,
    });
    const plainResponses = await post(`${server.url}/v1/responses`, {
      model: tiny,
      instructions: SYSTEM,
      input: user.content,
      max_output_tokens: 16,
    });
    expect(responses.json.usage.input_tokens).toBe(plainResponses.json.usage.input_tokens);

    // Anthropic's system is a field of its own: without one, the alias's.
    const anthropic = (body: object) => post(`${server.url}/v1/messages`, { max_tokens: 1, ...body });
    const aliased = await anthropic({ model: "pirate", messages: [user] });
    const plain = await anthropic({ model: tiny, system: SYSTEM, messages: [user] });
    // The prompt's tokens, those the prefix cache held included.
    const inputTokens = (u: any) =>
      u.input_tokens + (u.cache_read_input_tokens ?? 0) + (u.cache_creation_input_tokens ?? 0);
    expect(inputTokens(aliased.json.usage)).toBe(inputTokens(plain.json.usage));
    const counted = await post(`${server.url}/v1/messages/count_tokens`, { model: "pirate", messages: [user] });
    expect(counted.json.input_tokens).toBe(inputTokens(plain.json.usage));

    // Ollama's /api/generate: the alias's system unless the request gives one; raw leaves it out.
    const generate = (model: string, fields: object = {}) =>
      ollama.generate({ model, prompt: user.content, stream: false, options: once, ...fields });
    const generated = await generate("pirate");
    expect(generated.prompt_eval_count).toBe((await generate(tiny, { system: SYSTEM })).prompt_eval_count);
    const promptIds = generated.context.slice(0, generated.prompt_eval_count);
    const text = await post(`${server.url}/detokenize`, { model: tiny, tokens: promptIds });
    expect(text.json.content).toContain(SYSTEM);
    expect((await generate("pirate", { system: "Be brief." })).prompt_eval_count).toBe(
      (await generate(tiny, { system: "Be brief." })).prompt_eval_count,
    );
    expect((await generate("pirate", { raw: true })).prompt_eval_count).toBe(
      (await generate(tiny, { raw: true })).prompt_eval_count,
    );
  });

  test("an alias's messages come after the system prompt and before the request's", async () => {
    const turns = [
      { role: "user", content: "Ahoy?" },
      { role: "assistant", content: "Arr!" },
    ];
    expect(await rendered("primed", [user])).toBe(await rendered(tiny, [system, ...turns, user]));
    const own = { role: "system", content: "Be brief." };
    expect(await rendered("primed", [own, user])).toBe(await rendered(tiny, [own, ...turns, user]));
    // /api/generate's prompt too, as Ollama's.
    const generated = await ollama.generate({ model: "primed", prompt: user.content, stream: false, options: once });
    expect(generated.prompt_eval_count).toBe(await chatPromptTokens(tiny, [system, ...turns, user]));
  });

  test("/api/show gives it in its system field and as the modelfile's SYSTEM and MESSAGE lines", async () => {
    const shown = await ollama.show({ model: "primed" });
    expect(shown.system).toBe(SYSTEM);
    expect(shown.modelfile).toContain(`SYSTEM """${SYSTEM}"""\n`);
    expect(shown.modelfile).toContain('MESSAGE user """Ahoy?"""\nMESSAGE assistant """Arr!"""\n');
    expect((await ollama.show({ model: tiny })).system).toBeUndefined();
  });

  test("mlx run with the alias puts it in the prompt; --system replaces it", async () => {
    const mlx = cliRunner(home);
    const run = async (args: string[]) => {
      const r = await mlx(["run", ...args, "--max-tokens", "1", "--temp", "0", "--json", user.content]);
      expect(r.code).toBe(0);
      return JSON.parse(r.stdout).stats.prompt_tokens as number;
    };
    expect(await run(["-m", "pirate"])).toBe(await run(["-m", tiny, "--system", SYSTEM]));
    expect(await run(["-m", "pirate", "--system", "Be brief."])).toBe(await run(["-m", tiny, "--system", "Be brief."]));
    const shown = await mlx(["show", "primed"]);
    expect(shown.code).toBe(0);
    expect(shown.stdout).toMatch(new RegExp(`^system +${SYSTEM}$`, "m"));
    expect(shown.stdout).toMatch(/^message user +Ahoy\?$/m);
  });

  test("mlx cache-prompt with the alias caches the document under its system prompt, which mlx run then reuses", async () => {
    const mlx = cliRunner(home);
    const file = join(home, "pirate.cache");
    const cached = await mlx(["cache-prompt", "-m", "pirate", file], "A long document about ships.");
    expect(cached.code).toBe(0);
    const r = await mlx([
      "run",
      "-m",
      "pirate",
      "--prompt-cache",
      file,
      "--max-tokens",
      "1",
      "--json",
      "Summarize it.",
    ]);
    expect(r.stderr).toBe("");
    expect(JSON.parse(r.stdout).stats.cached_tokens).toBeGreaterThan(0);
  });

  test("mlx chat with the alias puts it in the conversation, and /show tells it", async () => {
    const mlx = cliRunner(home);
    /** The context the first answer leaves in use (prompt and answer), from --stats. */
    const contextUsed = async (args: string[]) => {
      const r = await mlx(["chat", ...args, "--max-tokens", "1", "--stats"], `${user.content}\n`);
      expect(r.code).toBe(0);
      return Number(/context (\d+)/.exec(r.stderr)![1]);
    };
    expect(await contextUsed(["-m", "pirate"])).toBe(await contextUsed(["-m", tiny, "--system", SYSTEM]));
    const shown = await mlx(["chat", "-m", "primed"], "/show\n");
    expect(shown.stderr).toContain(`system prompt:  ${SYSTEM} (the alias's, in models.toml)\n`);
    expect(shown.stderr).toContain("first turns:    2 messages");
  });

  test("the library's model loaded by the alias's name puts it in its prompts", async () => {
    const { load } = await import("../src/index");
    const [pirate, plain] = [await load("pirate"), await load(tiny)];
    try {
      const tokens = async (model: typeof pirate, options: object) =>
        (await model.generate(user.content, { maxTokens: 1, ...options })).stats.promptTokens;
      expect(await tokens(pirate, {})).toBe(await tokens(plain, { system: SYSTEM }));
      expect(await tokens(pirate, { system: "Be brief." })).toBe(await tokens(plain, { system: "Be brief." }));
    } finally {
      pirate.close();
      plain.close();
    }
  });

  test("a system prompt that is not a string, or messages not user/assistant turns, is an error naming the entry", async () => {
    const mlx = cliRunner(home);
    const file = join(home, "models.toml");
    const good = await Bun.file(file).text();
    try {
      writeFileSync(file, `${good}\n[models.bad]\nsource = "${tiny}"\nsystem = 3\n`);
      let r = await mlx(["run", "-m", "bad", "hi"]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("model 'bad': system must be a string");
      writeFileSync(
        file,
        `${good}\n[models.bad]\nsource = "${tiny}"\nmessages = [{ role = "system", content = "x" }]\n`,
      );
      r = await mlx(["run", "-m", "bad", "hi"]);
      expect(r.code).not.toBe(0);
      expect(r.stderr).toContain("model 'bad': messages must be a list of");
    } finally {
      writeFileSync(file, good);
    }
  });
});
