// `mlx bench --url`: server mode against a tiny fake OpenAI-compatible server started here
// (127.0.0.1, port 0), streaming chat completions as server-sent events. The CLI runs in a
// child process; the fake server answers from this one.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Server } from "bun";
import { sseEvents, serverBase, summarizeLevel } from "../src/bench/server";
import { wellFormed } from "./helpers/svg";

const root = mkdtempSync(join(tmpdir(), "mlx-bench-server-"));
const main = join(import.meta.dir, "..", "src", "main.ts");
const env = { ...process.env, MLX_HOME: join(root, "home"), NO_COLOR: "1" };

async function mlx(args: string[]) {
  const proc = Bun.spawn([process.execPath, main, "bench", ...args], {
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env,
  });
  const timer = setTimeout(() => proc.kill(), 15_000);
  const [stdout, stderr, code] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  clearTimeout(timer);
  return { stdout, stderr, code };
}

const TOKENS = 6;
let server: Server<undefined>;
let base: string;

/**
 * models.toml with one entry: `name`, a remote model `model` of the OpenAI-compatible server at
 * `url` (the fake server's by default), with `settings` (TOML lines) after.
 */
function remoteAlias(name: string, model: string, settings = "", url = base): void {
  mkdirSync(env.MLX_HOME, { recursive: true });
  writeFileSync(
    join(env.MLX_HOME, "models.toml"),
    `[models.${name}]\nprovider = "openai"\nbase_url = "${url}/v1"\nmodel = "${model}"\n${settings}`,
  );
}
let inFlight = 0;
let maxInFlight = 0;
const seenModels = new Set<string>();
const seenPrompts: string[] = [];
const seenAuthorizations = new Set<string>();
let stallingRequests = 0;
let hangingRequests = 0;
/** A busy provider's prompts refused once (a 503 asking for a retry after RETRY_AFTER_S seconds). */
const refusedOnce = new Set<string>();
const RETRY_AFTER_S = 3;
let stalled = () => {};

