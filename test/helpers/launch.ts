// `mlx launch -n N -- serve ...` as a test runs it: the launcher's process, the URL its rank 0
// listens on (once the model answers /health), and its ranks' process ids by rank.
import { expect } from "bun:test";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import OpenAI from "openai";
import type { CompletionCreateParamsNonStreaming } from "openai/resources/completions";
import { loopbackHosts } from "../../src/cmd/launch";
import { ringHostfile } from "../../src/cmd/launch-plan";
import { mainScript } from "./cli";
import { serve } from "./serve";

/**
 * /health's status while a server starts, 0 where the request failed: a poll can meet a kept-alive
 * connection the server has just closed (ECONNRESET in one CI run), which says nothing yet.
 */
const healthStatus = (url: string) =>
  fetch(`${url}/health`).then(
    (response) => response.status,
    () => 0,
  );

/**
 * A launched `serve` on `model` split over `n` ranks (or the ranks of hostfile `n`), with `extra`
 * flags, under MLX_HOME `home`.
 */
export async function launchServe(home: string, n: number | string, model: string, extra: string[] = []) {
  const ranks = typeof n === "number" ? ["-n", String(n)] : ["--hostfile", n];
  const proc = Bun.spawn(
    [process.execPath, mainScript, "launch", ...ranks, "--", "serve", "--port", "0", "-m", model, ...extra],
    { stdout: "pipe", stderr: "pipe", env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" } },
  );
  let stderr = "";
  const reading = (async () => {
    for await (const chunk of proc.stderr) stderr += new TextDecoder().decode(chunk);
  })();
  const deadline = Date.now() + 30_000;
  while (!/listening on (http:\S+)/.test(stderr)) {
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`serve did not start: ${stderr}`);
    await Bun.sleep(20);
  }
  const url = /listening on (http:\S+)/.exec(stderr)![1]!;
  while ((await healthStatus(url)) !== 200) {
    // Rank 0 listens while its ring forms: a rank that fails to join ends the launch after that.
    if (Date.now() > deadline || proc.exitCode !== null) throw new Error(`the model did not load: ${stderr}`);
    await Bun.sleep(50);
  }
  return { proc, url, ranks: () => rankPids(proc.pid), stderr: () => stderr, reading };
}

/**
 * Stops rank `rank` of a launched serve (SIGSTOP), as a machine that stops answering: the
 * launcher must exit non-zero within twice the peer timeout (`timeoutMs`) and 5 s, its stderr
 * saying `says`. Meanwhile rank 0's /health is asked every 50 ms: the last 503 it answered before
 * it stopped, with /ready's answer right after it (undefined where none came). The last, not the
 * first: a stopped rank 1 silences the ring and its own signs of life together, and which of the
 * two reaches half the timeout first (and is named first) depends on when its last word came.
 */
export async function expectStoppedRankNoticed(
  server: Awaited<ReturnType<typeof launchServe>>,
  rank: number,
  timeoutMs: number,
  says: string | RegExp,
): Promise<{ health: { error: string }; ready: { status: number; reason: string } } | undefined> {
  const stoppedAt = performance.now();
  process.kill(server.ranks().get(rank)!, "SIGSTOP");
  let failing: Awaited<ReturnType<typeof expectStoppedRankNoticed>>;
  const asking = (async () => {
    while (server.proc.exitCode === null) {
      try {
        // Up to 3 s an answer, as a health checker allows.
        const health = await fetch(`${server.url}/health`, { signal: AbortSignal.timeout(3000) });
        if (health.status === 503) {
          const ready = await fetch(`${server.url}/ready`, { signal: AbortSignal.timeout(3000) });
          const reason = ((await ready.json()) as { reason: string }).reason;
          failing = { health: (await health.json()) as { error: string }, ready: { status: ready.status, reason } };
        }
      } catch {
        // Not answered in time (or gone): asked again.
      }
      await Bun.sleep(50);
    }
  })();
  const code = await server.proc.exited;
  expect(performance.now() - stoppedAt).toBeLessThan(timeoutMs * 2 + 5000);
  await Promise.all([server.reading, asking]);
  expect(code).not.toBe(0);
  expect(server.stderr()).toMatch(says);
  return failing;
}

/** The process ids of a launcher's ranks (its children), by rank. */
export function rankPids(launcher: number): Map<number, number> {
  // ps exits 1 when there are none left.
  let listed = "";
  try {
    listed = execFileSync("ps", ["-o", "pid=", "--ppid", String(launcher)], { encoding: "utf8" });
  } catch {}
  const byRank = new Map<number, number>();
  for (const pid of listed.split("\n").filter(Boolean).map(Number)) {
    let env: string[];
    try {
      env = readFileSync(`/proc/${pid}/environ`, "utf8").split("\0");
    } catch {
      continue; // exited meanwhile
    }
    const rank = env.find((e) => e.startsWith("MLX_RANK="));
    if (rank) byRank.set(Number(rank.slice(9)), pid);
  }
  return byRank;
}

