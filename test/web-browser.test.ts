// The chat and the dashboard in headless Chromium, against a real server with a tiny model.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import type { Browser, Page } from "playwright-core";
import { formatBytes } from "../src/format";
import { loadModelAsync } from "../src/models/load";
import type { RunningServer } from "../src/server/app";
import { chromiumPath, launchBrowser, longTinyModel, openPage } from "./helpers/browser";
import { eventually, post, serve, startServe } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const stats = async (server: RunningServer): Promise<any> => (await fetch(`${server.url}/stats`)).json();
const cancelled = async (server: RunningServer) =>
  Number(
    /mlx_generations_total\{route="\/v1\/chat\/completions",finish_reason="cancelled"\} (\d+)/.exec(
      await (await fetch(`${server.url}/metrics`)).text(),
    )?.[1] ?? 0,
  );

/** Opens the settings and sets the answer length (an empty string: up to the context). */
async function setMaxTokens(page: Page, value: string): Promise<void> {
  if (await page.locator("#settings").isHidden()) await page.click("#toggle-settings");
  await page.fill("#max-tokens", value);
  await page.locator("#max-tokens").dispatchEvent("change");
}

async function send(page: Page, text: string): Promise<void> {
  await page.fill("#input", text);
  await page.press("#input", "Enter");
}

/** Once the page is ready: the model list loaded, and a question answered in 8 tokens (its figures shown). */
async function answersInEightTokens(page: Page): Promise<void> {
  await page.waitForSelector("body[data-ready]");
  expect(await page.locator("#model option").count()).toBeGreaterThan(0);
  await setMaxTokens(page, "8");
  await send(page, "Hi");
  await page.waitForSelector(".message.assistant .figures");
  expect(await page.locator(".message.assistant .figures").textContent()).toMatch(/^8 tokens/);
}

/**
 * Run in the page: counts in window.keyQuestions each time the API key dialog opens (it is made
 * on first use, so the whole document is watched), the one open already included.
 */
const countKeyQuestions = `
  window.keyQuestions = document.querySelector("#key-dialog[open]") ? 1 : 0;
  new MutationObserver((changes) => {
    for (const c of changes) if (c.target.id === "key-dialog" && c.target.open) window.keyQuestions++;
  }).observe(document, { subtree: true, attributes: true, attributeFilter: ["open"] });
`;

/** Imports `conversation` through the page's file picker, as a user does with an exported one. */
async function importConversation(page: Page, conversation: { title: string; messages: unknown[] }): Promise<void> {
  await page.setInputFiles("#import-file", {
    name: `${conversation.title}.json`,
    mimeType: "application/json",
    buffer: Buffer.from(JSON.stringify(conversation)),
  });
}

/** A browser and a started server, once the server is healthy. */
async function browserAndServer(server: RunningServer): Promise<{ browser: Browser; server: RunningServer }> {
  const browser = await launchBrowser();
  await eventually(async () => (await fetch(`${server.url}/health`)).status === 200, 60_000);
  return { browser, server };
}

async function closeBoth(browser: Browser | undefined, server: RunningServer | undefined): Promise<void> {
  await browser?.close();
  await server?.stop();
}

/**
 * Run in the page (a string: this file is not typed for the DOM): whether its store (IndexedDB,
 * as src/web/lib/store.ts keeps it) holds some text of the current conversation's answer, saved
 * while it is written (its note then says it is unfinished).
 */
const savedSomeOfTheAnswer = `new Promise((resolve, reject) => {
  const opened = indexedDB.open("mlx-chat", 1);
  opened.onerror = () => reject(opened.error);
  opened.onsuccess = () => {
    const id = localStorage.getItem("mlx.conversation") ?? "";
    const read = opened.result.transaction("conversations").objectStore("conversations").get(id);
    read.onerror = () => reject(read.error);
    read.onsuccess = () => {
      opened.result.close();
      const last = read.result?.messages.at(-1);
      resolve(last?.role === "assistant" && last.content !== "" && String(last.note).startsWith("unfinished"));
    };
  };
})`;