beforeAll(() => {
  server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    async fetch(req) {
      const url = new URL(req.url);
      if (url.pathname === "/v1/models")
        return Response.json({ object: "list", data: [{ id: "fake-model", object: "model" }] });
      if (url.pathname !== "/v1/chat/completions" || req.method !== "POST")
        return new Response("not found", { status: 404 });
      const body = (await req.json()) as {
        model: string;
        stream: boolean;
        max_tokens: number;
        messages: { content: string }[];
        ignore_eos?: boolean;
      };
      seenModels.add(body.model);
      // A server that stops answering after its first four requests (the warm-up and a level of three).
      if (body.model === "stalls" && ++stallingRequests > 4) {
        stalled();
        return new Promise<Response>(() => {});
      }
      // A server that answers its first request (the warm-up), then none.
      if (body.model === "hangs" && ++hangingRequests > 1) return new Promise<Response>(() => {});
      seenAuthorizations.add(req.headers.get("authorization") ?? "");
      const content = body.messages.at(-1)!.content;
      // A server that sends its headers with the first token, after a long prompt's prefill (mlx serve, llama.cpp's).
      if (body.model === "slow-prefill" && content.length > 200) await Bun.sleep(1500);
      // A busy provider: the first attempt of each prompt test (a long prompt) is refused, its retry answered.
      if (body.model === "busy" && content.length > 200 && !refusedOnce.has(content)) {
        refusedOnce.add(content);
        return Response.json(
          { error: { message: "busy" } },
          { status: 503, headers: { "retry-after": String(RETRY_AFTER_S) } },
        );
      }
      seenPrompts.push(body.messages.at(-1)!.content);
      if (body.messages[0]!.content.includes("FAIL"))
        return Response.json({ error: { message: "asked to fail" } }, { status: 500 });
      // A server that stops mid-answer: two tokens, then the stream closes, without a finish_reason or [DONE].
      if (body.messages[0]!.content.includes("CUT SHORT"))
        return new Response(
          [" tok0", " tok1"]
            .map((content) => `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content } }] })}\n\n`)
            .join(""),
          { headers: { "content-type": "text/event-stream" } },
        );
      // A model that ends its answers after two tokens unless asked to go past its end (vLLM's
      // ignore_eos); one on a provider that refuses that field, as OpenAI's API does.
      if (body.model === "refuses-ignore-eos" && body.ignore_eos !== undefined)
        return Response.json(
          { error: { message: "Unrecognized request argument supplied: ignore_eos" } },
          { status: 400 },
        );
      const endsEarly = ["ends-early", "refuses-ignore-eos"].includes(body.model) && !body.ignore_eos;
      const n = endsEarly ? 2 : Math.min(TOKENS, body.max_tokens);
      const encoder = new TextEncoder();
      const chunk = (o: unknown) => encoder.encode(`data: ${JSON.stringify(o)}\n\n`);
      return new Response(
        new ReadableStream({
          async start(controller) {
            inFlight++;
            maxInFlight = Math.max(maxInFlight, inFlight);
            controller.enqueue(chunk({ choices: [{ index: 0, delta: { role: "assistant", content: "" } }] }));
            for (let i = 0; i < n; i++) {
              await Bun.sleep(4);
              controller.enqueue(
                chunk({ choices: [{ index: 0, delta: { content: ` tok${i}` }, finish_reason: null }] }),
              );
            }
            const finish_reason = endsEarly ? "stop" : "length";
            controller.enqueue(chunk({ choices: [{ index: 0, delta: {}, finish_reason }] }));
            // A server that counts no tokens (no usage in its stream) is asked for by the model's name.
            if (body.model !== "no-usage")
              controller.enqueue(
                chunk({ choices: [], usage: { prompt_tokens: 5, completion_tokens: n, total_tokens: 5 + n } }),
              );
            controller.enqueue(encoder.encode("data: [DONE]\n\n"));
            inFlight--;
            controller.close();
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      );
    },
  });
  base = `http://127.0.0.1:${server.port}`;
});
afterAll(() => server.stop(true));

describe("mlx bench --url", () => {
  test("a table of completed/failed requests, throughput and latency percentiles per concurrency level", async () => {
    const r = await mlx(["--url", base, "--concurrency", "1,4", "--requests", "8", "--max-tokens", "16"]);
    expect(r.code).toBe(0);
    expect(r.stdout).toContain(`${base} · model fake-model`);
    expect(r.stdout).toMatch(/\|\s+\|\s+c=1 \|\s+c=4 \|/);
    expect(r.stdout).toMatch(/\| completed requests\s+\|\s+8 \|\s+8 \|/);
    expect(r.stdout).toMatch(/\| failed requests\s+\|\s+0 \|\s+0 \|/);
    expect(r.stdout).toMatch(/\| output tokens\s+\|\s+48 \|\s+48 \|/);
    for (const row of [
      "duration (s)",
      "request throughput (req/s)",
      "output tokens/s",
      "time to first token P99 (ms)",
      "time per output token median (ms)",
      "inter-token latency mean (ms)",
      "end-to-end latency P99 (ms)",
    ]) {
      expect(r.stdout).toMatch(new RegExp(`\\| ${row.replace(/[()/]/g, "\\$&")}\\s+\\|\\s+[\\d.]+ \\|\\s+[\\d.]+ \\|`));
    }
    expect(maxInFlight).toBeGreaterThanOrEqual(2);
    expect(maxInFlight).toBeLessThanOrEqual(4);
    // Under the table, how each figure is defined where peers differ: what is timed from where,
    // and that answers are not forced past their end-of-sequence (llama-bench's are).
    const notes = r.stdout.trim().split("\n").at(-1)!;
    expect(notes).toContain("end-of-sequence is not ignored");
    expect(notes).toContain("time to first token: from sending the request");
    expect(notes).toContain("(end-to-end latency − time to first token) / (output tokens − 1)");
    expect(notes).toContain("failed ones are counted, not timed");
    expect(seenModels).toEqual(new Set(["fake-model"])); // the first model /v1/models lists
  }, 20_000);

  test("--json with failed requests counted; --model is sent; --plot draws throughput and P99 latency lines", async () => {
    const prompts = join(root, "prompts.txt");
    writeFileSync(prompts, "hello there\nplease FAIL\n");
    const svg = join(root, "server.svg");
    const r = await mlx([
      "--url",
      `${base}/v1/`,
      "--model",
      "named-model",
      "--concurrency",
      "1,2",
      "--requests",
      "6",
      "--prompts",
      prompts,
      "--json",
      "--plot",
      svg,
    ]);
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout);
    expect(out.mode).toBe("server");
    expect(out.model).toBe("named-model");
    expect(seenModels.has("named-model")).toBe(true);
    const level = out.levels[1];
    expect(level).toMatchObject({
      concurrency: 2,
      requests: 6,
      completed: 3,
      failed: 3,
      input_tokens: 3 * 5, // the completed requests' prompts, as the server's usage counted them
      output_tokens: 3 * TOKENS,
    });
    expect(level.errors[0]).toMatch(/HTTP 500.*asked to fail/);
    expect(level.ttft_ms.p99).toBeGreaterThanOrEqual(level.ttft_ms.median);
    expect(level.tpot_ms.mean).toBeGreaterThan(0);
    expect(level.itl_ms.median).toBeGreaterThan(0);
    expect(level.e2e_ms.mean).toBeGreaterThan(level.ttft_ms.mean);
    expect(level.requests_per_second).toBeGreaterThan(0);
    const text = readFileSync(svg, "utf8");
    expect(wellFormed(text)).toBe(true);
    expect(text).toContain("<polyline");
    expect(text).toContain("output tokens/s");
    expect(text).toContain("time to first token P99");
  }, 20_000);

  test("a user:password in --url is sent (as Basic auth) but masked wherever the report shows the URL", async () => {
    const withSecret = base.replace("http://", "http://bench:s3cret@");
    const svg = join(root, "secret.svg");
    const asked = ["--url", withSecret, "--concurrency", "1", "--requests", "1", "-v"];
    const table = await mlx([...asked, "--plot", svg]);
    const json = await mlx([...asked, "--json"]);
    expect([table.code, json.code]).toEqual([0, 0]);
    expect(seenAuthorizations.has(`Basic ${btoa("bench:s3cret")}`)).toBe(true);
    const shown = base.replace("http://", "http://***@");
    expect(JSON.parse(json.stdout).url).toBe(shown);
    expect(table.stdout.split("\n")[0]).toStartWith(`${shown} · model fake-model`);
    for (const text of [table.stdout, table.stderr, json.stdout, json.stderr, readFileSync(svg, "utf8")])
      expect(text).not.toContain("s3cret");
  }, 20_000);

  test("a stream cut short (no finish_reason, no [DONE]) is a failed request, not a completed one", async () => {
    const prompts = join(root, "cut-prompts.txt");
    writeFileSync(prompts, "hello there\nplease stop CUT SHORT\n");
    const r = await mlx(["--url", base, "--concurrency", "1", "--requests", "4", "--prompts", prompts, "--json"]);
    expect(r.code).toBe(0);
    const [level] = JSON.parse(r.stdout).levels;
    expect(level).toMatchObject({ completed: 2, failed: 2, output_tokens: 2 * TOKENS });
    expect(level.errors).toEqual(["the stream ended before the answer did (no finish_reason, no [DONE])"]);
    expect(r.stderr).toContain(
      "warning: concurrency 1: 2 of 4 requests failed (the stream ended before the answer did",
    );
  }, 20_000);

  test("a prompt file with expectations: its prompts are sent, and one line says the expectations are not checked", async () => {
    const prompts = join(root, "judged.jsonl");
    writeFileSync(prompts, `${JSON.stringify({ prompt: "hello there", expect_regex: "tok" })}\nplain prompt\n`);
    const r = await mlx(["--url", base, "--concurrency", "1", "--requests", "2", "--prompts", prompts, "--json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).levels[0].completed).toBe(2);
    expect(r.stderr.trim()).toBe(
      `warning: ${prompts}: the expectations of 1 prompt are not checked in server mode (--url), which measures load; the prompt suite (without --url) checks them`,
    );
  }, 20_000);

  test("Ctrl-C during a concurrency level: the levels that finished are printed, the run is said stopped, exit 130", async () => {
    const stalledNow = new Promise<void>((resolve) => {
      stalled = resolve;
    });
    const args = ["--url", base, "-m", "stalls", "--concurrency", "1,2", "--requests", "3", "--json"];
    const proc = Bun.spawn([process.execPath, main, "bench", ...args], { stdout: "pipe", stderr: "pipe", env });
    await stalledNow; // the second level's first request: the server no longer answers
    proc.kill("SIGINT");
    const [stdout, stderr, code] = await Promise.all([
      new Response(proc.stdout).text(),
      new Response(proc.stderr).text(),
      proc.exited,
    ]);
    expect(code).toBe(130);
    expect(stderr).toContain(
      "stopped (Ctrl-C) during concurrency 2: the concurrency levels that finished are reported",
    );
    const { levels } = JSON.parse(stdout);
    expect(levels).toHaveLength(1);
    expect(levels[0]).toMatchObject({ concurrency: 1, requests: 3, completed: 3, failed: 0 });
  }, 20_000);

  test("--csv: one row per concurrency level", async () => {
    const r = await mlx(["--url", base, "--concurrency", "1,2,3", "--requests", "3", "--csv"]);
    expect(r.code).toBe(0);
    const rows = r.stdout.trim().split("\n");
    expect(rows[0]).toStartWith(
      "concurrency,requests,completed,failed,duration_s,requests_per_second,input_tokens,output_tokens,output_tokens_per_second,ttft_ms_mean",
    );
    expect(rows.slice(1).map((row) => row.split(",")[0])).toEqual(["1", "2", "3"]);
    // The prompts' tokens, as the server's usage counted them: 5 a request.
    expect(rows.slice(1).map((row) => row.split(",")[6])).toEqual(["15", "15", "15"]);
  }, 20_000);

  test("a server that sends no usage: its prompts' tokens are no figure (null, '-'), not 0; its answers counted by their pieces", async () => {
    const asked = ["--url", base, "-m", "no-usage", "--concurrency", "1", "--requests", "2"];
    const r = await mlx([...asked, "--json"]);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.stdout).levels[0]).toMatchObject({ input_tokens: null, output_tokens: 2 * TOKENS });
    const table = await mlx(asked);
    expect(table.stdout).toMatch(/\| input tokens\s+\|\s+- \|/);
  }, 20_000);

  test("a level above --requests is said to run only that many at once, not shown as what it did not measure", async () => {
    const r = await mlx(["--url", base, "--concurrency", "1,2,4,8", "--requests", "2", "--csv"]);
    expect(r.code).toBe(0);
    expect(r.stderr.trim()).toBe(
      "warning: --concurrency 4, 8: more than --requests 2, so those levels run at most 2 requests at once",
    );
    const within = await mlx(["--url", base, "--concurrency", "1,2", "--requests", "2", "--csv"]);
    expect(within.stderr).toBe("");
  }, 20_000);

  test("an unreachable --url is a clear one-line error", async () => {
    const closed = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("") });
    const port = closed.port;
    closed.stop(true);
    const r = await mlx(["--url", `http://127.0.0.1:${port}`, "--requests", "1", "--concurrency", "1"]);
    expect(r.code).not.toBe(0);
    const lines = r.stderr.trim().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^error: cannot reach http://127\\.0\\.0\\.1:${port}: `));
    const bad = await mlx(["--url", "not a url"]);
    expect(bad.stderr.trim()).toMatch(/^error: --url must be an http\(s\) URL/);
  }, 20_000);

  test("two --url (two servers to compare) are refused, not the first dropped for the last", async () => {
    const before = seenPrompts.length;
    const r = await mlx(["--url", "http://127.0.0.1:1", "--url", base, "--concurrency", "1", "--requests", "1"]);
    expect(r.code).not.toBe(0);
    expect(r.stdout).toBe("");
    expect(r.stderr.trim()).toMatch(
      /^error: server mode measures one --url \(got 2\); to compare servers side by side, .*models\.toml/,
    );
    expect(seenPrompts.length).toBe(before); // no server was measured
  }, 20_000);

  test("--url given as the endpoint itself (…/v1/chat/completions, as in an API's docs) measures that server", async () => {
    for (const endpoint of ["/v1/chat/completions", "/v1/completions/"]) {
      const r = await mlx(["--url", `${base}${endpoint}`, "--concurrency", "1", "--requests", "1", "--json"]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({ url: base, levels: [{ completed: 1, failed: 0 }] });
    }
  }, 20_000);

  test("a server that lists no model (mlx_lm.server without a Hugging Face cache) gets requests without a model, for its own", async () => {
    // As mlx_lm.server 0.32.2 answered: /v1/models a 200 with no body (its listing failed after the
    // headers went), any `model` it cannot find a 404 from the Hub, and a request without one its
    // --model. A made-up name ("default") is a model no server has.
    const seen: string[] = [];
    const peer = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(req) {
        if (new URL(req.url).pathname === "/v1/models")
          return new Response("", { headers: { "Content-type": "application/json" } });
        const body = (await req.json()) as { model?: string };
        seen.push(body.model ?? "(none)");
        if (body.model !== undefined && body.model !== "default_model")
          return new Response(
            '{"error": "Got: ConnectError: [Errno -2] Name or service not known\\nAn error happened while trying to locate the files on the Hub."}',
            { status: 404, headers: { "Content-type": "application/json" } },
          );
        const chunk = (o: object) =>
          `data: ${JSON.stringify({ object: "chat.completion.chunk", model: "default_model", ...o })}\n\n`;
        return new Response(
          `${chunk({ choices: [{ index: 0, finish_reason: null, delta: { role: "assistant", content: "Hi" } }] })}${chunk({ choices: [{ index: 0, finish_reason: "stop", delta: { role: "assistant" } }] })}data: [DONE]\n\n`,
          { headers: { "Content-type": "text/event-stream" } },
        );
      },
    });
    try {
      const r = await mlx([
        "--url",
        `http://127.0.0.1:${peer.port}`,
        "--concurrency",
        "1",
        "--requests",
        "1",
        "--json",
      ]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      expect(JSON.parse(r.stdout)).toMatchObject({
        model: "(the server's default)",
        levels: [{ completed: 1, failed: 0 }],
      });
      expect(new Set(seen)).toEqual(new Set(["(none)"]));
    } finally {
      peer.stop(true);
    }
  }, 20_000);

  test("with no -m, a server whose listing fails or is empty: the error says why no model was sent", async () => {
    // As mlx serve answers with its models.toml broken: /v1/models a 500 naming the file, and a
    // request without a model a 400 that says one is required.
    for (const [models, why] of [
      [
        () =>
          Response.json({ error: { message: "/home/me/models.toml:2: model 'x' needs a source" } }, { status: 500 }),
        "GET /v1/models answered HTTP 500: /home/me/models.toml:2: model 'x' needs a source",
      ],
      [() => Response.json({ object: "list", data: [] }), "the server lists none"],
    ] as const) {
      const peer = Bun.serve({
        hostname: "127.0.0.1",
        port: 0,
        fetch: (req) =>
          new URL(req.url).pathname === "/v1/models"
            ? models()
            : Response.json({ error: { message: "'model' is required" } }, { status: 400 }),
      });
      try {
        const r = await mlx(["--url", `http://127.0.0.1:${peer.port}`, "--concurrency", "1", "--requests", "1"]);
        expect(r.code).toBe(1);
        expect(r.stderr.trim()).toEndWith(
          `HTTP 400: 'model' is required (sent without a model: ${why}; give one with -m)`,
        );
      } finally {
        peer.stop(true);
      }
    }
  }, 20_000);

  test("a server that answers without streaming (JSON, an HTML page) is named as such, not as an empty stream", async () => {
    const answers = {
      "application/json": () => Response.json({ choices: [{ message: { role: "assistant", content: "hi" } }] }),
      "text/html": () =>
        new Response("<html><body>proxy login</body></html>", { headers: { "content-type": "text/html" } }),
    };
    for (const [type, answer] of Object.entries(answers)) {
      const plain = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: answer });
      try {
        const r = await mlx(["--url", `http://127.0.0.1:${plain.port}`, "--concurrency", "1", "--requests", "1"]);
        expect(r.code).not.toBe(0);
        expect(r.stderr.trim().split("\n")).toHaveLength(1);
        expect(r.stderr).toContain(`failed: the server answered ${type}, not a stream of server-sent events: `);
      } finally {
        plain.stop(true);
      }
    }
  }, 20_000);

  test("a server's words with control characters (colours, a bell) are quoted printable, in server mode and for a remote model", async () => {
    // The warm-up is answered; every later request, an error whose message would recolour and ring the terminal.
    const escapes = "bad \u001b[31mred\u001b[0m \u0007 thing\r";
    let requests = 0;
    const noisy = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      async fetch(req) {
        if (new URL(req.url).pathname === "/v1/models") return Response.json({ data: [{ id: "noisy" }] });
        if (++requests === 1)
          return new Response(
            `data: ${JSON.stringify({ choices: [{ index: 0, delta: { content: "hi" }, finish_reason: "stop" }] })}\n\ndata: [DONE]\n\n`,
            { headers: { "content-type": "text/event-stream" } },
          );
        return Response.json({ error: { message: escapes } }, { status: 500 });
      },
    });
    const control = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/;
    try {
      const url = `http://127.0.0.1:${noisy.port}`;
      const server = await mlx(["--url", url, "--concurrency", "1", "--requests", "1"]);
      expect(server.code).not.toBe(0);
      expect(server.stderr).toMatch(/\(HTTP 500: bad \[31mred\[0m +thing\)/);
      requests = 0;
      remoteAlias("noisy", "noisy", "", url);
      const remote = await mlx(["-m", "noisy", "-p", "8", "-g", "2", "-n", "1"]);
      expect(remote.code).not.toBe(0);
      expect(remote.stderr).toMatch(/answered 500: bad \[31mred\[0m +thing/);
      for (const text of [server.stdout, server.stderr, remote.stdout, remote.stderr])
        expect(text).not.toMatch(control);
    } finally {
      noisy.stop(true);
    }
  }, 20_000);

  test("a thinking model on Ollama's /v1 (reasoning in `reasoning`, next to an empty `content`) is timed from its first thought", async () => {
    // Ollama's chunks, as its openai package writes them; the answer never gets past the thinking.
    const chunk = (delta: object) =>
      `data: ${JSON.stringify({ object: "chat.completion.chunk", choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`;
    const thoughts = ["Okay", ",", " the", " user"].map((t) => chunk({ role: "assistant", content: "", reasoning: t }));
    const usage = `data: ${JSON.stringify({ choices: [], usage: { prompt_tokens: 9, completion_tokens: 4, total_tokens: 13 } })}\n\n`;
    const ollama = Bun.serve({
      hostname: "127.0.0.1",
      port: 0,
      fetch: () =>
        new Response([...thoughts, usage, "data: [DONE]\n\n"].join(""), {
          headers: { "content-type": "text/event-stream" },
        }),
    });
    try {
      const r = await mlx([
        "--url",
        `http://127.0.0.1:${ollama.port}`,
        "--concurrency",
        "1",
        "--requests",
        "2",
        "--json",
      ]);
      expect(r.stderr).toBe("");
      expect(r.code).toBe(0);
      const [level] = JSON.parse(r.stdout).levels;
      expect(level).toMatchObject({ completed: 2, failed: 0, output_tokens: 8 });
      expect(typeof level.itl_ms.mean).toBe("number"); // the gaps between thoughts were timed
    } finally {
      ollama.stop(true);
    }
  }, 20_000);

  test("a server that refuses the model: the warm-up's error is reported", async () => {
    const r = await mlx(["--url", `${base}`, "--model", "FAIL", "--concurrency", "1", "--requests", "1"]);
    expect(r.code).toBe(0); // the model name does not trip the fake server; only prompts do
    const prompts = join(root, "fail.txt");
    writeFileSync(prompts, "FAIL now\n");
    const f = await mlx(["--url", base, "--prompts", prompts, "--concurrency", "1", "--requests", "1"]);
    expect(f.code).not.toBe(0);
    expect(f.stderr.trim()).toMatch(/^error: the warm-up request to .*\/v1\/chat\/completions failed: HTTP 500/);
  }, 20_000);
});

