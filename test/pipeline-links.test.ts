// Several network links per machine: a hostfile listing several addresses per rank (MLX's ring
// format; mlx.launch's with several IPs becomes one), here 127.0.0.1 and 127.0.0.2 on loopback.
// MLX's ring backend then connects each neighbour once per address and splits every transfer
// over the connections by its size, so a message's header and payload must be sent as the
// receiver takes them: pipelines and tensor parallel still give the single process's tokens.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { readHostfile } from "../src/cmd/launch-plan";
import { cliRunner } from "./helpers/cli";
import { answersAlone, launchServe, streamTogether, writeLoopbackRing } from "./helpers/launch";
import { eventually } from "./helpers/serve";
import { writeTinyModel } from "./helpers/tiny-model";

const home = process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home");
const mlx = cliRunner(home);
let dir: string;
let tiny: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mlx-links-"));
  tiny = join(dir, "tiny5");
  writeTinyModel(tiny, { layers: 5, seed: 5 });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const tokenIds = (stdout: string): number[] => JSON.parse(stdout).token_ids;

/** A ring hostfile of `n` ranks with two loopback addresses each. */
const twoLinks = (n: number) => writeLoopbackRing(join(dir, `ring-${n}x2.json`), n, 2);

/**
 * The established TCP connections accepted on `addresses` (host:port on 127.0.0.0/8), from
 * /proc/net/tcp: its local addresses are hex, the IP's bytes backwards.
 */
function acceptedOn(addresses: string[]): number {
  const hex = (address: string) => {
    const [ip, port] = address.split(":");
    const bytes = ip!.split(".").map((b) => Number(b).toString(16).padStart(2, "0").toUpperCase());
    return `${bytes.reverse().join("")}:${Number(port).toString(16).padStart(4, "0").toUpperCase()}`;
  };
  const wanted = new Set(addresses.map(hex));
  const rows = readFileSync("/proc/net/tcp", "utf8").split("\n").slice(1);
  return rows.filter((row) => {
    const [, local, , state] = row.trim().split(/\s+/);
    return state === "01" && wanted.has(local!);
  }).length;
}

describe("a hostfile with two addresses per rank", () => {
  test("run on 2 and 3 ranks, and --tensor-parallel on 2: the single process's tokens", async () => {
    // A prompt of many tokens: its prefill's hidden states (256 bytes a token) are split over both connections.
    const prompt = ["run", "-m", tiny, "--json", "--max-tokens", "16", "--temp", "0.9", "--seed", "7"];
    const text = "Tell me a story about a dog, a cat and a bird who travel together.";
    const alone = await mlx([...prompt, text]);
    expect(alone.code).toBe(0);
    expect(tokenIds(alone.stdout)).toHaveLength(16);
    for (const [n, extra] of [
      [2, []],
      [3, []],
      [2, ["--tensor-parallel"]],
    ] as const) {
      const split = await mlx(["launch", "--hostfile", await twoLinks(n), "--", ...prompt, ...extra, text]);
      expect(split.stderr).toBe("");
      expect(split.code).toBe(0);
      expect(tokenIds(split.stdout)).toEqual(tokenIds(alone.stdout));
    }
  }, 120_000);

  test("serve on 3 ranks answers batched streamed requests as one process, over both links", async () => {
    // Prompts of more than 4 tokens, and one micro-batch: each prefill and each decode step of
    // the five rows carries over 1 KiB of hidden states, split over both connections.
    const requests = [
      "The sky over the sea at night",
      "A dog and a cat sat on the mat",
      "Numbers: one, two, three, four",
      "Hello there, how are you today?",
      "Rain falls on the green hills",
    ].map((prompt, i) => ({
      model: tiny,
      prompt,
      max_tokens: 8 + 2 * i,
      temperature: 0,
    }));
    const expected = await answersAlone(requests);
    const ring = await twoLinks(3);
    const server = await launchServe(home, ring, tiny, ["--peer-timeout", "5", "--micro-batches", "1"]);
    try {
      expect(await streamTogether(server.url, requests)).toEqual(expected);
      // Each rank accepted its left neighbour on its second address too (read after the answers,
      // whose hidden states went over both: once failed in CI, read just after start-up).
      const second = (JSON.parse(readFileSync(ring, "utf8")) as string[][]).map((addresses) => addresses[1]!);
      await eventually(() => acceptedOn(second) === 3);
    } finally {
      server.proc.kill("SIGTERM");
    }
    expect(await server.proc.exited).toBe(0);
  }, 120_000);
});

/** The first of `count` consecutive ports free on 127.0.0.1 (mlx.launch numbers its ports up from one). */
async function freePorts(count: number): Promise<number> {
  for (;;) {
    const first = createServer();
    await new Promise<void>((resolve) => first.listen(0, "127.0.0.1", resolve));
    const start = (first.address() as { port: number }).port;
    const held = [first];
    for (let port = start + 1; port < start + count; port++) {
      const next = createServer();
      const ok = await new Promise<boolean>((resolve) => {
        next.once("error", () => resolve(false));
        next.listen(port, "127.0.0.1", () => resolve(true));
      });
      if (!ok) break;
      held.push(next);
    }
    await Promise.all(held.map((server) => new Promise((resolve) => server.close(resolve))));
    if (held.length === count && start + count <= 65536) return start;
  }
}