describe.skipIf(!chromiumPath)("in Chromium", () => {
  let browser: Browser;
  let server: RunningServer;
  let other: string;
  beforeAll(async () => {
    other = join(mkdtempSync(join(tmpdir(), "mlx-web-")), "tiny-other");
    writeTinyModel(other, { contextLength: 512, seed: 7 });
    ({ browser, server } = await browserAndServer(
      serve({ defaultModel: longTinyModel(), maxLoadedModels: 2, maxBatch: 16 }),
    ));
  }, 90_000);
  afterAll(() => closeBoth(browser, server));

  test("an answer streams in, survives a reload (IndexedDB), and can be stopped (the server cancels it)", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await setMaxTokens(page, "150");
    // Streaming: text shows while the answer is still being written, and grows until it ends. The
    // lengths are taken in the page as it draws (read from here, a fast answer could end first).
    await page.evaluate(`
      window.streamedLengths = [];
      new MutationObserver(() => {
        const text = document.querySelector(".message.assistant.streaming .markdown")?.textContent;
        if (text) window.streamedLengths.push(text.length);
      }).observe(document.getElementById("messages"), { subtree: true, childList: true, characterData: true });
    `);
    await send(page, "Hello there");
    await page.waitForSelector(".message.assistant .figures");
    const done = (await page.locator(".message.assistant .markdown").textContent())!;
    const streamed = (await page.evaluate("window.streamedLengths")) as number[];
    expect(streamed.some((length) => length < done.length)).toBe(true);
    expect(new Set(streamed).size).toBeGreaterThan(1);
    expect(await page.locator(".message.assistant .figures").textContent()).toMatch(
      /^150 tokens · [\d.]+ tok\/s · first token \d+ ms · \d+ cached$/,
    );

    await page.reload();
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator(".message.user .body").textContent()).toBe("Hello there");
    expect(await page.locator(".message.assistant .markdown").textContent()).toBe(done);
    expect(await page.locator("#conversations li.current .open").textContent()).toBe("Hello there");

    // Stop mid-answer (Esc): the server cancels the generation.
    const before = await cancelled(server);
    await setMaxTokens(page, "");
    await send(page, "Tell me a long story");
    await page.locator(".message.assistant").nth(1).locator(".markdown").filter({ hasText: /\S/ }).waitFor();
    expect((await stats(server)).queue.running).toBe(1);
    await page.keyboard.press("Escape");
    await page.waitForSelector(".message.assistant:nth-of-type(4) .figures");
    expect(await page.locator(".message.assistant").nth(1).locator(".figures").textContent()).toBe("stopped");
    await eventually(async () => (await stats(server)).queue.running === 0, 5000);
    await eventually(async () => (await cancelled(server)) === before + 1, 5000);
    expect(errors).toEqual([]);
  }, 120_000);

  test("mid-answer, a reader scrolled up stays put, and neither a reload nor a new chat loses the conversation", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`, { height: 400 });
    await page.waitForSelector("body[data-ready]");
    await page.click("#new-chat");
    await setMaxTokens(page, "");
    // Greedy: the tiny model's answer then runs on to the context's end instead of stopping by chance.
    await page.fill("#temperature", "0");
    await page.locator("#temperature").dispatchEvent("change");
    await page.click("#toggle-settings");
    await send(page, "Tell me a long story");
    const messages = page.locator("#messages");
    await eventually(() => messages.evaluate((m) => m.scrollHeight > m.clientHeight + 100), 10_000);
    // Scrolled up to read: the streaming answer does not pull the view back down.
    await messages.evaluate((m) => (m.scrollTop = 0));
    const height = await messages.evaluate((m) => m.scrollHeight);
    await eventually(async () => (await messages.evaluate((m) => m.scrollHeight)) > height + 100, 10_000);
    expect(await page.locator("body.running").count()).toBe(1);
    expect(await messages.evaluate((m) => m.scrollTop)).toBe(0);

    // A reload mid-answer keeps the question and what was written of the answer (saved as it
    // streams, once a second): reloaded once the page's store holds some of it, however slow it comes.
    await eventually(async () => (await page.evaluate(savedSomeOfTheAnswer)) === true, 30_000);
    await page.reload();
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator(".message.user .body").textContent()).toBe("Tell me a long story");
    expect(await page.locator(".message.assistant .figures").textContent()).toStartWith("unfinished");
    expect(await page.locator(".message.assistant .markdown").textContent()).not.toBe("");

    // A new chat opened mid-answer: the answer stops, and its conversation is kept, question and answer.
    await page.click("#new-chat");
    await send(page, "Another long story");
    await page.locator(".message.assistant.streaming .markdown").filter({ hasText: /\S/ }).waitFor();
    await page.click("#new-chat");
    await page.locator("#conversations .open", { hasText: "Another long story" }).click();
    await page.locator(".message.assistant .figures", { hasText: "stopped" }).waitFor();
    expect(await page.locator(".message.user .body").textContent()).toBe("Another long story");
    expect(await page.locator(".message.assistant .markdown").textContent()).not.toBe("");
    expect(await page.locator("#conversations .open", { hasText: /^New chat$/ }).count()).toBe(0);
    expect(errors).toEqual([]);
  }, 90_000);

  test("a conversation deleted while its answer is written, here or in another tab, stays deleted and its answer stops", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    page.on("dialog", (d) => d.accept()); // "Delete …?"
    await page.waitForSelector("body[data-ready]");
    await page.click("#new-chat");
    await setMaxTokens(page, "");
    const before = await cancelled(server);
    await send(page, "Doomed here");
    await page.locator(".message.assistant.streaming .markdown").filter({ hasText: /\S/ }).waitFor();
    await page.locator("#conversations li.current .delete").click();
    await eventually(async () => (await cancelled(server)) === before + 1, 5000);
    await page.waitForSelector("body:not(.running)");
    expect(await page.locator("#conversations .open", { hasText: "Doomed here" }).count()).toBe(0);

    // Deleted in a second tab: the first, writing its answer, stops it and does not save it back.
    await send(page, "Doomed elsewhere");
    await page.locator(".message.assistant.streaming .markdown").filter({ hasText: /\S/ }).waitFor();
    const second = await page.context().newPage();
    second.on("dialog", (d) => d.accept());
    second.on("pageerror", (e) => errors.push(e.message));
    await second.goto(`${server.url}/`);
    await second.waitForSelector("body[data-ready]");
    await second.locator("#conversations li.current .delete").click();
    await eventually(async () => (await cancelled(server)) === before + 2, 5000);
    await page.waitForSelector("body:not(.running)");
    await page.reload();
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator("#conversations .open").allTextContents()).not.toContain("Doomed elsewhere");
    expect(await page.locator("#conversations .open").allTextContents()).not.toContain("Doomed here");
    expect(errors).toEqual([]);
  }, 60_000);

  test("a conversation imported mid-answer is shown ready to use: the answer stops, as opening another does", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await page.click("#new-chat");
    await setMaxTokens(page, "");
    const before = await cancelled(server);
    await send(page, "A long story, interrupted");
    await page.locator(".message.assistant.streaming .markdown").filter({ hasText: /\S/ }).waitFor();
    await importConversation(page, {
      title: "Imported mid-answer",
      messages: [
        { role: "user", content: "Hi" },
        { role: "assistant", content: "Hello" },
      ],
    });
    await page.locator("#conversations li.current .open", { hasText: "Imported mid-answer" }).waitFor();
    await eventually(async () => (await cancelled(server)) === before + 1, 5000);
    await page.waitForSelector("body:not(.running)");
    expect(await page.locator("#send").isVisible()).toBe(true);
    expect(await page.locator(".message.assistant .regenerate").count()).toBe(1);
    // As an opened conversation, it is the one a reload shows.
    await page.reload();
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator("#conversations li.current .open").textContent()).toBe("Imported mid-answer");
    await page.locator("#conversations .open", { hasText: "A long story, interrupted" }).click();
    await page.locator(".message.assistant .figures", { hasText: /^stopped$/ }).waitFor();
    expect(errors).toEqual([]);
  }, 60_000);

  test("two tabs: each shows what the other saved, and neither overwrites the other's turns", async () => {
    const { page: first, errors } = await openPage(browser, `${server.url}/`);
    await first.waitForSelector("body[data-ready]");
    await first.click("#new-chat");
    await setMaxTokens(first, "3");
    await send(first, "First question");
    await first.locator(".message.assistant .figures").waitFor();
    const second = await first.context().newPage();
    second.on("pageerror", (e) => errors.push(e.message));
    await second.goto(`${server.url}/`);
    await second.waitForSelector("body[data-ready]");
    await second.locator(".message.user", { hasText: "First question" }).waitFor();

    await send(first, "Second question");
    await first.locator(".message.assistant").nth(1).locator(".figures").waitFor();
    // The other tab follows without a reload, and its next question comes after the first tab's.
    await second.locator(".message.user", { hasText: "Second question" }).waitFor();
    await send(second, "Third question");
    await second.locator(".message.assistant").nth(2).locator(".figures").waitFor();
    await first.locator(".message.user", { hasText: "Third question" }).waitFor();
    await first.reload();
    await first.waitForSelector("body[data-ready]");
    expect(await first.locator(".message.user .body").allTextContents()).toEqual([
      "First question",
      "Second question",
      "Third question",
    ]);
    // A conversation started in one tab is listed in the other.
    await first.click("#new-chat");
    await send(first, "Fourth question");
    await second.locator("#conversations .open", { hasText: "Fourth question" }).waitFor();
    expect(errors).toEqual([]);
  }, 60_000);

  test("two tabs: while one writes an answer, the other does not send on top of it (and so lose it)", async () => {
    const { page: first, errors } = await openPage(browser, `${server.url}/`);
    await first.waitForSelector("body[data-ready]");
    await first.click("#new-chat");
    await setMaxTokens(first, "");
    await send(first, "Tell me a long story");
    await first.locator(".message.assistant .markdown").filter({ hasText: /\S/ }).waitFor();
    // Opened meanwhile, a second tab shows the answer as it is saved (once a second), and tries to go on.
    const second = await first.context().newPage();
    second.on("pageerror", (e) => errors.push(e.message));
    await second.goto(`${server.url}/`);
    await second.waitForSelector("body[data-ready]");
    await second.locator(".message.assistant .markdown").filter({ hasText: /\S/ }).waitFor();
    // Said as it is: not "unfinished (the page was closed or reloaded…)", which a reload leaves.
    await second.locator(".message.assistant .figures", { hasText: "being written in another tab" }).waitFor();
    const requests: unknown[] = [];
    second.on("request", (r) => r.url().endsWith("/v1/chat/completions") && requests.push(r.postDataJSON()));
    await send(second, "Next question");
    await second.locator("#notice", { hasText: "being written in another tab" }).waitFor();
    await second.locator(".regenerate").click();
    expect(requests).toEqual([]);
    expect(await second.inputValue("#input")).toBe("Next question"); // kept, to send once the answer is done
    await first.keyboard.press("Escape");
    await first.locator(".message.assistant .figures", { hasText: /^stopped$/ }).waitFor();
    const answered = (await first.locator(".message.assistant .markdown").textContent())!;
    // Once it is done, the question goes after the whole answer, which stays as written.
    await second.locator(".message.assistant .figures", { hasText: /^stopped$/ }).waitFor();
    await setMaxTokens(second, "3");
    await second.press("#input", "Enter");
    await second
      .locator(".message.assistant")
      .nth(1)
      .locator(".figures", { hasText: /^3 tokens/ })
      .waitFor();
    expect(await second.locator("#notice").isHidden()).toBe(true);
    await first.reload();
    await first.waitForSelector("body[data-ready]");
    expect(await first.locator(".message.user .body").allTextContents()).toEqual([
      "Tell me a long story",
      "Next question",
    ]);
    expect(await first.locator(".message.assistant .markdown").first().textContent()).toBe(answered);
    expect(await first.locator(".message.assistant .figures").first().textContent()).toBe("stopped");
    expect(errors).toEqual([]);
  }, 60_000);

  test("two tabs: a reader scrolled up in one stays put while the other writes an answer to that conversation", async () => {
    const { page: first, errors } = await openPage(browser, `${server.url}/`, { height: 400 });
    await first.waitForSelector("body[data-ready]");
    const earlier = Array.from({ length: 12 }, (_, i) => ({
      role: i % 2 ? "assistant" : "user",
      content: `Turn ${i}: ${"words ".repeat(40)}`,
    }));
    await importConversation(first, { title: "Long read", messages: earlier });
    await first.locator("#conversations li.current .open", { hasText: "Long read" }).waitFor();
    const second = await first.context().newPage();
    second.on("pageerror", (e) => errors.push(e.message));
    await second.setViewportSize({ width: 1200, height: 400 });
    await second.goto(`${server.url}/`);
    await second.waitForSelector("body[data-ready]");
    await second.locator(".message.user", { hasText: "Turn 10" }).waitFor();
    const messages = second.locator("#messages");
    await messages.evaluate((m) => (m.scrollTop = 0));

    await setMaxTokens(first, "");
    await send(first, "Tell me a long story");
    // The other tab draws the answer as it is saved (once a second); the reader is not pulled down.
    await second.locator(".message.assistant .figures", { hasText: "being written in another tab" }).waitFor();
    await Bun.sleep(2500);
    expect(await messages.evaluate((m) => m.scrollTop)).toBe(0);
    // One at the end follows the answer as it grows.
    await messages.evaluate((m) => (m.scrollTop = m.scrollHeight));
    const height = await messages.evaluate((m) => m.scrollHeight);
    await eventually(async () => (await messages.evaluate((m) => m.scrollHeight)) > height + 50, 10_000);
    await Bun.sleep(1500);
    expect(await messages.evaluate((m) => m.scrollHeight - m.scrollTop - m.clientHeight)).toBeLessThan(24);
    // The answer may have run to the tiny model's context by now, so it is over either way.
    await first.keyboard.press("Escape");
    await first.waitForSelector("body:not(.running)");
    expect(errors).toEqual([]);
  }, 60_000);

  test("two tabs: a reasoning opened in one stays open while the other writes an answer to that conversation", async () => {
    const { page: first, errors } = await openPage(browser, `${server.url}/`);
    await first.waitForSelector("body[data-ready]");
    await importConversation(first, {
      title: "Reasoned",
      messages: [
        { role: "user", content: "Why?" },
        { role: "assistant", content: "<think>Because of reasons.</think>The answer is 42." },
      ],
    });
    await first.locator("#conversations li.current .open", { hasText: "Reasoned" }).waitFor();
    const second = await first.context().newPage();
    second.on("pageerror", (e) => errors.push(e.message));
    await second.goto(`${server.url}/`);
    await second.waitForSelector("body[data-ready]");
    await second.locator(".message.assistant details.reasoning summary").click();
    const open = () =>
      second
        .locator(".message.assistant details.reasoning")
        .first()
        .evaluate((d) => (d as unknown as { open: boolean }).open);
    expect(await open()).toBe(true);

    await setMaxTokens(first, "");
    await send(first, "Tell me a long story");
    // Drawn anew at each of the other tab's saves (once a second), the reasoning stayed open only until the first.
    await second.locator(".message.assistant .figures", { hasText: "being written in another tab" }).waitFor();
    await Bun.sleep(2500);
    expect(await open()).toBe(true);
    // The answer may have run to the tiny model's context by now, so it is over either way.
    await first.keyboard.press("Escape");
    await first.waitForSelector("body:not(.running)");
    expect(errors).toEqual([]);
  }, 60_000);

  test("a question sent as the last answer ends waits for it to be saved, rather than being refused", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await page.click("#new-chat");
    // After an answer the page lists the models anew: slow here, as from a busy server.
    await page.route(/\/api\/ps$/, async (route) => {
      await Bun.sleep(1500);
      await route.continue();
    });
    await setMaxTokens(page, "");
    await send(page, "Tell me a long story");
    await page.locator(".message.assistant.streaming .markdown").filter({ hasText: /\S/ }).waitFor();
    await page.keyboard.press("Escape");
    await page.waitForSelector("body:not(.running)");
    await setMaxTokens(page, "3");
    await send(page, "Next question");
    await page
      .locator(".message.assistant")
      .nth(1)
      .locator(".figures", { hasText: /^3 tokens/ })
      .waitFor();
    expect(await page.locator("#notice").isHidden()).toBe(true);
    expect(await page.locator(".message.user .body").allTextContents()).toEqual([
      "Tell me a long story",
      "Next question",
    ]);
    expect(errors).toEqual([]);
  }, 60_000);

  test("switching models sends the next question to the model picked", async () => {
    // Load the second model so that the picker lists it.
    expect(
      (
        await fetch(`${server.url}/v1/completions`, {
          method: "POST",
          body: JSON.stringify({ model: other, prompt: "Hi", max_tokens: 1 }),
        })
      ).status,
    ).toBe(200);
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await page.click("#new-chat");
    expect(await page.locator("#model option").allTextContents()).toEqual(
      expect.arrayContaining([`${other} (loaded)`, `${longTinyModel()} (loaded)`]),
    );
    await page.selectOption("#model", other);
    await setMaxTokens(page, "5");
    const request = page.waitForRequest((r) => r.url().endsWith("/v1/chat/completions"));
    await send(page, "Which model are you?");
    expect((await request).postDataJSON().model).toBe(other);
    await page.waitForSelector(".message.assistant .figures");
    expect(await page.locator(".message.assistant .figures").textContent()).toMatch(/^5 tokens/);
    expect(errors).toEqual([]);
  }, 60_000);

  test("a conversation whose model the server no longer has says so, and is not answered by another model", async () => {
    const gone = "gone-model-since-exported";
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await importConversation(page, {
      title: "Its model is gone",
      model: gone,
      messages: [
        { role: "user", content: "Hi" },
        { role: "assistant", content: "Hello" },
      ],
    } as { title: string; messages: unknown[] });
    await page.locator("#conversations li.current .open", { hasText: "Its model is gone" }).waitFor();
    expect(await page.locator(".model-missing").textContent()).toBe(
      `This conversation's model, ${gone}, is not on this server: pick another one to go on.`,
    );
    // Still its model in the picker (was: the first model listed, silently).
    expect(await page.locator("#model").inputValue()).toBe(gone);
    expect(await page.locator("#model option:checked").textContent()).toBe(`${gone} (not on this server)`);
    // A question goes to that model, which the server refuses: no other model answers it unasked.
    await setMaxTokens(page, "4");
    const request = page.waitForRequest((r) => r.url().endsWith("/v1/chat/completions"));
    await send(page, "Still there?");
    expect((await request).postDataJSON().model).toBe(gone);
    await page
      .locator(".message.assistant")
      .nth(1)
      .locator(".figures", { hasText: /^error: / })
      .waitFor();
    expect(await page.locator(".model-missing").count()).toBe(1);
    // Another model picked: the line goes, and the next question is answered by it.
    await page.selectOption("#model", longTinyModel());
    expect(await page.locator(".model-missing").count()).toBe(0);
    expect(await page.locator("#model option", { hasText: gone }).count()).toBe(0);
    await page.click(".message.assistant .regenerate");
    await page.locator(".message.assistant .figures", { hasText: /^4 tokens/ }).waitFor();
    expect(errors.filter((e) => !e.includes("404"))).toEqual([]);
  }, 60_000);

  test("after each answer the picker lists the models as the server now has them, loaded or not", async () => {
    const load = (model: string) =>
      fetch(`${server.url}/v1/completions`, {
        method: "POST",
        body: JSON.stringify({ model, prompt: "Hi", max_tokens: 1 }),
      }).then((r) => r.status);
    expect(await load(other)).toBe(200);
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await page.click("#new-chat");
    expect(await page.locator("#model option").allTextContents()).toContain(`${other} (loaded)`);
    // Another client loads a third model: the server holds two, so one of the others goes.
    const third = join(mkdtempSync(join(tmpdir(), "mlx-web-")), "tiny-third");
    writeTinyModel(third, { contextLength: 512, seed: 11 });
    expect(await load(third)).toBe(200);
    await answersInEightTokens(page);
    const loaded = (await stats(server)).models.map((m: { name: string }) => `${m.name} (loaded)`);
    expect(loaded).toContain(`${third} (loaded)`);
    const marked = (await page.locator("#model option").allTextContents()).filter((o) => o.endsWith(" (loaded)"));
    expect(marked.sort()).toEqual(loaded.sort());
    // The model the conversation used is still the one picked.
    expect(await page.locator("#model").inputValue()).toBe(longTinyModel());
    expect(errors).toEqual([]);
  }, 60_000);

  test("a conversation past the model's context leaves out its oldest turns, and says so", async () => {
    // The picker lists the models the server has loaded: this test's own, whatever ran before it.
    const load = { model: other, prompt: "Hi", max_tokens: 1 };
    const loaded = await fetch(`${server.url}/v1/completions`, { method: "POST", body: JSON.stringify(load) });
    expect(loaded.status).toBe(200);
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await page.click("#new-chat");
    await page.selectOption("#model", other); // a context of 512 tokens
    await setMaxTokens(page, "3");
    await send(page, "alpha ".repeat(300)); // ~330 tokens
    await page.locator(".message.assistant .figures").first().waitFor();
    // Both questions together are over the context: the first turn is left out.
    const requests: unknown[] = [];
    page.on("request", (r) => r.url().endsWith("/v1/chat/completions") && requests.push(r.postDataJSON()));
    await send(page, "beta ".repeat(300));
    // The note shows while the answer streams; the token count once it has ended.
    const figures = page
      .locator(".message.assistant")
      .nth(1)
      .locator(".figures", { hasText: /tokens/ });
    await figures.waitFor();
    expect(await figures.textContent()).toMatch(
      /^3 tokens · .* · the 2 oldest messages were left out to fit the model's context$/,
    );
    expect(requests.map((r) => (r as { messages: unknown[] }).messages.length)).toEqual([3, 1]);
    // The conversation itself keeps every message.
    expect(await page.locator(".message").count()).toBe(4);
    // The browser logs the 400 that said the conversation was too long; nothing else.
    expect(errors).toEqual(["Failed to load resource: the server responded with a status of 400 (Bad Request)"]);
  }, 60_000);

  test("a long conversation past the context is cut to fit in a few requests, not in one a turn", async () => {
    const load = { model: other, prompt: "Hi", max_tokens: 1 };
    expect((await fetch(`${server.url}/v1/completions`, { method: "POST", body: JSON.stringify(load) })).status).toBe(
      200,
    );
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    // 80 messages of some 25 tokens each: four times the 512 tokens of the model's context.
    const messages = Array.from({ length: 80 }, (_, i) =>
      i % 2 === 0
        ? { role: "user", content: `Question ${i}: ${"gamma ".repeat(20)}` }
        : { role: "assistant", content: `Answer ${i}: ${"delta ".repeat(20)}` },
    );
    await importConversation(page, { title: "Long talk", messages });
    await page.locator("#conversations li.current .open", { hasText: "Long talk" }).waitFor();
    await page.selectOption("#model", other);
    await setMaxTokens(page, "3");
    const sent: number[] = [];
    page.on("request", (r) => {
      if (r.url().endsWith("/v1/chat/completions")) sent.push(r.postDataJSON().messages.length);
    });
    await send(page, "And the last question?");
    const figures = page
      .locator(".message.assistant")
      .nth(40)
      .locator(".figures", { hasText: /tokens/ });
    await figures.waitFor();
    const leftOut = Number(/the (\d+) oldest messages were left out/.exec((await figures.textContent())!)![1]);
    // Was a request per turn left out: 30 and more, each a 400, before the answer began.
    expect(sent.length).toBeLessThanOrEqual(3);
    expect(sent.at(-1)).toBe(81 - leftOut);
    // Cut to what fits, not to the last question alone.
    expect(81 - leftOut).toBeGreaterThan(5);
    expect(errors.every((e) => e.includes("status of 400"))).toBe(true);
  }, 60_000);

  test("an answer the model's context cuts short says so; one cut by Max tokens does not", async () => {
    const load = { model: other, prompt: "Hi", max_tokens: 1 };
    expect((await fetch(`${server.url}/v1/completions`, { method: "POST", body: JSON.stringify(load) })).status).toBe(
      200,
    );
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await page.click("#new-chat");
    await page.selectOption("#model", other); // a context of 512 tokens
    await setMaxTokens(page, "3");
    await send(page, "gamma ".repeat(300)); // ~330 tokens
    const first = page.locator(".message.assistant").nth(0).locator(".figures");
    await first.waitFor();
    expect(await first.textContent()).toMatch(/^3 tokens · [^·]+ · [^·]+ · \d+ cached$/);
    // Greedy, with no Max tokens: the answer runs on until the context is full.
    await setMaxTokens(page, "");
    await page.fill("#temperature", "0");
    await send(page, "Go on");
    const second = page.locator(".message.assistant").nth(1).locator(".figures");
    await second.waitFor({ timeout: 60_000 });
    expect(await second.textContent()).toMatch(
      /^\d+ tokens · .* · cut off: the conversation has filled the model's context$/,
    );
    expect(errors).toEqual([]);
  }, 90_000);

  test("HTML in an answer shows as text and runs nothing", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    const answer =
      'Look: <script>window.pwned = 1</script> <img src="x" onerror="window.pwned = 2"> [click](javascript:window.pwned=3)\n\n<svg onload="window.pwned = 4"></svg>\n\n```js\nalert(1)\n```';
    const conversation = {
      title: "Hostile",
      model: "",
      messages: [
        { role: "user", content: "<b>bold?</b>" },
        { role: "assistant", content: answer },
      ],
    };
    await importConversation(page, conversation);
    await page.waitForSelector(".message.assistant .markdown pre");
    const markdown = page.locator(".message.assistant .markdown");
    expect(await markdown.textContent()).toContain("<script>window.pwned = 1</script>");
    expect(await markdown.textContent()).toContain('<img src="x" onerror="window.pwned = 2">');
    expect(await markdown.locator("script, img, svg, [onerror], [onload]").count()).toBe(0);
    expect(await markdown.locator("a[href^='javascript']").count()).toBe(0);
    expect(await page.locator(".message.user .body").textContent()).toBe("<b>bold?</b>");
    await page.click(".message.assistant .markdown a").catch(() => {});
    await Bun.sleep(200);
    expect(await page.evaluate("window.pwned")).toBeUndefined();
    expect(await page.locator("#conversations li.current .open").textContent()).toBe("Hostile");
    expect(errors).toEqual([]);
  }, 60_000);

  test("an answer's Markdown fetches nothing (images become links), its links open a new tab, and Copy buttons copy", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.context().grantPermissions(["clipboard-read", "clipboard-write"], { origin: server.url });
    await page.waitForSelector("body[data-ready]");
    const requests: string[] = [];
    page.on("request", (r) => requests.push(r.url()));
    const dot =
      "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==";
    const code = "def add(a, b):\n    return a + b";
    const answer = `A pixel ![tracker](https://cdn.example.com/p.png), a call ![x](/v1/models?from=image), a dot ![dot](${dot}) and [the dashboard](/dashboard).\n\n\`\`\`python\n${code}\n\`\`\``;
    const conversation = {
      title: "Links",
      model: "",
      messages: [
        { role: "user", content: "Hi" },
        { role: "assistant", content: answer },
      ],
    };
    await importConversation(page, conversation);
    const markdown = page.locator(".message.assistant .markdown");
    await markdown.locator("pre").waitFor();
    // Only the data: image is drawn; the others are links to where they point, and nothing was fetched.
    expect(await markdown.locator("img").evaluateAll((images) => images.map((i) => i.getAttribute("src")))).toEqual([
      dot,
    ]);
    expect(await markdown.locator("a", { hasText: "tracker" }).getAttribute("href")).toBe(
      "https://cdn.example.com/p.png",
    );
    await Bun.sleep(300);
    expect(requests.filter((url) => url.includes("cdn.example.com") || url.includes("from=image"))).toEqual([]);
    // Following a link leaves the chat where it is.
    const link = markdown.locator("a", { hasText: "the dashboard" });
    expect(await link.getAttribute("rel")).toBe("noopener noreferrer");
    const popup = page.waitForEvent("popup");
    await link.click();
    expect((await popup).url()).toBe(`${server.url}/dashboard`);
    expect(page.url()).toBe(`${server.url}/`);

    const clipboard = () => page.evaluate("navigator.clipboard.readText()");
    await page.getByRole("button", { name: "Copy code" }).click();
    expect(await clipboard()).toBe(`${code}\n`);
    expect(await page.getByRole("button", { name: "Copy code" }).textContent()).toBe("Copied");
    await page.getByRole("button", { name: "Copy answer" }).click();
    expect(await clipboard()).toBe(answer);
    expect(errors).toEqual([]);
  }, 60_000);

  test("Send and Stop used with the mouse hand the focus back to the message box", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await page.click("#new-chat");
    await setMaxTokens(page, "");
    // Greedy, so that the answer runs on until stopped rather than end by chance.
    await page.fill("#temperature", "0");
    await page.fill("#input", "Tell me a long story");
    await page.click("#send");
    // A loaded machine may be slow to start the answer.
    await page.locator(".message.assistant.streaming .markdown").filter({ hasText: /\S/ }).waitFor({ timeout: 60_000 });
    expect(await page.evaluate("document.activeElement?.id")).toBe("input");
    // Screen readers are told to wait for the answer rather than read every redraw of it.
    expect(await page.locator("#messages").getAttribute("aria-busy")).toBe("true");
    await page.click("#stop");
    await page.locator(".message.assistant .figures", { hasText: "stopped" }).waitFor();
    expect(await page.evaluate("document.activeElement?.id")).toBe("input");
    expect(await page.locator("#messages").getAttribute("aria-busy")).toBe("false");
    expect(errors).toEqual([]);
  }, 120_000);

  test("with the keyboard, Tab reaches the rename, export and delete buttons of any conversation", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    for (const title of ["First", "Second"])
      await importConversation(page, { title, messages: [{ role: "user", content: title }] });
    await page.locator("#conversations li.current .open", { hasText: "Second" }).waitFor();
    // The open one is told apart by more than its colour.
    expect(await page.locator("#conversations [aria-current='true']").allTextContents()).toEqual(["Second"]);
    // "First" is not the open conversation: its buttons show only while it is hovered or focused.
    await page.locator("#conversations .open", { hasText: "First" }).focus();
    const focused = () => page.evaluate("document.activeElement?.getAttribute('aria-label')");
    for (const label of ["rename", "export", "delete"]) {
      await page.keyboard.press("Tab");
      expect(await focused()).toBe(label);
    }
    expect(errors).toEqual([]);
  }, 30_000);

  test("conversations are renamed, exported as JSON and deleted; reasoning is folded; regenerate and edit the last question", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    const imported = {
      title: "Thinking",
      model: longTinyModel(),
      messages: [
        { role: "user", content: "Why?" },
        { role: "assistant", content: "<think>Because of reasons.</think>The answer is **42**." },
      ],
    };
    await importConversation(page, imported);
    await page.waitForSelector("#conversations li.current");
    // Reasoning: folded, apart from the answer.
    const reasoning = page.locator(".message.assistant details.reasoning");
    expect(await reasoning.evaluate((d) => (d as unknown as { open: boolean }).open)).toBe(false);
    expect(await reasoning.locator("div").textContent()).toBe("Because of reasons.");
    expect((await page.locator(".message.assistant .markdown").textContent())!.trim()).toBe("The answer is 42.");
    expect(await page.locator(".message.assistant .markdown strong").textContent()).toBe("42");

    page.once("dialog", (d) => d.accept("Renamed"));
    await page.click("#conversations li.current .rename");
    await page.locator("#conversations li.current .open", { hasText: "Renamed" }).waitFor();
    const download = page.waitForEvent("download");
    await page.click("#conversations li.current .export");
    const exported = JSON.parse(await Bun.file((await (await download).path())!).text());
    expect(exported.title).toBe("Renamed");
    expect(exported.messages).toEqual(imported.messages);

    await setMaxTokens(page, "5");
    await page.click(".message.assistant .regenerate");
    await page.waitForSelector(".message.assistant .figures");
    expect(await page.locator(".message").count()).toBe(2);
    expect(await page.locator(".message.assistant .figures").textContent()).toMatch(/^5 tokens/);
    expect(await page.locator(".message.assistant details.reasoning").count()).toBe(0);

    await page.click(".message.user .edit");
    expect(await page.locator("#input").inputValue()).toBe("Why?");
    await eventually(async () => (await page.locator(".message").count()) === 0);
    // An edit not sent changes nothing: the reloaded conversation still has its turn.
    await page.reload();
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator(".message.user .body").allTextContents()).toEqual(["Why?"]);
    expect(await page.locator(".message.assistant .figures").textContent()).toMatch(/^5 tokens/);
    // Sent changed, it replaces the turn.
    await page.click(".message.user .edit");
    await page.fill("#input", "Why not?");
    await page.press("#input", "Enter");
    await page.locator(".message.assistant .figures", { hasText: /^5 tokens/ }).waitFor();
    await page.reload();
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator(".message.user .body").allTextContents()).toEqual(["Why not?"]);
    expect(await page.locator(".message").count()).toBe(2);

    page.once("dialog", (d) => d.accept());
    await page.click("#conversations li.current .delete");
    await page.locator("#conversations .open", { hasText: "Renamed" }).waitFor({ state: "detached" });
    await page.reload();
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator("#conversations .open").allTextContents()).not.toContain("Renamed");
    expect(errors).toEqual([]);
  }, 60_000);

  test("a conversation's title, cut from its first question, keeps whole characters", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await page.click("#new-chat");
    await setMaxTokens(page, "1");
    // The emoji (two UTF-16 units) straddles the title's 48th character: cut there, half of it showed as "�".
    const question = `${"a".repeat(47)}😀 and more`;
    await send(page, question);
    await page.waitForSelector(".message.assistant .figures");
    expect(await page.locator("#conversations li.current .open").textContent()).toBe(`${"a".repeat(47)}😀`);
    expect(errors).toEqual([]);
  }, 30_000);

  test("a title in any script names its exported file", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await importConversation(page, { title: "Imported", messages: [{ role: "user", content: "Hi" }] });
    await page.locator("#conversations li.current .open", { hasText: "Imported" }).waitFor();
    // A title with no ASCII letter was exported as "_.json", every one of them.
    page.once("dialog", (d) => d.accept("Привет, мир 日本"));
    await page.click("#conversations li.current .rename");
    await page.locator("#conversations li.current .open", { hasText: "Привет" }).waitFor();
    const download = page.waitForEvent("download");
    await page.click("#conversations li.current .export");
    expect((await download).suggestedFilename()).toBe("Привет_мир_日本.json");
    expect(errors).toEqual([]);
  }, 30_000);

  test("a file that is no exported conversation is refused with a message saying why, and leaves the page working", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    const alerts: string[] = [];
    page.on("dialog", (d) => {
      alerts.push(d.message());
      void d.accept();
    });
    // Figures not as the page writes them (hand-edited, or from another tool): drawn, they threw,
    // and the conversation, saved and reopened at each load, kept the page from starting.
    await importConversation(page, {
      title: "Odd figures",
      messages: [
        { role: "user", content: "Hi" },
        { role: "assistant", content: "Hello", stats: { tokens: 5 } },
      ],
    });
    await importConversation(page, { title: "No messages", messages: "Hi" as unknown as unknown[] });
    await eventually(() => alerts.length === 2);
    expect(alerts).toEqual([
      "Cannot import Odd figures.json: message 2 has stats that are not the figures this page exports",
      "Cannot import No messages.json: not an exported conversation (no messages)",
    ]);
    await page.reload();
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator("#conversations .open", { hasText: "Odd figures" }).count()).toBe(0);
    expect(errors).toEqual([]);
  }, 30_000);

  test("structured output: the answer follows the JSON Schema pasted in the settings", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await page.click("#new-chat");
    await setMaxTokens(page, "60");
    await page.fill("#temperature", "0");
    await page.check("#structured");
    const schema = {
      type: "object",
      properties: { color: { enum: ["red", "green", "blue"] } },
      required: ["color"],
      additionalProperties: false,
    };
    await page.getByRole("textbox", { name: "JSON Schema" }).fill(JSON.stringify(schema));
    const request = page.waitForRequest((r) => r.url().endsWith("/v1/chat/completions"));
    await send(page, "Pick a color");
    expect((await request).postDataJSON().response_format).toEqual({
      type: "json_schema",
      json_schema: { name: "answer", schema },
    });
    await page.waitForSelector(".message.assistant .figures");
    const answer = JSON.parse((await page.locator(".message.assistant .markdown").textContent())!);
    expect(["red", "green", "blue"]).toContain(answer.color);
    expect(Object.keys(answer)).toEqual(["color"]);
    // A schema that is not JSON is said so, without a request.
    await page.fill("#schema", "{not json");
    await send(page, "Again");
    await page
      .locator(".message.assistant")
      .nth(1)
      .locator(".figures", { hasText: /^the JSON Schema is not valid JSON/ })
      .waitFor();
    expect(errors).toEqual([]);
  }, 60_000);

  test("at phone width the conversation list is a drawer", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`, { width: 390, height: 800 });
    await page.waitForSelector("body[data-ready]");
    const sidebar = async () => (await page.locator("#sidebar").boundingBox())!;
    expect((await sidebar()).x + (await sidebar()).width).toBeLessThanOrEqual(1);
    await page.click("#toggle-sidebar");
    await eventually(async () => (await sidebar()).x >= 0);
    await page.click("#new-chat");
    await eventually(async () => (await sidebar()).x + (await sidebar()).width <= 1);
    const input = (await page.locator("#input").boundingBox())!;
    expect(input.x + input.width).toBeLessThanOrEqual(390);

    // A question without spaces wraps, and a wide table scrolls by itself: the page does not.
    const table = `| ${"column | ".repeat(20)}\n|${"---|".repeat(20)}\n| ${"cell | ".repeat(20)}`;
    const wide = {
      title: "Wide",
      messages: [
        { role: "user", content: "word".repeat(200) },
        { role: "assistant", content: table },
      ],
    };
    await importConversation(page, wide);
    await page.locator(".message.assistant .markdown table").waitFor();
    expect(await page.locator("#messages").evaluate((m) => m.scrollWidth - m.clientWidth)).toBe(0);
    const cell = (await page.locator(".message.assistant th").first().boundingBox())!;
    expect(cell.height).toBeLessThan(40); // one line, not a letter a line
    expect(await page.locator(".message.assistant table").evaluate((t) => t.scrollWidth > t.clientWidth)).toBe(true);
    expect(errors).toEqual([]);
  }, 30_000);

  test("the dashboard follows load from the openai client: series advance, running matches /stats", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/dashboard`);
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "none", maxRetries: 0 });
    const controller = new AbortController();
    const load = Array.from({ length: 16 }, async () => {
      const stream = await client.chat.completions.create(
        { model: longTinyModel(), messages: [{ role: "user", content: "Count to a thousand" }], stream: true },
        { signal: controller.signal },
      );
      try {
        for await (const _ of stream);
      } catch {
        // aborted at the end of the test
      }
    });
    try {
      await eventually(async () => (await stats(server)).queue.running === 16, 30_000);
      const points = () => page.locator(".chart[data-title='Output tokens']").getAttribute("data-points").then(Number);
      const start = await points();
      // The page keeps up: its figure matches /stats while the 16 streams run.
      await eventually(async () => (await page.locator("#running").textContent()) === "16", 10_000);
      expect((await stats(server)).queue.running).toBe(16);
      await eventually(async () => (await page.locator("#in-flight tbody tr").count()) === 16, 5000);
      await eventually(async () => (await points()) >= start + 2, 10_000);
      expect(Number(await page.locator("#tokens-per-second").textContent())).toBeGreaterThan(0);
      // One panel per loaded model (both of this server's).
      expect(await page.locator(".model-panel h2").allTextContents()).toContain(longTinyModel());
      expect(
        await page
          .locator(".model-panel .chart[data-title='Decode batch']")
          .first()
          .getAttribute("data-points")
          .then(Number),
      ).toBeGreaterThan(0);
      expect(await page.locator("#models tbody tr td:first-child").allTextContents()).toContain(longTinyModel());
      // Sizes in the decimal units of /stats' bytes, as `mlx list` and Ollama show them (not MiB called MB).
      const weights = (await stats(server)).models.find((m: any) => m.name === longTinyModel()).weight_bytes;
      const row = page.locator("#models tbody tr", { hasText: longTinyModel() });
      expect(await row.locator("td").nth(1).textContent()).toBe(formatBytes(weights));
    } finally {
      controller.abort();
      await Promise.all(load);
    }
    await eventually(async () => (await page.locator("#running").textContent()) === "0", 10_000);
    expect(errors).toEqual([]);
  }, 120_000);

  test("the dashboard counts down to a model's unload by the server's clock, not the browser's", async () => {
    // Loaded by a request, the other model unloads once idle for the keep-alive (5 minutes).
    const loaded = await fetch(`${server.url}/v1/completions`, {
      method: "POST",
      body: JSON.stringify({ model: other, prompt: "Hi", max_tokens: 1 }),
    });
    expect(loaded.status).toBe(200);
    // Opened on a machine whose clock is an hour ahead of the server's.
    const { page, errors } = await openPage(browser, `${server.url}/dashboard`, {
      now: new Date(Date.now() + 3600_000),
    });
    const unloadsIn = page.locator("#models tbody tr", { hasText: other }).locator("td").nth(4);
    await unloadsIn.filter({ hasText: /^\d+ s$/ }).waitFor();
    const seconds = Number(/^(\d+) s$/.exec((await unloadsIn.textContent())!)![1]);
    // What /stats says is left of the 300 s (was "0 s": the server's expires_at against the browser's clock).
    expect(seconds).toBeGreaterThan(60);
    expect(seconds).toBeLessThanOrEqual(300);
    expect(errors).toEqual([]);
  }, 30_000);

  test("the dashboard's time axis spans a minute from its first point, not years", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/dashboard`);
    const chart = page.locator(".chart[data-title='Output tokens'][data-points='1']");
    await chart.waitFor();
    // uPlot draws on a canvas: the page keeps the time axis' range in data attributes.
    const [from, to] = [
      Number(await chart.getAttribute("data-time-from")),
      Number(await chart.getAttribute("data-time-to")),
    ];
    const time = ((await page.evaluate("Date.now()")) as number) / 1000;
    // The first point is the server's time now: the axis starts there and spans a minute, not the
    // years uPlot padded a range of one point by (2027, 2028, 2029 on the axis).
    expect(Math.abs(from - time)).toBeLessThan(120);
    expect(to - from).toBe(60);
    expect(errors).toEqual([]);
  }, 30_000);

  test("behind a proxy that serves the server under /mlx/, the chat answers and the dashboard follows", async () => {
    // A reverse proxy as nginx's `location /mlx/ { proxy_pass http://server/; }`: the prefix
    // is cut off on the way in; responses, streams among them, pass through unchanged.
    const proxy = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      async fetch(request) {
        const url = new URL(request.url);
        if (!url.pathname.startsWith("/mlx/")) return new Response("not proxied", { status: 404 });
        const upstream = `${server.url}${url.pathname.slice("/mlx".length)}${url.search}`;
        const headers = new Headers(request.headers);
        headers.delete("host");
        // Compressed bodies pass as they are, with their Content-Encoding and length.
        return fetch(upstream, {
          method: request.method,
          headers,
          body: request.body,
          redirect: "manual",
          decompress: false,
        });
      },
    });
    try {
      const { page, errors } = await openPage(browser, `http://127.0.0.1:${proxy.port}/mlx/`);
      const outside: string[] = [];
      page.on("request", (r) => {
        if (!new URL(r.url()).pathname.startsWith("/mlx/")) outside.push(r.url());
      });
      await answersInEightTokens(page);
      await page.click("a[href='dashboard']");
      await page.waitForURL(`http://127.0.0.1:${proxy.port}/mlx/dashboard`);
      await eventually(async () => Number(await page.locator("#loaded").textContent()) >= 1, 10_000);
      expect(outside).toEqual([]);
      expect(errors).toEqual([]);
    } finally {
      proxy.stop(true);
    }
  }, 60_000);
});