describe("mlx bench -m on a remote model (models.toml provider)", () => {
  test("each run's prompt is new to the server, so its prefix cache cannot skip the prefill; no sizes shown", async () => {
    remoteAlias("far", "fake-model");
    seenPrompts.length = 0;
    const r = await mlx(["-m", "far", "-p", "64", "-g", "0", "-n", "3"]);
    expect(r.code).toBe(0);
    const promptTests = seenPrompts.filter((p) => p.length > 200); // not the warm-up's
    expect(promptTests).toHaveLength(3);
    expect(new Set(promptTests).size).toBe(3);
    const row = r.stdout.split("\n").find((line) => line.startsWith("| far "))!;
    expect(row.split("|").map((cell) => cell.trim())).toEqual([
      "",
      "far",
      "remote",
      "-",
      "-",
      expect.any(String),
      expect.any(String),
      "-",
      "",
    ]);
  }, 20_000);

  test("a provider that counts no tokens (no usage): its answer counted by its streamed pieces; its prompt speed '-' and null, not a measured 0 tokens/s", async () => {
    remoteAlias("uncounted", "no-usage");
    const r = await mlx(["-m", "uncounted", "-p", "64", "-g", "4", "-n", "2", "--json"]);
    expect(r.code).toBe(0);
    const [far] = JSON.parse(r.stdout).models;
    // A piece a token, as run, chat and bench --url count a stream without usage; its prompt is not counted.
    expect([far.prompt_tokens, far.gen_tokens]).toEqual([0, 4]);
    expect(far.prompt_tokens_per_second).toEqual({ mean: null, sd: null, samples: [null, null] });
    expect(far.generation_tokens_per_second.mean).toBeGreaterThan(0);
    // The first token was seen, and timed.
    expect(far.time_to_first_token_seconds.mean).toBeGreaterThan(0);
  }, 20_000);
});

