// The peer timeout times a peer's silence, not the work: a long prefill chunk on a busy machine
// takes longer than --peer-timeout, yet the other rank is alive and its bytes keep coming (under
// tensor parallel each layer's all_sum, in a pipeline each layer's progress message). A rank
// that is silent (stopped) still stops every rank within the timeout.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import OpenAI from "openai";
import { expectKilledRankOneNoticed, expectStoppedRankNoticed, launchServe } from "./helpers/launch";
import { post } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const home = process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home");
/** About 1,000 tokens: two prefill chunks. */
const items = Array.from({ length: 100 }, (_, i) => `Item ${i} costs ${(i * 7) % 23} coins.`).join(" ");
let dir: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mlx-tp-watchdog-"));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/**
 * A pause five times shorter than the timeout: on a shared 2-core CI host, a rank let run for
 * 0.15 s between pauses may miss that window, and the silence is then two pauses and more.
 */
const peerTimeoutS = 3;

/**
 * Serves a deep narrow tiny model on 2 ranks with `flags` and --peer-timeout 3, and asks for a
 * ~1,000-token prompt while rank 1 is stopped 0.6 s out of every 0.75 s (a descheduled process)
 * until the answer comes: it must come, with no rank stopped.
 */
async function answersWhileRankOneIsDescheduled(flags: string[]): Promise<void> {
  const deep = join(dir, "deep");
  writeTinyModel(deep, { layers: 160, seed: 3, contextLength: 2048 });
  const server = await launchServe(home, 2, deep, [...flags, "--peer-timeout", String(peerTimeoutS)]);
  const rank1 = server.ranks().get(1)!;
  let answered = false;
  const pausing = (async () => {
    while (!answered) {
      try {
        process.kill(rank1, "SIGSTOP");
        await Bun.sleep(600);
        process.kill(rank1, "SIGCONT");
      } catch {
        return; // it exited
      }
      await Bun.sleep(150);
    }
  })();
  try {
    const started = performance.now();
    const r = await post(`${server.url}/v1/completions`, {
      model: deep,
      prompt: items,
      max_tokens: 2,
      temperature: 0,
    }).catch(async (error) => {
      // The launcher ends when a rank does; what the ranks said is the failure's cause.
      await Promise.race([server.proc.exited.then(() => server.reading), Bun.sleep(5000)]);
      throw new Error(`${error.message}; the ranks said:\n${server.stderr()}`);
    });
    expect(r.status).toBe(200);
    expect(r.json.usage.prompt_tokens).toBeGreaterThan(900);
    // Longer than the timeout: the test would otherwise prove nothing.
    expect(performance.now() - started).toBeGreaterThan(peerTimeoutS * 1000);
  } finally {
    answered = true;
    await pausing;
    server.proc.kill("SIGTERM");
  }
  expect(await server.proc.exited).toBe(0);
  await server.reading;
  expect(server.stderr()).not.toContain("--peer-timeout");
}

describe("mlx launch -n 2 -- serve --tensor-parallel --peer-timeout 3", () => {
  test("a ~1,000-token prompt while rank 1 keeps being descheduled (a busy machine) is answered", async () => {
    // A prefill chunk is hundreds of all_sums a few milliseconds apart, so it outlasts the
    // timeout here while rank 1's bytes stop only for a pause.
    await answersWhileRankOneIsDescheduled(["--tensor-parallel"]);
  }, 60_000);
});

describe("mlx launch -n 2 -- serve --layers 0-79,80-159 --peer-timeout 3 (a pipeline)", () => {
  test("a ~1,000-token prompt while rank 1 keeps being descheduled (a busy machine) is answered", async () => {
    // Rank 1 works through two prefill chunks of its 80 layers while rank 0 waits: it tells
    // rank 0 after each layer (Op.progress), so only a pause is silence.
    await answersWhileRankOneIsDescheduled(["--layers", "0-79,80-159"]);
  }, 60_000);
});

/**
 * Serves smollm2 on 2 ranks with `flags` and --peer-timeout 2, stops rank 1 (SIGSTOP) during a
 * ~1,000-token prompt's prefill: every rank must stop within the timeout, rank 0 saying `says`.
 */
