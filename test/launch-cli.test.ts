// `mlx launch` as a user drives it: which commands it starts on every rank, help, hostfiles
// that are not what mlx.launch writes, a launcher killed by a signal it cannot pass on (no rank
// left running), and a prompt cache saved by a split model (every rank's share written before it ends).
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loopbackHosts } from "../src/cmd/launch";
import { readHostfile, ringHostfile } from "../src/cmd/launch-plan";
import OpenAI from "openai";
import { cliRunner, mainScript } from "./helpers/cli";
import { launchServe, rankPids } from "./helpers/launch";
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

  test("launch's unknown flags suggest only what is close: not -n for every flag with an n in it", async () => {
    for (const [given, hint] of [
      ["--tensor-parallel", ""],
      ["--json", ""],
      ["--planned", " (did you mean --plan?)"],
      ["--connections", " (did you mean --connections-per-ip?)"],
    ]) {
      const { stderr, code } = await mlx(["launch", "-n", "2", given!, "--", "run", "hi"]);
      expect(code).toBe(1);
      expect(stderr).toBe(`error: unknown option ${given} for mlx launch${hint}; mlx launch --help lists them\n`);
    }
  });

  test("-n followed by a value starting with '-' says what is wrong with it, as any other flag does (not 'Option '-n' argument is ambiguous.')", async () => {
    for (const [value, refusal] of [
      ["-1", "-n must be a whole number > 0 (got '-1')"],
      ["-x", "-n takes a value: write one that starts with '-' as -n=<value>"],
    ]) {
      const { stdout, stderr, code } = await mlx(["launch", "-n", value!, "--", "run", "hi"]);
      expect(stdout).toBe("");
      expect(stderr).toBe(`error: ${refusal}\n`);
      expect(code).toBe(1);
    }
  });

  test("the command's own --rank or --hostfile (which would win over launch's) is refused at once, not left to hang", async () => {
    const ring = join(dir, "own-ring.json");
    writeFileSync(ring, JSON.stringify([["127.0.0.1:1"], ["127.0.0.1:2"], ["127.0.0.1:3"]]));
    for (const [flag, ...value] of [["--rank", "1"], ["--rank=1"], ["--hostfile", ring]]) {
      const { stdout, stderr, code } = await mlx(["launch", "-n", "2", "--", "run", "-m", tiny, flag!, ...value, "hi"]);
      expect(stdout).toBe("");
      expect(stderr).toBe(
        `error: mlx launch gives each rank its --hostfile and --rank: leave '${flag!.split("=")[0]}' out of the command (mlx launch --hostfile FILE sets the hosts)\n`,
      );
      expect(code).toBe(1);
    }
  }, 60_000);

  test("what would run whole on every rank (bench --url, a remote model) is refused before any rank starts", async () => {
    const bench = await mlx(["launch", "-n", "2", "--", "bench", "--url", "http://127.0.0.1:9", "--requests", "1"]);
    expect(bench.stdout).toBe("");
    expect(bench.stderr).toBe(
      "error: bench --url measures a server, with no model to split: run it without mlx launch\n",
    );
    expect(bench.code).toBe(1);
    // A models.toml alias of a provider: each rank would send the provider its own request.
    const remoteHome = join(dir, "remote-home");
    mkdirSync(remoteHome, { recursive: true });
    writeFileSync(
      join(remoteHome, "models.toml"),
      '[models.far]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "smollm2"\n',
    );
    const remote = await cliRunner(remoteHome)(["launch", "-n", "2", "--", "run", "-m", "far", "hi"]);
    expect(remote.stdout).toBe("");
    expect(remote.stderr).toBe(
      "error: 'far' is a remote model (models.toml): its provider runs it, with nothing to split across ranks\n",
    );
    expect(remote.code).toBe(1);
  }, 60_000);

  test("a misspelt flag of the command is one line before any rank starts, not every rank's and the launcher's", async () => {
    for (const [command, hint] of [
      ["run", " (did you mean --temp?)"],
      ["serve", ""],
    ]) {
      const { stdout, stderr, code } = await mlx([
        "launch",
        "-n",
        "2",
        "--",
        command!,
        "-m",
        tiny,
        "--temprature",
        "0",
      ]);
      expect(stdout).toBe("");
      expect(stderr).toBe(
        `error: unknown option --temprature for mlx ${command}${hint}; mlx ${command} --help lists them\n`,
      );
      expect(code).toBe(1);
    }
    // Past the command's own --, a word of the prompt.
    const prompt = await mlx(["launch", "-n", "2", "--", "run", "-m", tiny, "--max-tokens", "1", "--", "--temprature"]);
    expect(prompt.code).toBe(0);
  }, 60_000);

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