describe("mlx.launch's hostfile forms", () => {
  test("the object form (backend, envs, hosts with ips and rdma) and --connections-per-ip, as mlx.launch numbers the ports", () => {
    const file = join(dir, "object.json");
    const hosts = [
      { ssh: "localhost", ips: ["127.0.0.1"], rdma: [null, "rdma_en2"] },
      { ssh: "mac2", ips: ["10.0.0.2", "10.0.1.2"], rdma: ["rdma_en2", null] },
    ];
    writeFileSync(file, JSON.stringify({ backend: "ring", envs: ["MLX_METAL_FAST_SYNCH=1", "A=b=c"], hosts }));
    const env = { MLX_METAL_FAST_SYNCH: "1", A: "b=c" };
    expect(readHostfile(file, 5000)).toEqual([
      { addresses: ["127.0.0.1:5000"], ssh: undefined, env },
      { addresses: ["10.0.0.2:5001", "10.0.1.2:5002"], ssh: "mac2", env },
    ]);
    // Each IP on that many ports, counting up (mlx.launch's launch_ring).
    expect(readHostfile(file, 5000, 2)).toEqual([
      { addresses: ["127.0.0.1:5000", "127.0.0.1:5001"], ssh: undefined, env },
      { addresses: ["10.0.0.2:5002", "10.0.0.2:5003", "10.0.1.2:5004", "10.0.1.2:5005"], ssh: "mac2", env },
    ]);
    writeFileSync(file, JSON.stringify({ hosts }));
    expect(readHostfile(file, 5000)[1]).toEqual({ addresses: ["10.0.0.2:5001", "10.0.1.2:5002"], ssh: "mac2" });
  });

  test("what the ring cannot do, or a hostfile that is not one, is a clear error", () => {
    const file = join(dir, "bad.json");
    const hosts = [{ ssh: "localhost", ips: ["127.0.0.1"] }];
    const error = (data: unknown, perIp = 1) => {
      writeFileSync(file, JSON.stringify(data));
      try {
        readHostfile(file, 5000, perIp);
      } catch (e) {
        return (e as Error).message;
      }
      throw new Error("no error");
    };
    expect(error({ backend: "jaccl", hosts })).toContain(
      'backend "jaccl" (RDMA over Thunderbolt, on macOS) is not supported',
    );
    expect(error({ backend: "mpi", hosts })).toContain('backend "mpi" (MPI) is not supported');
    expect(error({ backend: "tcp", hosts })).toContain('unknown backend "tcp"');
    expect(error({ envs: ["A=1"] })).toContain('"hosts" must be a list of hosts');
    expect(error({ envs: ["NOEQUALS"], hosts })).toContain('"envs" entry "NOEQUALS" is not "NAME=value"');
    expect(error({ envs: "A=1", hosts })).toContain('"envs" must be a list');
    expect(error([["127.0.0.1:6000"], ["127.0.0.1:6001"]], 2)).toContain(
      "--connections-per-ip is for mlx.launch's form",
    );
    expect(error(42)).toContain("expected a JSON list of hosts, or an object");
  });

  test("a loopback launch on the object form with 2 connections per IP: the single process's tokens", async () => {
    const prompt = ["run", "-m", tiny, "--json", "--max-tokens", "12", "--temp", "0.9", "--seed", "7"];
    const text = "Tell me a story about a dog, a cat and a bird who travel together.";
    const alone = await mlx([...prompt, text]);
    expect(alone.code).toBe(0);
    const start = await freePorts(4);
    const file = join(dir, "object-loopback.json");
    const hosts = [
      { ssh: "localhost", ips: ["127.0.0.1"], rdma: [] },
      { ssh: "127.0.0.1", ips: ["127.0.0.1"] },
    ];
    writeFileSync(file, JSON.stringify({ backend: "ring", envs: ["MLX_LAUNCH_HOSTFILE_ENV=1"], hosts }));
    const flags = ["--starting-port", String(start), "--connections-per-ip", "2"];
    const split = await mlx(["launch", "--hostfile", file, ...flags, "--", ...prompt, text]);
    expect(split.stderr).toBe("");
    expect(split.code).toBe(0);
    expect(tokenIds(split.stdout)).toEqual(tokenIds(alone.stdout));
    // The same flag on the ring's own form, where every port is listed: refused, clearly.
    writeFileSync(file, JSON.stringify([["127.0.0.1:6000"], ["127.0.0.1:6001"]]));
    const refused = await mlx(["launch", "--hostfile", file, "--connections-per-ip", "2", "--", ...prompt, text]);
    expect(refused.code).not.toBe(0);
    expect(refused.stderr).toContain("--connections-per-ip is for mlx.launch's form");
  }, 120_000);
});