describe.skipIf(!chromiumPath)("in Chromium, behind a proxy that cuts an answer short", () => {
  test("an answer whose stream ends before the server's [DONE] says the connection was lost, and the server stops it", async () => {
    const server = serve({ defaultModel: longTinyModel() });
    // Passes everything on, but ends an answer's stream after its first few events, as if whole
    // (as a proxy's read timeout can): the page gets no error, only a stream that ends.
    const proxy = Bun.serve({
      port: 0,
      hostname: "127.0.0.1",
      async fetch(request) {
        const url = new URL(request.url);
        const headers = new Headers(request.headers);
        headers.delete("host");
        const upstream = await fetch(`${server.url}${url.pathname}${url.search}`, {
          method: request.method,
          headers,
          body: request.body,
          decompress: false,
        });
        if (!url.pathname.endsWith("/v1/chat/completions") || !upstream.ok) return upstream;
        const reader = upstream.body!.getReader();
        let events = 0;
        const cut = new ReadableStream<Uint8Array>({
          async pull(controller) {
            const { done, value } = await reader.read();
            if (done) return controller.close();
            controller.enqueue(value);
            events += new TextDecoder().decode(value).split("\n\n").length - 1;
            if (events >= 5) {
              await reader.cancel();
              controller.close();
            }
          },
        });
        return new Response(cut, { status: upstream.status, headers: upstream.headers });
      },
    });
    const browser = await launchBrowser();
    try {
      await eventually(async () => (await fetch(`${server.url}/health`)).status === 200, 60_000);
      const { page, errors } = await openPage(browser, `http://127.0.0.1:${proxy.port}/`);
      await page.waitForSelector("body[data-ready]");
      await setMaxTokens(page, "200");
      await send(page, "Tell me a story");
      // Was no note at all: the first words of the answer, shown as if it were the whole of it.
      const figures = page.locator(".message.assistant .figures");
      await figures.waitFor();
      expect(await figures.textContent()).toBe("error: the connection to the server was lost");
      expect(await page.locator(".message.assistant .markdown").textContent()).not.toBe("");
      await eventually(async () => (await stats(server)).queue.running === 0, 10_000);
      expect(errors).toEqual([]);
    } finally {
      await browser.close();
      proxy.stop(true);
      await server.stop();
    }
  }, 60_000);
});

