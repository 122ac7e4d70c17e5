// `mlx launch` as a user drives it: which commands it starts on every rank, help, hostfiles
// that are not what mlx.launch writes, a launcher killed by a signal it cannot pass on (no rank
// left running), and a prompt cache saved by a split model (every rank's share written before it ends).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loopbackHosts } from "../src/cmd/launch";
import { readHostfile, ringHostfile } from "../src/cmd/launch-plan";
import { cliRunner } from "./helpers/cli";
import { launchServe } from "./helpers/launch";
import { writeTinyModel } from "./helpers/tiny-model";

const home = process.env.MLX_HOME ?? join(import.meta.dir, "..", ".cache", "mlx-home");
const mlx = cliRunner(home);
let dir: string;
let tiny: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "mlx-launch-cli-"));
  tiny = join(dir, "tiny3");
  writeTinyModel(tiny, { layers: 3, seed: 3 });
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Whether process `pid` is still there. */
const alive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Waits up to `ms` for every one of `pids` to be gone; whether they all went. */
async function allGone(pids: number[], ms: number): Promise<boolean> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await Bun.sleep(100))
    if (!pids.some(alive)) return true;
  return !pids.some(alive);
}

describe("mlx launch: the command after --", () => {
  test("a command that splits no model (list, a typo, launch itself) is refused before any rank starts", async () => {
    for (const command of ["list", "lsit", "launch"]) {
      const { stdout, stderr, code } = await mlx(["launch", "-n", "2", "--", command]);
      expect(code).toBe(1);
      expect(stdout).toBe("");
      expect(stderr).toBe(
        `error: mlx launch runs run, chat, serve, bench, cache-prompt with the model split across ranks; '${command}' is not one of them\n`,
      );
    }
  });

  test("-- run --help shows run's help once, not launch's", async () => {
    const { stdout, stderr, code } = await mlx(["launch", "-n", "2", "--", "run", "--help"]);
    expect(code).toBe(0);
    expect(stdout).toContain("USAGE mlx run");
    expect(stdout).not.toContain("USAGE mlx launch");
    expect(stderr).not.toContain("[rank 1]");
    // launch's own --help still shows launch's.
    expect((await mlx(["launch", "--help", "--", "run"])).stdout).toContain("USAGE mlx launch");
  });
});

describe("mlx launch: hostfiles", () => {
  test('an mlx.launch entry whose "ips" is not a list of addresses, or whose "ssh" is empty, is refused', () => {
    const file = join(dir, "hosts.json");
    writeFileSync(file, JSON.stringify([{ ssh: "127.0.0.1", ips: "127.0.0.1" }, { ssh: "127.0.0.1" }]));
    expect(() => readHostfile(file, 5000)).toThrow(`entry 0's "ips" must be a list of addresses (got "127.0.0.1")`);
    writeFileSync(file, JSON.stringify([{ ssh: "127.0.0.1" }, { ssh: "127.0.0.1", ips: [5] }]));
    expect(() => readHostfile(file, 5000)).toThrow(`entry 1's "ips" must be a list of addresses (got [5])`);
    writeFileSync(file, JSON.stringify([{ ssh: "" }, { ssh: "127.0.0.1" }]));
    expect(() => readHostfile(file, 5000)).toThrow('entry 0 needs "ssh"');
  });
});

describe("mlx launch: ports", () => {
  test("a rank's port that another process holds: one line naming that rank and its address", async () => {
    const taken = createServer();
    await new Promise<void>((resolve) => taken.listen(0, "127.0.0.1", resolve));
    const port = (taken.address() as { port: number }).port;
    try {
      const [free] = await loopbackHosts(1);
      const file = join(dir, "taken.json");
      writeFileSync(file, ringHostfile([free!, { addresses: [`127.0.0.1:${port}`] }]));
      const { stderr, code } = await mlx(["launch", "--hostfile", file, "--", "run", "-m", tiny, "hi"]);
      expect(code).toBe(1);
      expect(stderr).toContain(
        `error: rank 1 exited with status 1: rank 1: cannot listen on 127.0.0.1:${port}: the port is in use (another launch or server?)\n`,
      );
    } finally {
      taken.close();
    }
  }, 60_000);
});