describe("mlx bench -m on a remote model whose answer ends early", () => {
  const generated = async (model: string) => {
    remoteAlias("far", model);
    const r = await mlx(["-m", "far", "-p", "0", "-g", "5", "-n", "2", "--json"]);
    expect(r.code).toBe(0);
    return JSON.parse(r.stdout).models[0].gen_tokens;
  };

  test("the generation test asks the provider to go past its end-of-sequence (ignore_eos), as the local test does", async () => {
    expect(await generated("ends-early")).toBe(5);
  }, 20_000);

  test("a provider that refuses ignore_eos is measured without it: the tokens it generated are reported", async () => {
    expect(await generated("refuses-ignore-eos")).toBe(2);
  }, 20_000);
});

describe("mlx bench -m on a remote model that is retried", () => {
  test("a prompt test refused once (503, Retry-After) is timed from the attempt that answered, not from the refused one", async () => {
    remoteAlias("busy", "busy");
    refusedOnce.clear();
    const r = await mlx(["-m", "busy", "-p", "64", "-g", "0", "-n", "1", "--json"]);
    expect(r.code).toBe(0);
    expect(refusedOnce.size).toBe(1); // the prompt test was refused, then retried and answered
    const [busy] = JSON.parse(r.stdout).models;
    // The refused attempt and the backoff the provider asked for (RETRY_AFTER_S) are no part of
    // the prefill timed: its first token came at once from the attempt that answered.
    expect(busy.time_to_first_token_seconds.samples).toHaveLength(1);
    expect(busy.time_to_first_token_seconds.samples[0]).toBeLessThan(RETRY_AFTER_S);
  }, 20_000);
});