describe.skipIf(!chromiumPath)("in Chromium, a model that reasons", () => {
  /** DeepSeek-R1-style: the prompt opens <think>, so random weights reason until the answer's end. */
  const thinkingTemplate =
    "{%- for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{%- endfor %}" +
    "{%- if add_generation_prompt %}<|im_start|>assistant\n<think>\n{%- endif %}";
  let browser: Browser;
  let server: RunningServer;
  beforeAll(async () => {
    const thinker = join(mkdtempSync(join(tmpdir(), "mlx-web-")), "thinker");
    writeTinyModel(thinker, { contextLength: 4096, chatTemplate: thinkingTemplate });
    ({ browser, server } = await browserAndServer(serve({ defaultModel: thinker })));
  }, 90_000);
  afterAll(() => closeBoth(browser, server));

  test("the reasoning opened while it streams stays open as it grows and after; the next question goes without it", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await setMaxTokens(page, "2000");
    await page.fill("#temperature", "0");
    await send(page, "Think hard");
    const reasoning = page.locator(".message.assistant details.reasoning");
    const reasoningLength = async () => ((await reasoning.locator("div").textContent()) ?? "").length;
    await eventually(async () => (await reasoningLength()) > 0, 30_000);
    expect(await reasoning.locator("summary").textContent()).toBe("Reasoning…");
    // Opened as a person clicks: a press, then a release a moment later, while tokens keep coming.
    let box: { x: number; y: number; height: number } | null = null;
    await eventually(async () => (box = await reasoning.locator("summary").boundingBox()) !== null);
    await page.mouse.move(box!.x + 10, box!.y + box!.height / 2);
    await page.mouse.down();
    await Bun.sleep(150);
    await page.mouse.up();
    const opened = await reasoningLength();
    await eventually(async () => (await reasoningLength()) > opened + 100, 30_000);
    expect(await page.locator(".message.assistant.streaming").count()).toBe(1);
    expect(await reasoning.evaluate((d) => (d as unknown as { open: boolean }).open)).toBe(true);
    // Ended inside its reasoning (at Max tokens): open still, and no longer said to be going on.
    await page.locator(".message.assistant .figures").waitFor({ timeout: 60_000 });
    expect(await reasoning.evaluate((d) => (d as unknown as { open: boolean }).open)).toBe(true);
    expect(await reasoning.locator("summary").textContent()).toBe("Reasoning");

    // Earlier answers go back to the model without their reasoning.
    await importConversation(page, {
      title: "Reasoned",
      messages: [
        { role: "user", content: "Why?" },
        { role: "assistant", content: "<think>Because of reasons.</think>The answer is 42." },
      ],
    });
    await page.locator("#conversations li.current .open", { hasText: "Reasoned" }).waitFor();
    await setMaxTokens(page, "3");
    const request = page.waitForRequest((r) => r.url().endsWith("/v1/chat/completions"));
    await send(page, "And then?");
    expect((await request).postDataJSON().messages).toEqual([
      { role: "user", content: "Why?" },
      { role: "assistant", content: "The answer is 42." },
      { role: "user", content: "And then?" },
    ]);
    await page.locator(".message.assistant").nth(1).locator(".figures").waitFor();
    expect(errors).toEqual([]);
  }, 120_000);
});

