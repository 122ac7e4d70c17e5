// Several network links per machine: a hostfile listing several addresses per rank (MLX's ring
// format; mlx.launch's with several IPs becomes one), here 127.0.0.1 and 127.0.0.2 on loopback.
// MLX's ring backend then connects each neighbour once per address and splits every transfer
// over the connections by its size, so a message's header and payload must be sent as the
// receiver takes them: pipelines and tensor parallel still give the single process's tokens.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { cliRunner } from "./helpers/cli";
import { answersAlone, launchServe, streamTogether, writeLoopbackRing } from "./helpers/launch";
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
      // Each rank accepted its left neighbour on its second address too.
      const second = (JSON.parse(readFileSync(ring, "utf8")) as string[][]).map((addresses) => addresses[1]!);
      expect(acceptedOn(second)).toBe(3);
      expect(await streamTogether(server.url, requests)).toEqual(expected);
    } finally {
      server.proc.kill("SIGTERM");
    }
    expect(await server.proc.exited).toBe(0);
  }, 120_000);
});