describe("mlx bench --url against a server slower than --timeout", () => {
  test("the request is a failed one, and its reason names the limit it ran into", async () => {
    hangingRequests = 0;
    const r = await mlx(["--url", base, "-m", "hangs", "--concurrency", "1", "--requests", "1", "--timeout", "1"]);
    expect(r.code).toBe(1);
    expect(r.stdout).toMatch(/\| failed requests\s+\|\s+1 \|/);
    expect(r.stderr.trim().split("\n").at(-1)).toBe(
      "error: concurrency 1: 1 of 1 requests failed (no answer within --timeout 1 s)",
    );
  }, 20_000);
});

describe("mlx bench -m on a remote model slower than its timeout", () => {
  test("a prefill longer than connect_timeout: the error names the setting to raise", async () => {
    remoteAlias("slow", "slow-prefill", "connect_timeout = 0.5\nmax_retries = 0\n");
    const r = await mlx(["-m", "slow", "-p", "64", "-g", "0", "-n", "1"]);
    expect(r.code).toBe(1);
    const errors = r.stderr.split("\n").filter((line) => line.startsWith("error:"));
    expect(errors).toHaveLength(1);
    expect(errors[0]).toContain("did not answer within 0.5 s (model 'slow': connect_timeout in models.toml;");
  }, 20_000);
});