describe.skipIf(!chromiumPath)("in Chromium, a model whose alias sets its answer length (num_predict)", () => {
  const savedHome = process.env.MLX_HOME;
  let browser: Browser;
  let server: RunningServer;
  beforeAll(async () => {
    const model = longTinyModel(); // a context of 4096 tokens
    process.env.MLX_HOME = join(mkdtempSync(join(tmpdir(), "mlx-web-")), "home");
    mkdirSync(process.env.MLX_HOME);
    // Greedy: a sampled answer from random weights could end by its own end token at the fifth.
    writeFileSync(
      join(process.env.MLX_HOME, "models.toml"),
      `[models.brief]\nsource = "${model}"\nnum_predict = 5\ntemperature = 0\n`,
    );
    ({ browser, server } = await browserAndServer(serve({ defaultModel: "brief" })));
  }, 90_000);
  afterAll(async () => {
    await closeBoth(browser, server);
    if (savedHome === undefined) delete process.env.MLX_HOME;
    else process.env.MLX_HOME = savedHome;
  });

  test("an answer cut at that length says so, not that the conversation has filled the context", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator("#model").inputValue()).toBe("brief");
    await send(page, "Hi");
    const figures = page.locator(".message.assistant .figures");
    await figures.waitFor();
    expect(await figures.textContent()).toMatch(
      /^5 tokens · .* · cut off at the model's answer length \(its num_predict\): set Max tokens for longer answers$/,
    );
    expect(errors).toEqual([]);
  }, 60_000);
});

