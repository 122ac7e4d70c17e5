// A real `mlx serve` server in this process, on 127.0.0.1 port 0, with a tiny model.
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startServer, type RunningServer, type ServerOptions } from "../../src/server/app";
import { writeTinyModel } from "./tiny-model";

/** One tiny model directory per test process (SmolLM2's tokenizer, random weights). */
let tinyPath: string | undefined;
export function tinyModel(): string {
  if (!tinyPath) {
    const root = mkdtempSync(join(tmpdir(), "mlx-serve-"));
    process.env.MLX_HOME ??= join(root, "home");
    tinyPath = join(root, "tiny");
    writeTinyModel(tinyPath, { contextLength: 256 });
  }
  return tinyPath;
}

const mainScript = join(import.meta.dir, "..", "..", "src", "main.ts");

/**
 * `mlx serve --port 0 -m <model> <flags>` in a child process (no -m when `model` is undefined),
 * with `env` added to this process's, and the URL it prints once its model is loaded.
 */
export async function startServe(
  model: string | undefined,
  flags: string[] = [],
  env: Record<string, string | undefined> = {},
  /** A command the server runs under (["nohup"]). */
  under: string[] = [],
): Promise<{ proc: Bun.Subprocess<"ignore", "pipe", "pipe">; url: string }> {
  const modelFlags = model === undefined ? [] : ["-m", model];
  const proc = Bun.spawn([...under, process.execPath, mainScript, "serve", "--port", "0", ...modelFlags, ...flags], {
    stdout: "pipe",
    stderr: "pipe",
    env: { ...process.env, NO_COLOR: "1", ...env },
  });
  const reader = proc.stderr.getReader();
  let err = "";
  while (!/listening on (http:\S+)/.test(err)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`serve exited: ${err}`);
    err += new TextDecoder().decode(value);
  }
  reader.releaseLock();
  const url = /listening on (http:\S+)/.exec(err)![1]!;
  const deadline = performance.now() + 10_000;
  while ((await fetch(`${url}/health`)).status !== 200 && performance.now() < deadline) await Bun.sleep(20);
  return { proc, url };
}

export function serve(o: ServerOptions = {}): RunningServer {
  return startServer({ port: 0, version: "0.1.0-test", logError: () => {}, ...o });
}

export async function post(
  url: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<{ status: number; json: any; headers: Headers }> {
  const r = await fetch(url, {
    method: "POST",
    body: typeof body === "string" || body instanceof Uint8Array ? body : JSON.stringify(body),
    headers: { "Content-Type": "application/json", ...headers },
  });
  const text = await r.text();
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    json = text;
  }
  return { status: r.status, json, headers: r.headers };
}

/** Waits until `check` holds (polling), or fails after `ms`. */
export async function eventually(check: () => boolean | Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = performance.now() + ms;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error("condition not reached in time");
    await Bun.sleep(10);
  }
}

/**
 * `url`/health asked again and again until `work` is settled: how many times it answered, and
 * the longest wait between two answers. With the server in this process, work that holds the
 * event loop shows as such a gap, and as few answers.
 */
export async function healthWhile(
  url: string,
  work: Promise<unknown>,
): Promise<{ slowestMs: number; answers: number; meanwhile: boolean }> {
  let done = false;
  const settled = work.then(
    () => (done = true),
    () => (done = true),
  );
  let slowestMs = 0;
  let answers = 0;
  for (let last = performance.now(); !done; answers++) {
    if ((await fetch(`${url}/health`)).status !== 200) throw new Error("/health did not answer 200");
    await Bun.sleep(10);
    const now = performance.now();
    slowestMs = Math.max(slowestMs, now - last);
    last = now;
  }
  await settled;
  // The server answered while the work ran: several times (the work took turns with the event
  // loop, however slow a loaded machine made each), or, where the work was too quick for
  // several, never half a second late.
  return { slowestMs, answers, meanwhile: answers >= 3 || slowestMs < 500 };
}

/**
 * A streamed completion (of `model`, else the server's own) that goes on long after its first
 * chunk, read: it holds a batch slot (maxBatch 1) or a model (maxLoadedModels 1) until `stop`
 * aborts it; `reader` reads on.
 */
export async function longStream(url: string, model?: string) {
  const stop = new AbortController();
  const long = await fetch(`${url}/v1/completions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model, prompt: "Once", max_tokens: 8000, ignore_eos: true, stream: true }),
    signal: stop.signal,
  });
  if (long.status !== 200) throw new Error(`the long stream was refused: ${long.status} ${await long.text()}`);
  const reader = long.body!.getReader();
  await reader.read();
  return { reader, stop };
}