/** Sends `requests` to a launched serve all at once and stops it (cleanly): each answer's text. */
export async function completeTogether(
  server: Awaited<ReturnType<typeof launchServe>>,
  requests: CompletionCreateParamsNonStreaming[],
): Promise<string[]> {
  try {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
    return await Promise.all(requests.map(async (r) => (await client.completions.create(r)).choices[0]!.text));
  } finally {
    server.proc.kill("SIGTERM");
    expect(await server.proc.exited).toBe(0);
  }
}

/** What one process (an in-process server) answers to each request, one after another: what a split model must match. */
export async function answersAlone(requests: CompletionCreateParamsNonStreaming[]): Promise<string[]> {
  const alone = serve();
  try {
    const client = new OpenAI({ baseURL: `${alone.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
    const answers: string[] = [];
    for (const r of requests) answers.push((await client.completions.create(r)).choices[0]!.text);
    return answers;
  } finally {
    await alone.stop();
  }
}

/** Each request's text, all streamed from the server at `url` at once (rows it batches together). */
export function streamTogether(url: string, requests: CompletionCreateParamsNonStreaming[]): Promise<string[]> {
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
  return Promise.all(
    requests.map(async (r) => {
      let text = "";
      for await (const chunk of await client.completions.create({ ...r, stream: true }))
        text += chunk.choices[0]?.text ?? "";
      return text;
    }),
  );
}

/**
 * Rank `rank` of `mlx <args>` started by hand (as on another machine): `--hostfile ring --rank
 * rank` added, run in `cwd`, its stderr piped.
 */
export function startRank(home: string, ring: string, rank: number, args: string[], cwd?: string) {
  return Bun.spawn([process.execPath, mainScript, ...args, "--hostfile", ring, "--rank", String(rank)], {
    cwd,
    stdout: "ignore",
    stderr: "pipe",
    env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" },
  });
}

/** A ring hostfile of `n` ranks on free loopback ports (`links` addresses each), written to `path`. */
export async function writeLoopbackRing(path: string, n: number, links = 1): Promise<string> {
  writeFileSync(path, ringHostfile(await loopbackHosts(n, links)));
  return path;
}

/**
 * Ranks 0 and 1 of `mlx <args>` (a `serve --port 0`) started by hand on a loopback ring written
 * to `ring`; once rank 0 serves, rank 1 is killed: rank 0's /health and /ready must answer 503
 * naming the loss (`lost`), then rank 0 exits 3 within the peer timeout (`timeoutMs`) and 5 s,
 * saying `error: rank 0: <lost>`.
 */
export async function expectKilledRankOneNoticed(
  home: string,
  ring: string,
  args: string[],
  lost: string,
  timeoutMs: number,
): Promise<void> {
  await writeLoopbackRing(ring, 2);
  const [zero, one] = [startRank(home, ring, 0, args), startRank(home, ring, 1, args)];
  let stderr = "";
  void (async () => {
    for await (const chunk of zero.stderr) stderr += new TextDecoder().decode(chunk);
  })();
  try {
    const deadline = Date.now() + 30_000;
    while (!/listening on (http:\S+)/.test(stderr) && Date.now() < deadline) await Bun.sleep(20);
    const url = /listening on (http:\S+)/.exec(stderr)![1]!;
    while ((await healthStatus(url)) !== 200 && Date.now() < deadline) await Bun.sleep(50);
    one.kill("SIGKILL");
    const killedAt = performance.now();
    let health: Response | undefined;
    while (zero.exitCode === null && health?.status !== 503) {
      health = await fetch(`${url}/health`).catch(() => health);
      await Bun.sleep(50);
    }
    expect(health?.status).toBe(503);
    expect(((await health!.json()) as { error: string }).error).toContain(lost);
    const ready = await fetch(`${url}/ready`);
    expect(ready.status).toBe(503);
    expect(((await ready.json()) as { reason: string }).reason).toContain(lost);
    expect(await zero.exited).toBe(3);
    expect(performance.now() - killedAt).toBeLessThan(timeoutMs + 5000);
    expect(stderr).toContain(`error: rank 0: ${lost}`);
  } finally {
    zero.kill("SIGKILL");
    one.kill("SIGKILL");
  }
}