describe.skipIf(!chromiumPath)("in Chromium, a model being loaded", () => {
  test("the dashboard counts the requests waiting for their model, as /stats does (they are in no queue yet)", async () => {
    // The load waits until the test lets it go: the requests wait for their model meanwhile.
    let letLoad = () => {};
    const server = serve({
      loadModel: async (path) => (await new Promise<void>((go) => (letLoad = go)), loadModelAsync(path)),
    });
    const browser = await launchBrowser();
    try {
      const { page, errors } = await openPage(browser, `${server.url}/dashboard`);
      await page.locator("#waiting-for-model", { hasText: /^0$/ }).waitFor();
      const answers = Array.from({ length: 2 }, () =>
        post(`${server.url}/v1/completions`, { model: longTinyModel(), prompt: "Hi", max_tokens: 1 }),
      );
      await eventually(async () => (await stats(server)).queue.waiting_for_model === 2, 10_000);
      // Was nothing at all: running, waiting and the requests in flight are all 0 while a model loads.
      await page.locator("#waiting-for-model", { hasText: /^2$/ }).waitFor();
      expect(await page.locator("#running").textContent()).toBe("0");
      letLoad();
      expect((await Promise.all(answers)).map((a) => a.status)).toEqual([200, 200]);
      await page.locator("#waiting-for-model", { hasText: /^0$/ }).waitFor();
      expect(errors).toEqual([]);
    } finally {
      await closeBoth(browser, server);
    }
  }, 60_000);
});