describe("mlx launch: the ranks' split flags", () => {
  test('an empty --layers (an unset "$SPLIT") is refused, in --plan and in a launched run, not taken as the default split', async () => {
    const refusal = "error: --layers is empty: give one range of layers per rank, e.g. 0-9,10-29\n";
    const plan = await mlx(["launch", "-n", "2", "--plan", "--", "run", "-m", tiny, "--layers", "", "hi"]);
    expect(plan.stdout).toBe("");
    expect(plan.stderr).toBe(refusal);
    expect(plan.code).toBe(1);
    const run = await mlx(["launch", "-n", "2", "--", "run", "-m", tiny, "--layers", " ", "--max-tokens", "2", "hi"]);
    expect(run.stdout).toBe("");
    expect(run.stderr).toContain(refusal);
    expect(run.code).toBe(1);
  }, 60_000);

  test("a split that does not fit the ranks or the model is one line before any rank starts, not each rank's and the launcher's", async () => {
    for (const [ranks, layers, refusal] of [
      ["2", "0-1,1-2", "--layers: rank 1's range '1-2' should start at layer 2 (contiguous, in order)"],
      ["2", "0,2", "--layers: rank 1's range '2' should start at layer 1 (contiguous, in order)"],
      ["2", "0-1,2-3", "--layers '0-1,2-3' covers layers 0-3; the model has 3 (0-2)"],
      ["2", "0-2,3-2", "--layers: '3-2' ends before it starts"],
      ["2", "0-2", "--layers '0-2' names 1 ranges for 2 ranks (one range per rank)"],
      ["4", undefined, "the model has 3 layers, fewer than the 4 ranks"],
    ] as const) {
      const split = layers === undefined ? [] : ["--layers", layers];
      const { stdout, stderr, code } = await mlx(["launch", "-n", ranks, "--", "run", "-m", tiny, ...split, "hi"]);
      expect(stdout).toBe("");
      expect(stderr).toBe(`error: ${refusal}\n`);
      expect(code).toBe(1);
    }
  }, 60_000);

  test("a flag given twice is checked as the ranks read it, the last; a prompt after the command's own -- is no flag", async () => {
    const twice = await mlx([
      "launch",
      "-n",
      "2",
      "--",
      "run",
      "-m",
      tiny,
      "--layers",
      "0,1-2",
      "--layers",
      "0-1,1-2",
      "hi",
    ]);
    expect(twice.stderr).toBe("error: --layers: rank 1's range '1-2' should start at layer 2 (contiguous, in order)\n");
    expect(twice.code).toBe(1);
    const prompt = await mlx(["launch", "-n", "2", "--", "run", "-m", tiny, "--max-tokens", "2", "--", "-m"]);
    expect(prompt.stderr).toBe("");
    expect(prompt.code).toBe(0);
  }, 60_000);

  test("split flags every rank would refuse, or a model that is not there, are one line before any rank starts", async () => {
    for (const [flags, refusal] of [
      [["--peer-timeout", "0"], "--peer-timeout must be a number of seconds > 0 and at most 2147483 (got '0')"],
      [["--micro-batches", "0"], "--micro-batches must be a whole number > 0 (got '0')"],
      [
        ["--tensor-parallel", "--micro-batches", "2"],
        "--micro-batches splits the batch between runs of layers; --tensor-parallel has none to fill",
      ],
      [
        ["--tensor-parallel", "--layers", "0,1-2"],
        "--layers splits the model into runs of layers; --tensor-parallel splits every layer: give one",
      ],
      [["-m", join(dir, "nowhere")], `model not found: ${join(dir, "nowhere")} (mlx list shows the stored models)`],
    ] as const) {
      const { stdout, stderr, code } = await mlx(["launch", "-n", "2", "--", "run", "-m", tiny, ...flags, "hi"]);
      expect(stdout).toBe("");
      expect(stderr).toBe(`error: ${refusal}\n`);
      expect(code).toBe(1);
    }
  }, 60_000);

  test("what every rank refuses in the same words is said once, and rank 0's own error not again by the launcher", async () => {
    // Rank 0 alone refuses it (its heads of 16 values are no quantization group): its line, as alone.
    const kv = await mlx(["launch", "-n", "2", "--", "run", "-m", tiny, "--kv-bits", "4", "hi"]);
    expect(kv.stderr).toBe(
      "error: invalid option: a 4-bit KV cache needs the head size (16) to be a multiple of its group size (64); this model's KV cache cannot be quantized\n",
    );
    expect(kv.code).toBe(1);
    // Every rank refuses it: one rank's line, and at most the launcher's naming the rank that ended first.
    const temp = await mlx(["launch", "-n", "3", "--", "run", "-m", tiny, "--temp", "-1", "hi"]);
    const lines = temp.stderr.trim().split("\n");
    expect(lines.filter((line) => /^(\[rank \d\] )?error: --temp must be >= 0 \(got -1\)$/.test(line))).toHaveLength(1);
    expect(lines.length).toBeLessThanOrEqual(2);
    expect(temp.code).toBe(1);
  }, 60_000);

  const runWithPeerTimeout = (seconds: string) => [
    "run",
    "-m",
    tiny,
    "--peer-timeout",
    seconds,
    "--max-tokens",
    "2",
    "hi",
  ];
  const peerTimeoutRefused = (seconds: string) =>
    `error: --peer-timeout must be a number of seconds > 0 and at most 2147483 (got '${seconds}')\n`;

  test("a --peer-timeout past what the watchdog can count (about 24 days) is refused in one line", async () => {
    for (const seconds of ["1e7", "1e12"]) {
      const { stdout, stderr, code } = await mlx(["launch", "-n", "2", "--", ...runWithPeerTimeout(seconds)]);
      expect(stdout).toBe("");
      expect(stderr).toContain(peerTimeoutRefused(seconds));
      expect(stderr).not.toContain("TimeoutOverflowWarning");
      expect(code).toBe(1);
    }
  }, 60_000);

  test("a bad --peer-timeout is refused without a hostfile too, not ignored because it has a default", async () => {
    for (const seconds of ["0", "abc"]) {
      const { stdout, stderr, code } = await mlx(runWithPeerTimeout(seconds));
      expect(stdout).toBe("");
      expect(stderr).toBe(peerTimeoutRefused(seconds));
      expect(code).toBe(1);
    }
  }, 60_000);
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

  test("an IPv6 address (which MLX's ring cannot parse) is refused before any rank starts, not taken for a remote host", () => {
    const file = join(dir, "hosts-v6.json");
    for (const [hosts, address] of [
      [[["127.0.0.1:5000"], ["[::1]:5001"]], "[::1]:5001"],
      [
        [
          { ssh: "localhost", ips: ["127.0.0.1"] },
          { ssh: "localhost", ips: ["::1"] },
        ],
        "::1:5001",
      ],
    ] as const) {
      writeFileSync(file, JSON.stringify(hosts));
      expect(() => readHostfile(file, 5000)).toThrow(
        `hostfile ${file}: rank 1's address '${address}' is IPv6, which MLX's ring backend cannot connect: give an IPv4 address or a host name`,
      );
    }
  });
});