/** A port free on both 127.0.0.1 and the next one on 127.0.0.2, as an mlx.launch hostfile numbers them. */
async function freePortPair(): Promise<number> {
  const bindable = (ip: string, port: number) =>
    new Promise<boolean>((resolve) => {
      const server = createServer();
      server.once("error", () => resolve(false));
      server.listen(port, ip, () => server.close(() => resolve(true)));
    });
  for (;;) {
    const port = 20_000 + Math.floor(Math.random() * 40_000);
    if ((await bindable("127.0.0.1", port)) && (await bindable("127.0.0.2", port + 1))) return port;
  }
}

describe("mlx launch: a rank that fails after rank 0 answered", () => {
  test("its connection dropping at the end is a failed launch, named, not a success", async () => {
    // An ssh that runs the rank here as sshd would, then reports the connection lost (status 255).
    const bin = join(dir, "bin");
    mkdirSync(bin, { recursive: true });
    writeFileSync(
      join(bin, "ssh"),
      '#!/bin/sh\nfor last; do :; done\nsh -c "$last"\necho "Connection to far-box closed by remote host." >&2\nexit 255\n',
      { mode: 0o755 },
    );
    const file = join(dir, "far.json");
    writeFileSync(
      file,
      JSON.stringify([
        { ssh: "localhost", ips: ["127.0.0.1"] },
        { ssh: "far-box", ips: ["127.0.0.2"] },
      ]),
    );
    const viaFakeSsh = cliRunner(home, { PATH: `${bin}:${process.env.PATH}` });
    const { stdout, stderr, code } = await viaFakeSsh([
      "launch",
      "--hostfile",
      file,
      "--starting-port",
      String(await freePortPair()),
      "--",
      "run",
      "-m",
      tiny,
      "--temp",
      "0",
      "--max-tokens",
      "4",
      "hi",
    ]);
    expect(stdout.length).toBeGreaterThan(0); // rank 0 answered
    expect(stderr).toContain("error: rank 1 exited with status 255: Connection to far-box closed by remote host.\n");
    expect(code).toBe(1);
  }, 60_000);
});

describe("mlx launch: the launcher ended", () => {
  test.each(["SIGKILL", "SIGHUP"] as const)(
    "a launcher killed by %s (it passes nothing on) leaves no rank serving",
    async (signal) => {
      const server = await launchServe(home, 2, tiny);
      const ranks = [...server.ranks().values()];
      expect(ranks.length).toBe(2);
      server.proc.kill(signal);
      await server.proc.exited;
      // Rank 0 sees it within a second; rank 1 then loses rank 0.
      const gone = await allGone(ranks, 15_000);
      for (const pid of ranks) if (alive(pid)) process.kill(pid, "SIGKILL");
      expect(gone).toBe(true);
    },
    60_000,
  );
});

describe("mlx launch -- cache-prompt", () => {
  test("every rank's share is written before the launch ends, and a launched run uses the file", async () => {
    // Long enough that rank 1 is still prefilling when rank 0 has written its part.
    const document = "The quick brown fox jumps over the lazy dog. ".repeat(60);
    const file = join(dir, "doc.safetensors");
    const saved = await mlx(["launch", "-n", "2", "--", "cache-prompt", file], document);
    expect(saved.stderr).toBe("");
    expect(saved.code).toBe(0);
    expect(existsSync(`${file}.rank1`)).toBe(true);
    const question = ["run", "--temp", "0", "--max-tokens", "8", "--prompt-cache", file, "What jumps?"];
    const answer = await mlx(["launch", "-n", "2", "--", ...question]);
    expect(answer.stderr).toBe("");
    expect(answer.code).toBe(0);
    expect(answer.stdout.trim().length).toBeGreaterThan(0);
  }, 120_000);
});