describe.skipIf(!chromiumPath)("in Chromium, a server that stops", () => {
  test("the dashboard says it is disconnected and stops showing the last figures as current", async () => {
    const server = serve({ defaultModel: longTinyModel() });
    const browser = await launchBrowser();
    try {
      const { page, errors } = await openPage(browser, `${server.url}/dashboard`);
      await page.locator("#running", { hasText: /^0$/ }).waitFor();
      await page.locator("#loaded", { hasText: /^1$/ }).waitFor();
      const points = () => page.locator(".chart[data-title='Requests']").getAttribute("data-points").then(Number);
      const before = await points();
      await server.stop();
      await page.locator("#status", { hasText: /^disconnected/ }).waitFor();
      // One point of no values: the line breaks there, not joining the figures either side of the outage.
      expect(await points()).toBe(before + 1);
      expect(await page.locator("#tiles strong").allTextContents()).toEqual(Array(7).fill("–"));
      expect(await page.locator("#in-flight tbody").textContent()).toBe("unknown while disconnected");
      // Nor the models it had loaded (a restarted server has loaded none of them).
      expect(await page.locator("#models tbody").textContent()).toBe("unknown while disconnected");
      // The note spans the table's four columns, no more.
      expect(await page.locator("#in-flight tbody td").getAttribute("colspan")).toBe("4");
      // Retrying, it says why in words, not the browser's "Failed to fetch".
      await page
        .locator("#status", {
          hasText: /^disconnected: cannot reach the server \(is mlx serve running\?\); retrying…$/,
        })
        .waitFor();
      expect(await points()).toBe(before + 1); // one break, not one a retry
      // The feed cut off, then reconnecting to a server that is gone: the browser logs those fetches.
      expect(
        errors.filter((e) => !/ERR_(CONNECTION_REFUSED|INCOMPLETE_CHUNKED_ENCODING)|Failed to fetch/.test(e)),
      ).toEqual([]);
    } finally {
      await browser.close();
      await server.stop();
    }
  }, 60_000);
});

describe.skipIf(!chromiumPath)("in Chromium, a model whose template wants turns to alternate", () => {
  test("a question whose answer was stopped before any text does not leave the conversation unusable", async () => {
    // As Gemma's and Mistral's templates do: a user message after a user message is refused.
    const strict = join(mkdtempSync(join(tmpdir(), "mlx-web-")), "tiny-strict");
    writeTinyModel(strict, {
      chatTemplate:
        "{%- for m in messages -%}{%- if (m['role'] == 'user') != (loop.index0 % 2 == 0) -%}" +
        "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{%- endif -%}" +
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{%- endfor -%}" +
        "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}",
    });
    const { browser, server } = await browserAndServer(serve({ defaultModel: strict }));
    try {
      const { page, errors } = await openPage(browser, `${server.url}/`);
      await page.waitForSelector("body[data-ready]");
      // As the page saves an answer stopped (or cut by a lost connection) before its first token.
      await importConversation(page, {
        title: "Stopped early",
        messages: [
          { role: "user", content: "First question" },
          { role: "assistant", content: "", note: "stopped" },
        ],
      });
      await page.locator("#conversations li.current .open", { hasText: "Stopped early" }).waitFor();
      await setMaxTokens(page, "3");
      const request = page.waitForRequest((r) => r.url().endsWith("/v1/chat/completions"));
      await send(page, "Second question");
      // The unanswered question goes with its empty answer: sent alone, it made two user turns in a row.
      expect((await request).postDataJSON().messages.map((m: { role: string }) => m.role)).toEqual(["user"]);
      await page.locator(".message.assistant").nth(1).locator(".figures").waitFor();
      expect(await page.locator(".message.assistant").nth(1).locator(".figures").textContent()).toMatch(/^3 tokens/);
      expect(errors).toEqual([]);
    } finally {
      await closeBoth(browser, server);
    }
  }, 60_000);
});

describe.skipIf(!chromiumPath)("in Chromium, a server with no model", () => {
  test("the page says there is none to chat with and how to get one, not that 'model' must not be empty", async () => {
    // No -m, and a store of its own, empty.
    const home = process.env.MLX_HOME;
    process.env.MLX_HOME = mkdtempSync(join(tmpdir(), "mlx-web-empty-"));
    const started = startServe(undefined).finally(() => (process.env.MLX_HOME = home));
    const { proc, url } = await started;
    const browser = await launchBrowser();
    try {
      const { page, errors } = await openPage(browser, `${url}/`);
      await page.waitForSelector("body[data-ready]");
      expect(await page.locator("#model option").count()).toBe(0);
      expect(await page.locator("#notice").textContent()).toBe(
        "This server has no model to chat with: store one (mlx pull smollm2), or start mlx serve with -m MODEL.",
      );
      expect(errors).toEqual([]);
    } finally {
      await browser.close();
      proc.kill();
      await proc.exited;
    }
  }, 60_000);
});

describe.skipIf(!chromiumPath)("in Chromium, at an address that is not localhost, over http", () => {
  test("the chat starts and answers, without the APIs browsers keep to secure origins", async () => {
    // As at http://<LAN address> (mlx serve --host 0.0.0.0): a name the browser resolves to this
    // machine is not a secure origin, so crypto.randomUUID, the Clipboard API and Web Locks are missing.
    const server = serve({ defaultModel: longTinyModel(), allowedHosts: ["mlx.test"] });
    const browser = await launchBrowser(["--host-resolver-rules=MAP mlx.test 127.0.0.1"]);
    try {
      await eventually(async () => (await fetch(`${server.url}/health`)).status === 200, 60_000);
      const { page, errors } = await openPage(browser, server.url.replace("127.0.0.1", "mlx.test") + "/");
      await page.waitForSelector("body[data-ready]");
      expect(await page.evaluate("[isSecureContext, typeof crypto.randomUUID, typeof navigator.locks]")).toEqual([
        false,
        "undefined",
        "undefined",
      ]);
      await answersInEightTokens(page);
      await page.click(".message.assistant .regenerate");
      await page.locator(".message.assistant .figures", { hasText: /^8 tokens/ }).waitFor();
      await page.reload();
      await page.waitForSelector("body[data-ready]");
      expect(await page.locator(".message.user .body").textContent()).toBe("Hi");
      // Chromium says that it ignores the Cross-Origin-Opener-Policy header off secure origins; nothing else.
      expect(errors.filter((e) => !e.startsWith("The Cross-Origin-Opener-Policy header has been ignored"))).toEqual([]);
    } finally {
      await browser.close();
      await server.stop();
    }
  }, 90_000);
});