async function stopsWhenRankOneStopsMidPrefill(flags: string[], says: RegExp): Promise<void> {
  const server = await launchServe(home, 2, "smollm2", [...flags, "--peer-timeout", "2"]);
  const ranks = server.ranks();
  try {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
    const answering = client.completions.create({ model: "smollm2", prompt: items, max_tokens: 4 }).catch((e) => e);
    await Bun.sleep(300);
    // Rank 0 is in the prefill: the server cannot answer until it exits.
    await expectStoppedRankNoticed(server, 1, 2000, says);
    expect(await answering).toBeInstanceOf(Error);
  } finally {
    for (const pid of ranks.values()) {
      try {
        process.kill(pid, "SIGKILL");
      } catch {}
    }
  }
}

describe("mlx launch -n 2 -- serve --tensor-parallel --peer-timeout 2", () => {
  test("a rank that stops answering mid-prefill (SIGSTOP): every rank stops within the timeout, naming it", async () => {
    await stopsWhenRankOneStopsMidPrefill(
      ["--tensor-parallel"],
      /error: rank 0: no answer from rank 1 for 2 s \(--peer-timeout\); stopping/,
    );
  }, 60_000);
});

describe("mlx launch -n 2 -- serve --layers 0-14,15-29 --peer-timeout 2 (a pipeline)", () => {
  test("a rank that stops answering mid-prefill (SIGSTOP): every rank stops within the timeout, naming it", async () => {
    // Rank 1's progress stops, and so do its signs of life: whichever rank 0 misses first.
    await stopsWhenRankOneStopsMidPrefill(
      ["--layers", "0-14,15-29"],
      /error: rank 0: (no answer from the pipeline \(ranks 1-1\)|no word from rank 1) for 2 s \(--peer-timeout\); stopping/,
    );
  }, 60_000);
});

describe("mlx launch -n 2 -- serve --tensor-parallel --peer-timeout 3", () => {
  test("kill -9 of rank 1 mid-stream: the stream ends with the error, and the launch ends at once", async () => {
    const tiny = join(dir, "tiny-stream");
    writeTinyModel(tiny, { layers: 24, seed: 1, contextLength: 2048 });
    const server = await launchServe(home, 2, tiny, ["--tensor-parallel", "--peer-timeout", "3"]);
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
    let chunks = 0;
    const answering = client.completions
      .create({ model: tiny, prompt: "Count:", max_tokens: 1500, temperature: 0, stream: true })
      .then(async (stream) => {
        for await (const _ of stream) chunks++;
      })
      .catch((e) => e);
    while (chunks < 3) await Bun.sleep(10);
    const killedAt = performance.now();
    process.kill(server.ranks().get(1)!, "SIGKILL");
    expect(await server.proc.exited).not.toBe(0);
    // Before: MLX's ring left rank 0's forward pass waiting for ever on the lost connection, and
    // the launcher killed it 2 s later, cutting the stream (ECONNRESET).
    expect(performance.now() - killedAt).toBeLessThan(2000);
    await server.reading;
    expect(server.stderr()).toContain("error: rank 1 was killed by SIGKILL");
    const error = (await answering) as Error;
    expect(error).toBeInstanceOf(OpenAI.APIError);
    expect(error.message).toContain("lost rank 1 of the tensor-parallel group: ");
  }, 60_000);
});

describe("serve --tensor-parallel, ranks started by hand", () => {
  test("when rank 1 dies, /health and /ready say 503, then rank 0 exits within the timeout, naming it", async () => {
    const tiny = join(dir, "tiny");
    writeTinyModel(tiny, { layers: 2, seed: 1 });
    const args = ["serve", "--port", "0", "-m", tiny, "--tensor-parallel", "--peer-timeout", "3"];
    await expectKilledRankOneNoticed(
      home,
      join(dir, "ring-serve.json"),
      args,
      "lost rank 1 of the tensor-parallel group",
      3000,
    );
  }, 60_000);
});