describe("server-mode pieces", () => {
  test("SSE events split across chunks, CRLF, multi-line data", async () => {
    const parts = ['data: {"a"', ":1}\r\n\r\ndata: x\ndata: y\n\n: comment\n\nda", "ta: [DONE]\n\n"];
    const stream = new ReadableStream<Uint8Array>({
      start(c) {
        for (const p of parts) c.enqueue(new TextEncoder().encode(p));
        c.close();
      },
    });
    const events: string[] = [];
    for await (const e of sseEvents(stream)) events.push(e);
    expect(events).toEqual(['{"a":1}', "x\ny", "[DONE]"]);
  });

  test("base URLs and level summaries", () => {
    expect(serverBase("http://127.0.0.1:8080/v1/")).toBe("http://127.0.0.1:8080");
    expect(serverBase("http://h:1")).toBe("http://h:1");
    expect(serverBase("http://h:1/v1/chat/completions")).toBe("http://h:1");
    expect(serverBase("http://h:1/proxy/v1/completions")).toBe("http://h:1/proxy");
    // Routes are added to the base: a fragment (never sent) is dropped, a query cannot be kept in
    // place (it would carry the route: POST /?x=1/v1/chat/completions), so it is refused.
    expect(serverBase("http://h:1/v1#models")).toBe("http://h:1");
    expect(() => serverBase("http://h:1/v1?api-version=1")).toThrow(
      "--url is a server's base URL, without a query (got 'http://h:1/v1?api-version=1')",
    );
    const level = summarizeLevel(
      2,
      [
        { ok: true, ttftMs: 100, e2eMs: 400, outputTokens: 4, itlMs: [100, 100, 100] },
        { ok: false, error: "boom", ttftMs: Number.NaN, e2eMs: 5, outputTokens: 0, itlMs: [] },
      ],
      0.5,
    );
    expect(level).toMatchObject({
      completed: 1,
      failed: 1,
      outputTokens: 4,
      outputTokensPerSecond: 8,
      requestsPerSecond: 2,
      errors: ["boom"],
    });
    expect(level.tpotMs.mean).toBe(100);
  });
});
