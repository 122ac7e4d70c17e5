import { afterEach, beforeEach, describe, expect, test } from "bun:test";
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { downloadToFile, type DownloadProgress } from "../src/store/download";
import { createProgressReporter } from "../src/store/progress";
import { fakeWeights, serveBytes, sha256Hex, startServer, type TestServer } from "./helpers/store";

const TEST_TIMEOUT_MS = 15_000;
const data = fakeWeights(1_500_000);
const digest = sha256Hex(data);
// Fast retries keep the failure tests quick; the logic is the same as with real delays.
const fast = { retryDelayMs: 5, stallTimeoutMs: 2_000 };

let dir: string;
let server: TestServer | undefined;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "mlx-download-"));
});

afterEach(async () => {
  await server?.close();
  server = undefined;
  rmSync(dir, { recursive: true, force: true });
});

const dest = () => join(dir, "model.bin");

function expectNoFiles(): void {
  expect(existsSync(dest())).toBe(false);
  expect(existsSync(`${dest()}.partial`)).toBe(false);
}

describe("downloadToFile", () => {
  test(
    "downloads, verifies and reports progress",
    async () => {
      server = await startServer((request) => serveBytes(data, request));
      const seen: DownloadProgress[] = [];
      const result = await downloadToFile(`${server.url}/file`, dest(), {
        expectedSha256: digest,
        expectedSize: data.length,
        onProgress: (p) => seen.push(p),
      });

      expect(result).toEqual({ path: dest(), sha256: digest, size: data.length });
      expect(readFileSync(dest()).equals(data)).toBe(true);
      expect(existsSync(`${dest()}.partial`)).toBe(false);
      expect(seen.at(-1)).toEqual({ received: data.length, total: data.length });
      expect(server.requests[0]!.headers.range).toBeUndefined();
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "resumes with Range after the connection drops mid-file",
    async () => {
      server = await startServer((request) =>
        serveBytes(data, request, request.headers.range ? {} : { dropAfter: 600_000 }),
      );
      const result = await downloadToFile(`${server.url}/file`, dest(), { expectedSha256: digest, ...fast });

      expect(result.sha256).toBe(digest);
      expect(readFileSync(dest()).equals(data)).toBe(true);
      expect(server.requests).toHaveLength(2);
      const resumedAt = Number(server.requests[1]!.headers.range?.match(/^bytes=(\d+)-$/)?.[1]);
      expect(resumedAt).toBeGreaterThan(0);
      expect(resumedAt).toBeLessThanOrEqual(600_000);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "resumes a .partial left by an earlier run, hashing the bytes already on disk",
    async () => {
      writeFileSync(`${dest()}.partial`, data.subarray(0, 700_000));
      server = await startServer((request) => serveBytes(data, request));
      const result = await downloadToFile(`${server.url}/file`, dest(), {
        expectedSha256: digest,
        expectedSize: data.length,
      });

      expect(result.sha256).toBe(digest);
      expect(server.requests.map((r) => r.headers.range)).toEqual(["bytes=700000-"]);
      expect(readFileSync(dest()).equals(data)).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a .partial left by an earlier run with wrong bytes in it is fetched again from zero, not failed",
    async () => {
      const damaged = data.slice(0, 700_000);
      damaged[1000]! ^= 0xff; // a bit flipped on disk, or the tail a crash left unwritten
      writeFileSync(`${dest()}.partial`, damaged);
      server = await startServer((request) => serveBytes(data, request));
      const result = await downloadToFile(`${server.url}/file`, dest(), {
        expectedSha256: digest,
        expectedSize: data.length,
      });

      expect(result.sha256).toBe(digest);
      expect(server.requests.map((r) => r.headers.range ?? "none")).toEqual(["bytes=700000-", "none"]);
      expect(readFileSync(dest()).equals(data)).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "restarts from zero when the server ignores Range",
    async () => {
      writeFileSync(`${dest()}.partial`, data.subarray(0, 700_000));
      server = await startServer(() => ({ status: 200, body: data }));
      const result = await downloadToFile(`${server.url}/file`, dest(), { expectedSha256: digest });

      expect(server.requests[0]!.headers.range).toBe("bytes=700000-");
      expect(result.size).toBe(data.length);
      expect(readFileSync(dest()).equals(data)).toBe(true);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a 416 for a .partial that already holds the whole file completes it",
    async () => {
      writeFileSync(`${dest()}.partial`, data);
      server = await startServer((request) => serveBytes(data, request));
      const result = await downloadToFile(`${server.url}/file`, dest(), { expectedSha256: digest });

      expect(server.requests.map((r) => r.headers.range)).toEqual([`bytes=${data.length}-`]);
      expect(result.sha256).toBe(digest);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a .partial longer than the remote file is discarded",
    async () => {
      writeFileSync(`${dest()}.partial`, fakeWeights(data.length + 10, 9));
      server = await startServer((request) => serveBytes(data, request));
      const result = await downloadToFile(`${server.url}/file`, dest(), { expectedSha256: digest });

      expect(server.requests.map((r) => r.headers.range ?? "none")).toEqual([`bytes=${data.length + 10}-`, "none"]);
      expect(result.sha256).toBe(digest);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a wrong checksum fails clearly and leaves nothing behind",
    async () => {
      server = await startServer((request) => serveBytes(data, request));
      const wrong = "0".repeat(64);
      const error = await downloadToFile(`${server.url}/file`, dest(), { expectedSha256: wrong }).catch((e) => e);

      expect(error.message).toBe(`checksum mismatch for ${server.url}/file: expected sha256 ${wrong}, got ${digest}`);
      expectNoFiles();
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a 404 names the URL and status, without retrying",
    async () => {
      server = await startServer(() => ({ status: 404, body: "not here" }));
      const error = await downloadToFile(`${server.url}/missing.whl`, dest(), fast).catch((e) => e);

      expect(error.message).toBe(`GET ${server.url}/missing.whl: HTTP 404 Not Found`);
      expect(server.requests).toHaveLength(1);
      expectNoFiles();
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "server errors are retried",
    async () => {
      server = await startServer((request) =>
        server!.requests.length < 3 ? { status: 503 } : serveBytes(data, request),
      );
      const result = await downloadToFile(`${server.url}/file`, dest(), { expectedSha256: digest, ...fast });

      expect(result.sha256).toBe(digest);
      expect(server.requests).toHaveLength(3);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a busy server's Retry-After is waited out before asking again, as huggingface_hub does",
    async () => {
      // A rate limiter: it refuses every request that comes back before the time it asked for.
      let refusedUntil = 0;
      server = await startServer((request) => {
        if (server!.requests.length > 1 && Date.now() >= refusedUntil) return serveBytes(data, request);
        refusedUntil = Date.now() + 900;
        return { status: 503, headers: { "Retry-After": "1" } };
      });
      const result = await downloadToFile(`${server.url}/file`, dest(), {
        expectedSha256: digest,
        ...fast,
        retries: 2,
      });

      expect(result.sha256).toBe(digest);
      expect(server.requests).toHaveLength(2);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "gives up after the allowed retries when no byte gets through",
    async () => {
      server = await startServer(() => ({ status: 200, body: data, dropAfter: 0 }));
      const error = await downloadToFile(`${server.url}/file`, dest(), { ...fast, retries: 2 }).catch((e) => e);

      expect(error.message).toContain(`${server.url}/file`);
      expect(error.message).toContain("gave up after 2 retries");
      expect(server.requests).toHaveLength(3);
      expect(existsSync(dest())).toBe(false);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "a stalled connection is dropped and resumed",
    async () => {
      server = await startServer((request) =>
        serveBytes(data, request, request.headers.range ? {} : { stallAfter: 500_000 }),
      );
      const result = await downloadToFile(`${server.url}/file`, dest(), {
        expectedSha256: digest,
        retryDelayMs: 5,
        stallTimeoutMs: 300,
      });

      expect(result.sha256).toBe(digest);
      expect(server.requests[1]!.headers.range).toMatch(/^bytes=\d+-$/);
    },
    TEST_TIMEOUT_MS,
  );

  test.skipIf(!existsSync("/dev/full"))(
    "a full disk is reported clearly and leaves nothing that looks complete",
    async () => {
      symlinkSync("/dev/full", `${dest()}.partial`); // every write to it fails with ENOSPC
      server = await startServer((request) => serveBytes(data, request));
      const error = await downloadToFile(`${server.url}/file`, dest(), { expectedSha256: digest, ...fast }).catch(
        (e) => e,
      );

      expect(error.message).toContain("no space left on device");
      expect(existsSync(dest())).toBe(false);
      expect(server.requests).toHaveLength(1);
    },
    TEST_TIMEOUT_MS,
  );

  test(
    "an abort stops the transfer",
    async () => {
      server = await startServer((request) => serveBytes(data, request, { stallAfter: 1000 }));
      const controller = new AbortController();
      setTimeout(() => controller.abort(new Error("cancelled by test")), 100);
      const error = await downloadToFile(`${server.url}/file`, dest(), { signal: controller.signal, ...fast }).catch(
        (e) => e,
      );

      expect(error.message).toBe("cancelled by test");
      expect(existsSync(dest())).toBe(false);
    },
    TEST_TIMEOUT_MS,
  );
});

describe("createProgressReporter", () => {
  function fakeStream(isTTY: boolean) {
    const writes: string[] = [];
    return { writes, stream: { isTTY, columns: 100, write: (text: string) => writes.push(text) } };
  }

  test("draws a bar with bytes, speed and ETA on a terminal", () => {
    let clock = 0;
    const { writes, stream } = fakeStream(true);
    const reporter = createProgressReporter("pulling smollm2", stream, () => clock);
    reporter.update({ received: 0, total: 100_000_000 });
    clock = 1000;
    reporter.update({ received: 25_000_000, total: 100_000_000 });
    clock = 1050; // too soon after the last draw: skipped
    reporter.update({ received: 26_000_000, total: 100_000_000 });
    expect(writes).toHaveLength(2);
    expect(writes[1]).toStartWith("\rpulling smollm2 [##########------------------------------]");
    expect(writes[1]).toContain("25.0 MB/100.0 MB  25.0 MB/s  ETA 0:03");
    reporter.finish();
    expect(writes.at(-1)).toBe("\n");
  });

  test("prints one summary line when stderr is not a terminal", () => {
    let clock = 0;
    const { writes, stream } = fakeStream(false);
    const reporter = createProgressReporter("pulling smollm2", stream, () => clock);
    reporter.update({ received: 4_000_000, total: 20_000_000, resumedAt: 4_000_000 }); // resumed: these bytes do not count towards the speed
    clock = 1000;
    reporter.update({ received: 10_000_000, total: 20_000_000 });
    clock = 2000;
    reporter.update({ received: 20_000_000, total: 20_000_000 });
    expect(writes).toEqual([]);
    reporter.finish();
    expect(writes).toEqual(["pulling smollm2: 16.0 MB in 2.0 s (8.0 MB/s), resumed at 4.0 MB\n"]);
  });

  test("several files: each resume named where it happened, and only the bytes that came over the network count", () => {
    let clock = 0;
    const { writes, stream } = fakeStream(false);
    const reporter = createProgressReporter("pulling org/m", stream, () => clock);
    reporter.update({ received: 0, total: 100_000_000, file: "config.json" });
    clock = 500;
    reporter.update({ received: 585, total: 100_000_000, file: "config.json" });
    // The weights were 37 MB in when an earlier pull was killed.
    reporter.update({ received: 37_000_585, total: 100_000_000, resumedAt: 37_000_000, file: "model.safetensors" });
    clock = 2000;
    reporter.update({ received: 100_000_000, total: 100_000_000, file: "model.safetensors" });
    reporter.finish();
    expect(writes).toEqual(["pulling org/m: 63.0 MB in 2.0 s (31.5 MB/s), resumed model.safetensors at 37.0 MB\n"]);
  });

  test("on a terminal, the resumes follow the final bar", () => {
    const { writes, stream } = fakeStream(true);
    const reporter = createProgressReporter("pulling org/m", stream, () => 0);
    reporter.update({ received: 5_000_000, total: 10_000_000, resumedAt: 5_000_000, file: "model.safetensors" });
    reporter.update({ received: 10_000_000, total: 10_000_000, file: "model.safetensors" });
    reporter.finish();
    expect(writes.slice(-2)).toEqual(["\n", "pulling org/m: resumed model.safetensors at 5.0 MB\n"]);
  });

  test("stays silent when nothing was transferred", () => {
    const { writes, stream } = fakeStream(false);
    createProgressReporter("pulling", stream).finish();
    expect(writes).toEqual([]);
  });
});
