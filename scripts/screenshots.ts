// Screenshots of the chat and the dashboard, light and dark, for the README (docs/screenshots/):
//   node_modules/.bin/bun scripts/screenshots.ts [model]      (default: smollm2)
// Serves the model with the tuner on, asks the chat one question, then puts the dashboard under
// load from 8 streams for a few seconds. Needs Debian's chromium (scripts/setup.sh installs it).
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { startServer } from "../src/server/app";

const model = process.argv[2] ?? "smollm2";
const out = new URL("../docs/screenshots/", import.meta.url).pathname;
mkdirSync(out, { recursive: true });
const executablePath = Bun.which("chromium") ?? Bun.which("chromium-browser");
if (!executablePath) throw new Error("no chromium on the PATH (scripts/setup.sh installs it when run as root)");

const server = startServer({ port: 0, defaultModel: model, targetItlMs: 150, maxBatch: 8, logError: () => {} });
const browser = await chromium.launch({ executablePath, args: ["--no-sandbox"] });
try {
  while ((await fetch(`${server.url}/health`)).status !== 200) await Bun.sleep(200);
  const page = await browser.newPage({ viewport: { width: 1100, height: 720 }, deviceScaleFactor: 1 });
  page.setDefaultTimeout(180_000);
  const shoot = async (name: string, fullPage = false) => {
    for (const scheme of ["light", "dark"] as const) {
      await page.emulateMedia({ colorScheme: scheme });
      await page.screenshot({ path: `${out}${name}-${scheme}.png`, fullPage });
      console.log(`${out}${name}-${scheme}.png`);
    }
  };

  await page.goto(`${server.url}/`);
  await page.waitForSelector("body[data-ready]");
  await page.fill("#input", "Write a Python function that reverses a string, then explain it in one sentence.");
  await page.press("#input", "Enter");
  await page.waitForSelector(".message.assistant .figures");
  await shoot("chat");

  const load = new AbortController();
  const streams = Array.from({ length: 8 }, (_, i) =>
    fetch(`${server.url}/v1/chat/completions`, {
      method: "POST",
      signal: load.signal,
      body: JSON.stringify({
        model,
        stream: true,
        max_tokens: 400,
        messages: [{ role: "user", content: `Tell me story number ${i + 1} about a lighthouse.` }],
      }),
    })
      .then((r) => r.text())
      .catch(() => {}),
  );
  await page.goto(`${server.url}/dashboard`);
  await Bun.sleep(12_000);
  await shoot("dashboard", true);
  load.abort();
  await Promise.all(streams);
} finally {
  await browser.close();
  await server.stop();
}