describe("a rank started by hand (--hostfile, --rank)", () => {
  test("a ring hostfile that could never form a ring is refused in one line at once, as mlx launch refuses it, not waited on until --peer-timeout", async () => {
    const file = join(dir, "by-hand.json");
    for (const [hosts, refusal] of [
      [[["127.0.0.1:42690"]], "a pipeline needs at least 2 ranks (got 1)"],
      [
        [["127.0.0.1:42690"], ["127.0.0.1:42690"]],
        "127.0.0.1:42690 is listed twice (rank 0 and rank 1): give each its own port",
      ],
      [[["127.0.0.1:99999"], ["127.0.0.1:42691"]], "rank 0's address '127.0.0.1:99999' needs a port 1-65535"],
      [[[], ["127.0.0.1:42691"]], "rank 0 lists no address"],
    ] as const) {
      writeFileSync(file, JSON.stringify(hosts));
      for (const rank of ["0", "1"].slice(0, hosts.length)) {
        const { stdout, stderr, code } = await mlx([
          "run",
          "-m",
          tiny,
          "--hostfile",
          file,
          "--rank",
          rank,
          "--peer-timeout",
          "2",
          "hi",
        ]);
        expect(stdout).toBe("");
        expect(stderr).toBe(`error: hostfile ${file}: ${refusal}\n`);
        expect(code).toBe(1);
      }
    }
  }, 60_000);
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

describe("mlx launch: a middle rank killed mid-answer (kill -9)", () => {
  test("the launch names it, not the next rank that lost its connection to it, whichever ends first; without MLX's ring's lines", async () => {
    // Rank 2 exits at once when rank 1 is gone: the launcher named whichever exit it saw first.
    for (let attempt = 0; attempt < 5; attempt++) {
      const proc = Bun.spawn(
        [process.execPath, mainScript, "launch", "-n", "3", "--", "run", "-m", tiny, "--max-tokens", "400", "hi"],
        { stdout: "pipe", stderr: "pipe", env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" } },
      );
      const stderr = new Response(proc.stderr).text();
      // The answer has begun: every rank is in the ring.
      await proc.stdout.getReader().read();
      const ranks = rankPids(proc.pid);
      process.kill(ranks.get(1)!, "SIGKILL");
      expect(await proc.exited).toBe(1);
      const lines = (await stderr).split("\n");
      expect(lines).toContain("error: rank 1 was killed by SIGKILL");
      expect(lines.filter((line) => line.startsWith("error: rank "))).toHaveLength(1);
      // Not MLX's ring's dozen lines of the sockets it lost ("[ring] Socket 8 was closed by the peer").
      expect(lines.filter((line) => /^(\[rank \d\] )?\[ring\] /.test(line))).toEqual([]);
      expect(await allGone([...ranks.values()], 5000)).toBe(true);
    }
  }, 60_000);
});

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

describe("mlx launch: a rank that fails while another is stopped (SIGSTOP)", () => {
  test("the stopped rank ends with the others at once, not when the launcher kills it 2 s later", async () => {
    const launcher = spawn(
      process.execPath,
      [mainScript, "launch", "-n", "3", "--", "run", "-m", tiny, "--max-tokens", "100000", "Count:"],
      { env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" }, stdio: ["ignore", "pipe", "pipe"] },
    );
    const stdout = collect(launcher.stdout!);
    const stderr = collect(launcher.stderr!);
    const exited = new Promise<number | null>((resolve) => launcher.on("exit", (code) => resolve(code)));
    let ranks = new Map<number, number>();
    try {
      expect(await until(() => stdout.text().length > 0, 30_000)).toBe(true); // answering
      ranks = rankPids(launcher.pid!);
      expect(ranks.size).toBe(3);
      process.kill(ranks.get(1)!, "SIGSTOP");
      const failedAt = performance.now();
      process.kill(ranks.get(2)!, "SIGKILL");
      expect(await exited).toBe(1);
      expect(performance.now() - failedAt).toBeLessThan(1500);
      expect(stderr.text()).toEndWith("error: rank 2 was killed by SIGKILL\n");
    } finally {
      launcher.kill("SIGKILL");
      for (const pid of ranks.values()) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // Gone already.
        }
      }
    }
    expect(await allGone([...ranks.values()], 15_000)).toBe(true);
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

describe("mlx launch -- chat", () => {
  test("/model to the model held (by an alias or its path) keeps it with a note; another is refused; the chat goes on with the split model", async () => {
    // A store of its own for the alias (the shared one is only read).
    const aliasHome = join(dir, "alias-home");
    mkdirSync(aliasHome, { recursive: true });
    writeFileSync(join(aliasHome, "models.toml"), `[models.tiny3]\nsource = "${tiny}"\n`);
    const chat = ["chat", "-m", tiny, "--temp", "0", "--max-tokens", "6"];
    const alone = await mlx(chat, "Hello\nAnd again?\n");
    const split = await cliRunner(aliasHome)(
      ["launch", "-n", "2", "--", ...chat],
      `Hello\n/model tiny3\n/model ${tiny}\n/model smollm2\nAnd again?\n`,
    );
    // Before, the model held was refused by its alias and path as any other.
    expect(split.stderr).toBe(
      "tiny3 is the model in use: kept as it is\n" +
        `${tiny} is the model in use: kept as it is\n` +
        "error: the model is split across processes (mlx launch): /model cannot switch it; launch again with -m smollm2\n",
    );
    expect(split.stdout).toBe(alone.stdout);
    expect(split.code).toBe(0);
  }, 120_000);

  test("/show counts the whole model's parameters, not rank 0's share of them", async () => {
    // A 4-bit MLX directory wide enough that a share shows in /show's tenths of a million, and the default GGUF.
    const quantized = join(dir, "wide-4bit");
    writeTinyModel(quantized, {
      layers: 3,
      vocabSize: 4096,
      headDim: 64,
      dims: { hidden: 256, intermediate: 512 },
      quantize: { groupSize: 64, bits: 4 },
    });
    // /show's answer goes to stderr, as chat's other command output.
    const parameters = (stderr: string) => /^parameters: +(.*)$/m.exec(stderr)?.[1];
    for (const model of [["-m", quantized], []]) {
      const alone = parameters((await mlx(["chat", ...model], "/show\n")).stderr);
      expect(alone).toMatch(/^\d+\.\dM$/);
      for (const split of [[], ["--tensor-parallel"]]) {
        const launched = await mlx(["launch", "-n", "2", "--", "chat", ...model, ...split], "/show\n");
        expect(launched.code).toBe(0);
        expect(parameters(launched.stderr)).toBe(alone);
      }
    }
  }, 120_000);
});

/** Collects a child's output as it comes. */
function collect(stream: NodeJS.ReadableStream): { text: () => string } {
  let text = "";
  stream.on("data", (chunk: Buffer) => {
    text += chunk.toString();
  });
  return { text: () => text };
}

/** Waits up to `ms` for `ready()`; whether it came. */
async function until(ready: () => boolean, ms: number): Promise<boolean> {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await Bun.sleep(50)) if (ready()) return true;
  return ready();
}

describe("mlx launch: signals reach rank 0 once each", () => {
  test("every SIGINT to the launcher stops one chat answer, as Ctrl-C does alone: the second does not end the chat", async () => {
    const launcher = spawn(
      process.execPath,
      [mainScript, "launch", "-n", "2", "--", "chat", "-m", tiny, "--max-tokens", "100000"],
      { env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" }, stdio: ["pipe", "pipe", "pipe"] },
    );
    const stdout = collect(launcher.stdout!);
    const stderr = collect(launcher.stderr!);
    const exited = new Promise<number | null>((resolve) => launcher.on("exit", (code) => resolve(code)));
    let ranks: number[] = [];
    try {
      for (const turn of [1, 2]) {
        const before = stdout.text().length;
        launcher.stdin!.write(`Count to a million (${turn})\n`);
        expect(await until(() => stdout.text().length > before, 30_000)).toBe(true); // answering
        ranks = [...rankPids(launcher.pid!).values()];
        expect(ranks.length).toBe(2);
        launcher.kill("SIGINT");
        const stopped = () => stderr.text().split("(stopped)").length - 1 === turn;
        expect(await until(stopped, 20_000)).toBe(true);
      }
      launcher.stdin!.end();
      expect(await exited).toBe(0);
    } finally {
      launcher.kill("SIGKILL");
      for (const pid of rankPids(launcher.pid!).values()) process.kill(pid, "SIGKILL");
    }
    expect(await allGone(ranks, 15_000)).toBe(true);
  }, 120_000);

  test("a Ctrl-C to the launcher's process group (a terminal's) lets serve's request in flight finish, as alone", async () => {
    // A group of its own, as a terminal's foreground job: the signal goes to every process in it.
    const launcher = spawn(
      process.execPath,
      [mainScript, "launch", "-n", "2", "--", "serve", "--port", "0", "-m", tiny],
      { env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" }, stdio: ["ignore", "pipe", "pipe"], detached: true },
    );
    const stderr = collect(launcher.stderr!);
    const exited = new Promise<number | null>((resolve) => launcher.on("exit", (code) => resolve(code)));
    try {
      expect(await until(() => /listening on http:\S+/.test(stderr.text()), 30_000)).toBe(true);
      const url = /listening on (http:\S+)/.exec(stderr.text())![1]!;
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "none" });
      // ignore_eos (vLLM's): the tiny model's random weights, sampled, may end the answer before 400 tokens.
      const request = { model: tiny, prompt: "Count:", max_tokens: 400, stream: true as const, ignore_eos: true };
      const stream = await client.completions.create(request);
      let tokens = 0;
      let finish: string | null = null;
      for await (const chunk of stream) {
        if (tokens++ === 0) process.kill(-launcher.pid!, "SIGINT");
        finish = chunk.choices[0]?.finish_reason ?? finish;
      }
      expect(finish).toBe("length");
      expect(await exited).toBe(0);
    } finally {
      try {
        process.kill(-launcher.pid!, "SIGKILL");
      } catch {
        // Gone already.
      }
    }
  }, 120_000);

  test("a stop while serve's ranks are still joining ends every rank at once, without a word from them, as alone", async () => {
    const launcher = spawn(
      process.execPath,
      [mainScript, "launch", "-n", "3", "--", "serve", "--port", "0", "-m", tiny],
      { env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" }, stdio: ["ignore", "pipe", "pipe"] },
    );
    const stderr = collect(launcher.stderr!);
    const exited = new Promise<number | null>((resolve) => launcher.on("exit", (code) => resolve(code)));
    let ranks: number[] = [];
    try {
      // Rank 1 held before it joins (a slow machine): the ring cannot form, rank 0 says it is loading.
      expect(await until(() => rankPids(launcher.pid!).has(1), 30_000)).toBe(true);
      process.kill(rankPids(launcher.pid!).get(1)!, "SIGSTOP");
      expect(await until(() => /listening on http:\S+/.test(stderr.text()), 30_000)).toBe(true);
      const url = /listening on (http:\S+)/.exec(stderr.text())![1]!;
      expect(await (await fetch(`${url}/health`)).json()).toEqual({ status: "loading" });
      ranks = [...rankPids(launcher.pid!).values()];
      expect(ranks.length).toBe(3);
      const stoppedAt = performance.now();
      launcher.kill("SIGTERM");
      for (const pid of ranks) process.kill(pid, "SIGCONT");
      expect(await exited).toBe(0);
      // Not the 10 s the launcher gives ranks that rank 0 told to stop.
      expect(performance.now() - stoppedAt).toBeLessThan(5000);
      expect(stderr.text()).not.toContain("[rank");
    } finally {
      launcher.kill("SIGKILL");
      for (const pid of ranks) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // Gone already.
        }
      }
    }
    expect(await allGone(ranks, 15_000)).toBe(true);
  }, 120_000);
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