describe.skipIf(!chromiumPath)("in Chromium, a server killed mid-answer", () => {
  test("the answer says the connection was lost, the next question that the server cannot be reached, and nothing spins", async () => {
    const { proc, url } = await startServe(longTinyModel());
    const browser = await launchBrowser();
    try {
      const { page, errors } = await openPage(browser, `${url}/`);
      await page.waitForSelector("body[data-ready]");
      await setMaxTokens(page, "");
      await page.fill("#temperature", "0");
      await send(page, "Tell me a long story");
      await page.locator(".message.assistant.streaming .markdown").filter({ hasText: /\S/ }).waitFor();
      // Killed, as by the OOM killer or a crash: the stream stops without a word.
      proc.kill("SIGKILL");
      const figures = page.locator(".message.assistant .figures");
      await figures.waitFor();
      expect(await figures.textContent()).toBe("error: the connection to the server was lost");
      expect(await page.locator("body.running, .streaming").count()).toBe(0);
      await send(page, "Are you there?");
      await page.locator(".message.assistant").nth(1).locator(".figures").waitFor();
      expect(await page.locator(".message.assistant").nth(1).locator(".figures").textContent()).toBe(
        "error: cannot reach the server (is mlx serve running?)",
      );
      expect(await page.locator("body.running, .streaming").count()).toBe(0);
      // The browser logs the cut stream and the refused connections (or reset, from a server
      // still dying when the page lists the models after the cut answer); nothing else.
      expect(
        errors.filter((e) => !/ERR_(CONNECTION_REFUSED|CONNECTION_RESET|INCOMPLETE_CHUNKED_ENCODING)/.test(e)),
      ).toEqual([]);
    } finally {
      await browser.close();
      proc.kill("SIGKILL");
    }
  }, 60_000);
});

describe.skipIf(!chromiumPath)(
  "in Chromium, with --api-key, a server that stops while the page asks for the key",
  () => {
    test("the page says it cannot list the models, and the conversation drawn after does not hide that", async () => {
      const server = serve({ apiKey: "gone-key" });
      const browser = await launchBrowser();
      try {
        const { page, errors } = await openPage(browser, `${server.url}/`);
        await page.waitForSelector("#key-dialog[open]");
        await server.stop();
        await page.fill("#key-dialog input", "gone-key");
        await page.press("#key-dialog input", "Enter");
        await page.waitForSelector("body[data-ready]");
        expect(await page.getByRole("alert").textContent()).toBe(
          "Cannot list the models: cannot reach the server (is mlx serve running?)",
        );
        expect(errors.filter((e) => !/401|ERR_CONNECTION_REFUSED/.test(e))).toEqual([]);
      } finally {
        await browser.close();
        await server.stop();
      }
    }, 60_000);
  },
);

describe.skipIf(!chromiumPath)("in Chromium, with --api-key", () => {
  const key = "browser-key-456";
  let browser: Browser;
  let server: RunningServer;
  beforeAll(async () => {
    server = serve({ defaultModel: longTinyModel(), apiKey: key });
    browser = await launchBrowser();
  }, 60_000);
  afterAll(async () => {
    await browser?.close();
    await server?.stop();
  });

  test("the key dialog closed without a key (Esc) stays closed: the page says the key is needed, and asks again only when the user acts", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.evaluate(countKeyQuestions);
    await page.waitForSelector("#key-dialog[open]");
    await page.keyboard.press("Escape");
    // Was asked again at once: a dialog that could not be closed, over the whole page.
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator("#key-dialog[open]").count()).toBe(0);
    expect(await page.getByRole("alert").textContent()).toBe("Cannot list the models: this server needs an API key");
    // A question asks for the key again; closed without one (Esc), the question fails saying why:
    // Esc closes the dialog, and does not also stop the answer ("stopped").
    await setMaxTokens(page, "4");
    await send(page, "Hi");
    await page.waitForSelector("#key-dialog[open]");
    await page.evaluate(`document.querySelector("#notice").textContent = ""`);
    await page.keyboard.press("Escape");
    await page.locator(".message.assistant .figures").waitFor();
    expect(await page.locator(".message.assistant .figures").textContent()).toBe("error: this server needs an API key");
    expect(await page.locator("body.running").count()).toBe(0);
    // The models listed anew after the answer fail, saying why, without asking a second time.
    await page.getByRole("alert").filter({ hasText: "Cannot list the models: this server needs an API key" }).waitFor();
    expect(await page.locator("#key-dialog[open]").count()).toBe(0);
    expect(await page.evaluate("window.keyQuestions")).toBe(2);
    // Asked for by the user, with the "API key" button: given the key, the page works.
    await page.getByRole("button", { name: "API key" }).click();
    await page.waitForSelector("#key-dialog[open]");
    await page.fill("#key-dialog input", key);
    await page.press("#key-dialog input", "Enter");
    await page.locator("#notice").waitFor({ state: "hidden" });
    await page.click(".message.assistant .regenerate");
    await page.locator(".message.assistant .figures", { hasText: /^4 tokens/ }).waitFor();
    expect(await page.evaluate("window.keyQuestions")).toBe(3);
    expect(errors.filter((e) => !e.includes("401"))).toEqual([]);
  }, 60_000);

  test("the key kept in this browser can be changed and forgotten, on the chat page and on the dashboard", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("#key-dialog[open]");
    await page.fill("#key-dialog input", key);
    await page.press("#key-dialog input", "Enter");
    await page.locator("#notice").waitFor({ state: "hidden" });
    // Changed, to a wrong key: the server refuses it, and the page says so.
    await page.getByRole("button", { name: "API key" }).click();
    await page.fill("#key-dialog input", "wrong-key");
    await page.press("#key-dialog input", "Enter");
    await page.locator("#key-dialog[open] .key-wrong").waitFor();
    await page.fill("#key-dialog input", key);
    await page.press("#key-dialog input", "Enter");
    await page.locator("#notice").waitFor({ state: "hidden" });
    expect(await page.evaluate(() => localStorage.getItem("mlx.apiKey"))).toBe(key);
    // Forgotten (a shared machine): gone from this browser, and the page says the key is needed.
    await page.getByRole("button", { name: "API key" }).click();
    await page.getByRole("button", { name: "Forget the key kept in this browser" }).click();
    await page.getByRole("alert").filter({ hasText: "Cannot list the models: this server needs an API key" }).waitFor();
    expect(await page.evaluate(() => localStorage.getItem("mlx.apiKey"))).toBeNull();
    expect(await page.locator("#key-dialog[open]").count()).toBe(0);

    // The dashboard: closed without a key, it does not ask again at each reconnection (every 2 s).
    await page.goto(`${server.url}/dashboard`);
    await page.evaluate(countKeyQuestions);
    let refused = 0;
    page.on("response", (r) => {
      if (r.url().endsWith("/dashboard/events") && r.status() === 401) refused++;
    });
    await page.waitForSelector("#key-dialog[open]");
    await page.keyboard.press("Escape");
    await eventually(async () => refused >= 3, 15_000);
    await page.locator("#status", { hasText: "this server needs an API key" }).waitFor();
    expect(await page.locator("#key-dialog[open]").count()).toBe(0);
    expect(await page.evaluate("window.keyQuestions")).toBe(1);
    // Given with the "API key" button, it follows the server; forgotten, it stops.
    await page.getByRole("button", { name: "API key" }).click();
    await page.fill("#key-dialog input", key);
    await page.press("#key-dialog input", "Enter");
    await page.locator("#status", { hasText: /^up \d+ s$/ }).waitFor();
    await page.getByRole("button", { name: "API key" }).click();
    await page.getByRole("button", { name: "Forget the key kept in this browser" }).click();
    await page.locator("#status", { hasText: "this server needs an API key" }).waitFor();
    expect(await page.evaluate(() => localStorage.getItem("mlx.apiKey"))).toBeNull();
    expect(await page.locator("#key-dialog[open]").count()).toBe(0);
    expect(errors.filter((e) => !e.includes("401") && !e.includes("aborted"))).toEqual([]);
  }, 90_000);

  test("the page asks for the key once, works after, and never puts it in a URL", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    const urls: string[] = [];
    page.on("request", (r) => urls.push(r.url()));
    await page.waitForSelector("#key-dialog[open]");
    await page.fill("#key-dialog input", key);
    await page.press("#key-dialog input", "Enter");
    await answersInEightTokens(page);
    // Kept: a reload asks nothing.
    await page.reload();
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator("#key-dialog[open]").count()).toBe(0);
    await page.goto(`${server.url}/dashboard`);
    await page.locator("#running", { hasText: /^0$/ }).waitFor();
    expect(urls.length).toBeGreaterThan(0);
    for (const url of urls) expect(url).not.toContain(key);
    // The 401s before the key was given are the only errors.
    expect(errors.filter((e) => !e.includes("401"))).toEqual([]);
  }, 90_000);
});
