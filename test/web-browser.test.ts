// The chat and the dashboard in headless Chromium, against a real server with a tiny model.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import type { Browser, Page } from "playwright-core";
import type { RunningServer } from "../src/server/app";
import { chromiumPath, launchBrowser, longTinyModel, openPage } from "./helpers/browser";
import { eventually, serve } from "./helpers/serve";
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

describe.skipIf(!chromiumPath)("in Chromium", () => {
  let browser: Browser;
  let server: RunningServer;
  let other: string;
  beforeAll(async () => {
    other = join(mkdtempSync(join(tmpdir(), "mlx-web-")), "tiny-other");
    writeTinyModel(other, { contextLength: 512, seed: 7 });
    server = serve({ defaultModel: longTinyModel(), maxLoadedModels: 2, maxBatch: 16 });
    browser = await launchBrowser();
    await eventually(async () => (await fetch(`${server.url}/health`)).status === 200, 60_000);
  }, 90_000);
  afterAll(async () => {
    await browser?.close();
    await server?.stop();
  });

  test("an answer streams in, survives a reload (IndexedDB), and can be stopped (the server cancels it)", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    await page.waitForSelector("body[data-ready]");
    await setMaxTokens(page, "150");
    await send(page, "Hello there");
    // Streaming: text shows while the answer is still being written, and grows until it ends.
    const streaming = page.locator(".message.assistant.streaming .markdown");
    await streaming.filter({ hasText: /\S/ }).waitFor();
    const early = ((await page.locator(".message.assistant .markdown").textContent()) ?? "").length;
    await page.waitForSelector(".message.assistant .figures");
    const done = (await page.locator(".message.assistant .markdown").textContent())!;
    expect(done.length).toBeGreaterThan(early);
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
    await page.setInputFiles("#import-file", {
      name: "hostile.json",
      mimeType: "application/json",
      buffer: Buffer.from(JSON.stringify(conversation)),
    });
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
    await page.setInputFiles("#import-file", {
      name: "thinking.json",
      mimeType: "application/json",
      buffer: Buffer.from(JSON.stringify(imported)),
    });
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

    page.once("dialog", (d) => d.accept());
    await page.click("#conversations li.current .delete");
    await page.locator("#conversations .open", { hasText: "Renamed" }).waitFor({ state: "detached" });
    await page.reload();
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator("#conversations .open").allTextContents()).not.toContain("Renamed");
    expect(errors).toEqual([]);
  }, 60_000);

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
    await page.fill("#schema", JSON.stringify(schema));
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
    } finally {
      controller.abort();
      await Promise.all(load);
    }
    await eventually(async () => (await page.locator("#running").textContent()) === "0", 10_000);
    expect(errors).toEqual([]);
  }, 120_000);
});

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

  test("the page asks for the key once, works after, and never puts it in a URL", async () => {
    const { page, errors } = await openPage(browser, `${server.url}/`);
    const urls: string[] = [];
    page.on("request", (r) => urls.push(r.url()));
    await page.waitForSelector("#key-dialog[open]");
    await page.fill("#key-dialog input", key);
    await page.press("#key-dialog input", "Enter");
    await page.waitForSelector("body[data-ready]");
    expect(await page.locator("#model option").count()).toBeGreaterThan(0);
    await setMaxTokens(page, "8");
    await send(page, "Hi");
    await page.waitForSelector(".message.assistant .figures");
    expect(await page.locator(".message.assistant .figures").textContent()).toMatch(/^8 tokens/);
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
