// Conversations keep their KV cache between turns, and make room when the context fills.
import { beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Conversation } from "../src/engine/conversation";
import { defaultSampling } from "../src/engine/sampling";
import { chatTokens } from "../src/engine/prompt";
import { loadModel, type LoadedModel } from "../src/models/load";
import { writeTinyModel } from "./helpers/tiny-model";

let lm: LoadedModel;
let small: LoadedModel;
let gemma: LoadedModel;

beforeAll(() => {
  const root = mkdtempSync(join(tmpdir(), "mlx-conv-"));
  writeTinyModel(join(root, "gemma"), { modelType: "gemma3_text", layers: 4, contextLength: 4096 });
  gemma = loadModel(join(root, "gemma"));
  writeTinyModel(join(root, "tiny"), { contextLength: 4096 });
  writeTinyModel(join(root, "small"), { contextLength: 160 });
  lm = loadModel(join(root, "tiny"));
  small = loadModel(join(root, "small"));
});

async function say(c: Conversation, text: string, maxTokens = 6, sampling = defaultSampling) {
  const turn = c.turn(text, { sampling, maxTokens });
  let step = await turn.next();
  while (!step.done) step = await turn.next();
  return step.value;
}

describe("Conversation", () => {
  test("a follow-up turn prefills only what the cache does not hold", async () => {
    const c = new Conversation(lm, "Be brief.");
    const first = await say(c, "Hello");
    expect(first.info.reusedTokens).toBe(0);
    const second = await say(c, "And then?");
    const whole = chatTokens(lm.tokenizer, [{ role: "system", content: "Be brief." }, ...c.messages.slice(0, 3)]);
    expect(second.info.reusedTokens).toBeGreaterThan(first.result.promptTokenIds.length);
    expect(second.info.reusedTokens + second.info.newTokens).toBe(whole.length);
    expect(c.messages.map((m) => m.role)).toEqual(["user", "assistant", "user", "assistant"]);
    c.dispose();
  });

  test("a sampled answer whose text tokenizes to other ids is reused whole: the next turn prefills only what follows it", async () => {
    const c = new Conversation(lm);
    const sampling = { ...defaultSampling, temperature: 1, seed: 3 };
    let retokenizedOtherwise = 0;
    let previous: { ids: number[]; unfed: number } | undefined;
    for (const text of ["Hello", "And then?", "More"]) {
      const { result, info } = await say(c, text, 12, sampling);
      // The cache holds the previous prompt and every answer token it fed: all but one cut short by max_tokens.
      if (previous) expect(info.reusedTokens).toBe(previous.ids.length - previous.unfed);
      const retokenized = lm.tokenizer.encode(result.text, { addSpecialTokens: false });
      if (retokenized.join() !== result.tokenIds.join()) retokenizedOtherwise++;
      previous = {
        ids: [...result.promptTokenIds, ...result.tokenIds],
        unfed: result.finishReason === "length" ? 1 : 0,
      };
    }
    // What the test is about: answers whose text, tokenized again, is not the ids sampled.
    expect(retokenizedOtherwise).toBeGreaterThan(0);
    c.dispose();
  });

  test("the answer with the reused cache equals the answer computed from scratch", async () => {
    const c = new Conversation(lm);
    await say(c, "Hello");
    const reused = (await say(c, "Tell me more", 8)).result.tokenIds;
    const fresh = new Conversation(lm);
    fresh.messages = c.messages.slice(0, 2);
    const scratch = (await say(fresh, "Tell me more", 8)).result.tokenIds;
    expect(reused).toEqual(scratch);
    c.dispose();
    fresh.dispose();
  });

  test("when the context fills, the oldest turns are dropped and the system prompt stays", async () => {
    const c = new Conversation(small, "Sys");
    let dropped = 0;
    for (let i = 0; i < 8; i++)
      dropped += (await say(c, `message number ${i} with several words in it`, 8)).info.droppedMessages;
    expect(dropped).toBeGreaterThan(0);
    expect(c.messages[0]!.role).toBe("user");
    expect(c.messages.at(-2)!.content).toContain("message number 7");
    expect(c.contextUsed).toBeLessThan(160);
    c.dispose();
  });

  test("a full context drops down to half of it, so the turns after a drop reuse the cache instead of each prefilling all again", async () => {
    const c = new Conversation(small, "Sys");
    const turns = [];
    for (let i = 0; i < 16; i++) turns.push((await say(c, `message number ${i} with several words in it`, 8)).info);
    const firstDrop = turns.findIndex((t) => t.droppedMessages > 0);
    expect(firstDrop).toBeGreaterThan(0);
    const after = turns.slice(firstDrop);
    // It was every turn from the first drop on: each dropped one exchange and prefilled the rest.
    expect(after.filter((t) => t.droppedMessages > 0).length).toBeLessThan(after.length / 2);
    expect(turns[firstDrop + 1]!.droppedMessages).toBe(0);
    expect(turns[firstDrop + 1]!.reusedTokens).toBeGreaterThan(turns[firstDrop + 1]!.newTokens);
    expect(c.contextUsed).toBeLessThan(160);
    c.dispose();
  });

  test("a message longer than the context is refused and the conversation is kept as it was, its cache too", async () => {
    const c = new Conversation(small, "Sys");
    await say(c, "Hello there");
    await say(c, "Tell me more");
    const kept = structuredClone(c.messages);
    await expect(say(c, "word ".repeat(400))).rejects.toThrow(/context/);
    expect(c.messages).toEqual(kept);
    const next = await say(c, "And then?");
    expect(next.info.droppedMessages).toBe(0);
    expect(next.info.reusedTokens).toBeGreaterThan(0);
    expect(c.messages.slice(0, 4)).toEqual(kept);
    c.dispose();
  });

  test("with a rotating cache (--max-kv-size) nothing is dropped: the chat goes on past the context, each turn prefilling only itself", async () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-conv-rotating-"));
    writeTinyModel(root, { contextLength: 160 });
    const rotating = loadModel(root);
    rotating.maxKvSize = 64;
    const c = new Conversation(rotating, "Sys");
    const turns = [];
    for (let i = 0; i < 8; i++) turns.push((await say(c, `message number ${i} with several words in it`, 8)).info);
    expect(turns.map((t) => t.droppedMessages)).toEqual(Array(8).fill(0));
    // Each turn continues the rotated cache of the last: only its own tokens are prefilled.
    for (const t of turns.slice(1)) expect(t.newTokens).toBeLessThan(30);
    expect(turns.at(-1)!.reusedTokens).toBeGreaterThan(160);
    expect(c.messages).toHaveLength(16);
    expect(c.contextUsed).toBeGreaterThan(160);
    c.dispose();
    rotating.free();
  });

  test("gemma3: turns reuse the cache, and a changed system prompt answers as a fresh conversation does", async () => {
    const c = new Conversation(gemma);
    const long = (n: number) => Array.from({ length: n }, (_, i) => `word${i % 50}`).join(" ");
    await say(c, long(150), 4);
    const second = await say(c, "And then?", 4);
    expect(second.info.reusedTokens).toBeGreaterThan(100);
    await say(c, long(200), 4); // longer than the sliding window of the local layers
    c.system = "Be brief.";
    const fourth = await say(c, "Tell me more", 8);
    const fresh = new Conversation(gemma, "Be brief.");
    fresh.messages = c.messages.slice(0, 6);
    expect(fourth.result.tokenIds).toEqual((await say(fresh, "Tell me more", 8)).result.tokenIds);
    c.dispose();
    fresh.dispose();
  }, 60_000);

  test("clear forgets the conversation and its cache", async () => {
    const c = new Conversation(lm);
    await say(c, "Hello");
    c.clear();
    expect(c.messages).toEqual([]);
    expect((await say(c, "Hello")).info.reusedTokens).toBe(0);
    c.dispose();
  });
});
