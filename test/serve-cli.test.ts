// `mlx serve` as a user starts it: the real CLI in a child process on port 0, the bound URL on
// stderr, a preloaded default model, a clean stop on SIGTERM, bad flags refused.
import { expect, test } from "bun:test";
import { join } from "node:path";
import { tinyModel } from "./helpers/serve";

const main = join(import.meta.dir, "..", "src", "main.ts");

test("serves on 127.0.0.1, prints the URL, uses -m by default, stops on SIGTERM", async () => {
  const model = tinyModel();
  const proc = Bun.spawn([process.execPath, main, "serve", "--port", "0", "-m", model], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, NO_COLOR: "1" },
  });
  try {
    const reader = proc.stderr.getReader();
    let err = "";
    while (!/listening on (http:\S+)/.test(err)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`serve exited: ${err}`);
      err += new TextDecoder().decode(value);
    }
    const url = /listening on (http:\S+)/.exec(err)![1]!;
    expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const deadline = performance.now() + 10_000;
    while ((await fetch(`${url}/health`)).status !== 200 && performance.now() < deadline) await Bun.sleep(20);
    const r = await fetch(`${url}/v1/chat/completions`, {
      method: "POST",
      body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], max_tokens: 3 }),
    });
    expect(r.status).toBe(200);
    expect(((await r.json()) as { model: string }).model).toBe(model);
    proc.kill("SIGTERM");
    expect(await proc.exited).toBe(0);
  } finally {
    proc.kill();
  }
}, 20_000);

test("a bad flag is one line and a non-zero exit", async () => {
  const proc = Bun.spawn([process.execPath, main, "serve", "--port", "99999"], { stdout: "pipe", stderr: "pipe" });
  const [stderr, code] = await Promise.all([new Response(proc.stderr).text(), proc.exited]);
  expect(code).not.toBe(0);
  expect(stderr).toMatch(/^error: --port/m);
});
