// `mlx launch -n N -- <command>`: one model across several processes (and machines). Starts
// one rank of the command per host: MLX_HOSTFILE (the ring backend's hostfile) and MLX_RANK
// tell each which it is. Rank 0 has stdin and stdout; the others' output goes to stderr,
// prefixed with their rank. When a rank fails, the others are stopped.
//
// A remote rank runs under ssh in the same directory, with the same executable path and the
// launcher's MLX_* variables (as mlx.launch assumes the same layout on every machine). The
// ssh connection's stdin is the rank's control line: the launcher writes signal names on it,
// and when it closes (the launcher gone, the connection lost) the remote rank is stopped.
import { defineCommand } from "citty";
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:net";
import { availableParallelism, constants, tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { parseLayers, splitLayers } from "../engine/pipeline";
import { readLayout } from "../models/layout";
import { readDirectoryConfig } from "../models/load";
import { checkShardable } from "../models/shard";
import { remoteModel } from "../providers";
import { locateModel, missingModelError } from "../store/resolve";
import { describePlan, flag, readHostfile, ringHostfile, type Host } from "./launch-plan";
import { fail } from "./log";
import { pipelineFrom, positiveInteger } from "./options";

export default defineCommand({
  meta: {
    name: "launch",
    description: 'Run an mlx command with its model split across processes: mlx launch -n 2 -- run "prompt"',
  },
  args: {
    n: { type: "string", description: "Ranks to start on this machine, on free loopback ports" },
    hostfile: {
      type: "string",
      description:
        'Hosts to start ranks on: mlx.launch\'s JSON ([{"ssh": "host", "ips": ["10.0.0.2"]}, ...], or {"envs": [...], "hosts": [...]}) or MLX\'s ring format ([["host:port", ...], ...]), several addresses per host for several links; remote ones over ssh',
    },
    "connections-per-ip": {
      type: "string",
      description: "Ring connections to each neighbour per IP (each on a port of its own), as mlx.launch's flag",
      default: "1",
    },
    "starting-port": {
      type: "string",
      description: "First port of the ranks in an mlx.launch hostfile (one port per IP, counting up)",
      default: "32323",
    },
    "ssh-config": {
      type: "string",
      description: "An ssh_config file for the remote hosts (ssh -F): port, user and key per host",
    },
    plan: {
      type: "boolean",
      description: "Print the split (layers and bytes each rank loads, bytes per token per hop) and exit",
    },
  },
  async run({ args, rawArgs }) {
    try {
      const separator = rawArgs.indexOf("--");
      const command = separator >= 0 ? rawArgs.slice(separator + 1) : [];
      if (command.length === 0)
        throw new Error('give the command to run after --, e.g. mlx launch -n 2 -- run "Hello"');
      if (!commandsThatSplit.includes(command[0]!))
        throw new Error(
          `mlx launch runs ${commandsThatSplit.join(", ")} with the model split across ranks; '${command[0]}' is not one of them`,
        );
      refuseRingFlags(command);
      refuseWholeOnEveryRank(command);
      if ((args.n === undefined) === (args.hostfile === undefined))
        throw new Error("give -n N or --hostfile FILE (one of them)");
      const perIp = positiveInteger("connections-per-ip", args["connections-per-ip"]);
      const hosts =
        args.hostfile !== undefined
          ? readHostfile(args.hostfile, positiveInteger("starting-port", args["starting-port"]), perIp)
          : await loopbackHosts(positiveInteger("n", args.n), 1, perIp);
      if (hosts.length < 2) throw new Error(`a pipeline needs at least 2 ranks (got ${hosts.length})`);
      refuseSplitFlags(command);
      if (args.plan) {
        process.stdout.write(await describePlan(hosts, command));
        return;
      }
      await refuseSplitThatDoesNotFit(hosts, command);
      process.exitCode = await launch(hosts, command, args["ssh-config"]);
    } catch (error) {
      fail(error, false);
    }
  },
});

/**
 * The commands that take a rank's place in the ring (--hostfile, --rank): any other would run
 * whole on every rank (pull, rm or launch itself N times at once).
 */
export const commandsThatSplit = ["run", "chat", "serve", "bench", "cache-prompt"];

/**
 * The command's own --hostfile or --rank would win over the ring and rank launch gives each
 * process (every rank the same rank, or another ring): the ranks then wait for peers that never
 * come until --peer-timeout. Refused before any rank starts. Flags only: not past the command's
 * own "--", where a prompt may say anything.
 */
function refuseRingFlags(command: string[]): void {
  const end = command.indexOf("--");
  const flags = end >= 0 ? command.slice(0, end) : command;
  const given = flags.find((arg) => /^--(?:hostfile|rank)(?:=|$)/.test(arg));
  if (given)
    throw new Error(
      `mlx launch gives each rank its --hostfile and --rank: leave '${given.split("=")[0]}' out of the command (mlx launch --hostfile FILE sets the hosts)`,
    );
}

/**
 * What splits no model and would run whole on every rank, each sending its own requests: a
 * server's benchmark (bench --url), or a remote model (a models.toml alias of a provider).
 */
function refuseWholeOnEveryRank(command: string[]): void {
  if (command[0] === "bench" && flag(command, ["--url"]) !== undefined)
    throw new Error("bench --url measures a server, with no model to split: run it without mlx launch");
  const model = flag(command, ["--model", "-m"]);
  if (remoteModel(model))
    throw new Error(
      `${model ? `'${model}'` : "the default model"} is a remote model (models.toml): its provider runs it, with nothing to split across ranks`,
    );
}

/**
 * The command's split flags, checked as every rank checks them (pipelineFrom) once before any
 * rank starts: a bad --peer-timeout or --micro-batches, --layers with --tensor-parallel. Each
 * rank refused them in the same words, and the launcher said it again.
 */
function refuseSplitFlags(command: string[]): void {
  pipelineFrom({
    hostfile: "(mlx launch's)",
    rank: "0",
    layers: flag(command, ["--layers"]),
    "tensor-parallel": command.includes("--tensor-parallel"),
    "peer-timeout": flag(command, ["--peer-timeout"]),
    "micro-batches": flag(command, ["--micro-batches"]),
  });
}

/**
 * A split that does not fit the model, refused once before any rank starts (each rank would
 * refuse it in the same words, and the launcher say it again): a model that is not there, a
 * --layers that does not fit the ranks or the model, more ranks than layers. Only when every
 * rank is on this machine, and the model they load is here already (nothing pulled or opened).
 */
async function refuseSplitThatDoesNotFit(hosts: Host[], command: string[]): Promise<void> {
  if (hosts.some((h) => h.ssh)) return;
  const location = locateModel(flag(command, ["--model", "-m"]));
  if (location.kind === "missing") throw await missingModelError(location);
  const { path } = location;
  if (!path) return;
  if (command.includes("--tensor-parallel")) {
    // An MLX directory's config says it at once; a GGUF's is its metadata, left to the ranks.
    if (statSync(path).isDirectory()) checkShardable(readDirectoryConfig(path), hosts.length);
    return;
  }
  const { numLayers } = readLayout(path);
  const layers = flag(command, ["--layers"]);
  if (layers !== undefined) parseLayers(layers, numLayers, hosts.length);
  else splitLayers(numLayers, Array(hosts.length).fill(1)); // refuses more ranks than layers
}

/**
 * N ranks on loopback, each on a port the OS says is free; with `links` > 1, each rank listens
 * on that many addresses (127.0.0.1, 127.0.0.2, ...), as a machine with several network links;
 * on `perIp` ports of each (--connections-per-ip).
 */
export async function loopbackHosts(n: number, links = 1, perIp = 1): Promise<Host[]> {
  const servers = [];
  const hosts: Host[] = [];
  // All held open at once, so the OS hands out different ports.
  for (let i = 0; i < n; i++) {
    const addresses = [];
    for (let link = 1; link <= links; link++) {
      for (let c = 0; c < perIp; c++) {
        const server = createServer();
        const ip = `127.0.0.${link}`;
        await new Promise<void>((resolve) => server.listen(0, ip, resolve));
        addresses.push(`${ip}:${(server.address() as { port: number }).port}`);
        servers.push(server);
      }
    }
    hosts.push({ addresses });
  }
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return hosts;
}

/** How to start this very executable: the compiled one, or Bun on the entry script. */
function selfCommand(): string[] {
  const entry = Bun.main;
  return entry.startsWith("/$bunfs") || entry === process.execPath ? [process.execPath] : [process.execPath, entry];
}

interface Rank {
  rank: number;
  child: ChildProcess;
  /** Passes a signal on to the rank (over its control line when it is remote). */
  signal: (signal: NodeJS.Signals) => void;
  /** Its last line starting "error:" (without that), and its last line of any kind. */
  lastError: string;
  lastLine: string;
  exit: Promise<RankStatus>;
}

interface RankStatus {
  code: number | null;
  signal: NodeJS.Signals | null;
}

/** The launcher's one line about a failed rank: how it ended and the last thing it said. */
function reportFailure(r: Rank, status: RankStatus, forcedOut = false) {
  const how = forcedOut
    ? "did not stop within 10 s of rank 0 and was killed"
    : status.signal
      ? `was killed by ${status.signal}`
      : `exited with status ${status.code}`;
  const last = r.lastError || r.lastLine;
  const why = last ? `: ${last}` : "";
  process.stderr.write(`error: rank ${r.rank} ${how}${why}\n`);
}

async function launch(hosts: Host[], command: string[], sshConfig?: string): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), "mlx-launch-"));
  const hostfile = join(dir, "hosts.json");
  const ring = ringHostfile(hosts);
  writeFileSync(hostfile, ring);
  const self = selfCommand();
  const threads = sharedCoreThreads(hosts, command);
  // Every rank in a process group of its own, so that a signal to ours (a terminal's Ctrl-C,
  // kill -INT -PGID) reaches rank 0 once, passed on by us, not from both (which serve takes as
  // "again: stop now" and chat as a second Ctrl-C), and no other rank at all. All but a local
  // rank 0 on a terminal: it may read it (chat), which a background group may not; the
  // terminal's Ctrl-C reaches it itself.
  const rankZeroOnTerminal = !hosts[0]!.ssh && Boolean(process.stdin.isTTY);
  // What the ranks' error lines said: one that every rank refuses in the same words is said once.
  const errorsSaid = new Set<string>();
  const ranks: Rank[] = hosts.map((host, rank) => {
    const env = {
      ...process.env,
      ...host.env,
      MLX_HOSTFILE: hostfile,
      MLX_RANK: String(rank),
      // A local rank 0 ends when we are gone (see stopWithLauncher); a remote one when ssh ends.
      MLX_LAUNCHER_PID: String(process.pid),
      ...threads,
    };
    const child = host.ssh
      ? spawn("ssh", [...sshOptions(sshConfig), host.ssh, remoteCommand(ring, rank, self, command, host.env)], {
          stdio: ["pipe", "pipe", "pipe"],
          detached: true,
        })
      : spawn(self[0]!, [...self.slice(1), ...command], {
          env,
          // Rank 0's stdout is ours as it is: no copy through this process for each token it prints.
          stdio: [rank === 0 ? "inherit" : "ignore", rank === 0 ? "inherit" : "pipe", "pipe"],
          detached: rank > 0 || !rankZeroOnTerminal,
        });
    // A remote rank that is gone already cannot be told anything: its exit says the rest.
    child.stdin?.on("error", () => {});
    const running = () => child.exitCode === null && child.signalCode === null;
    const r: Rank = {
      rank,
      child,
      signal: (signal) => {
        if (!running()) return;
        if (!host.ssh) child.kill(signal);
        // KILL cannot wait for the remote shell to read it: dropping the connection stops the rank too.
        else if (signal === "SIGKILL") child.kill(signal);
        else child.stdin!.write(`${signal.slice(3)}\n`);
      },
      lastError: "",
      lastLine: "",
      exit: new Promise((resolve) => child.on("exit", (code, signal) => resolve({ code, signal }))),
    };
    const prefix = rank === 0 ? "" : `[rank ${rank}] `;
    // Once serve's rank 0 is asked to stop, the others' words are of the ring closing under them:
    // rank 0 ends as asked, and those still joining it (loading) it cannot tell first.
    const quiet = () => rank > 0 && stoppingServer();
    if (rank === 0)
      child.stdout?.pipe(process.stdout); // over ssh
    else relay(child.stdout!, prefix, r, quiet, errorsSaid);
    relay(child.stderr!, prefix, r, quiet, errorsSaid);
    return r;
  });
  const stopAll = (signal: NodeJS.Signals) => {
    for (const r of ranks) r.signal(signal);
  };
  // Ctrl-C or a stop goes to rank 0, which ends as it would alone and stops the others; each
  // one, as a second Ctrl-C in chat stops another answer and a second stop of serve cuts its requests.
  // Only serve handles a stop: any other command's rank 0 dies of it without a word to the
  // others, which would each report the lost connection as their error. It goes to every rank.
  const stopKillsRanks = command[0] !== "serve";
  let passedOn: NodeJS.Signals | undefined;
  // Every rank's exit status, those still running after `ms` killed (forcedOut: some had to be).
  async function allExited(ms: number): Promise<{ statuses: RankStatus[]; forcedOut: boolean }> {
    let forcedOut = false;
    const forced = setTimeout(() => {
      forcedOut = true;
      stopAll("SIGKILL");
    }, ms);
    const statuses = await Promise.all(ranks.map((r) => r.exit));
    clearTimeout(forced);
    return { statuses, forcedOut };
  }
  // Any signal passed on to serve's rank 0 stops the server.
  function stoppingServer() {
    return passedOn !== undefined && !stopKillsRanks;
  }
  for (const signal of ["SIGINT", "SIGTERM"] as const)
    process.on(signal, () => {
      passedOn = signal;
      if (signal === "SIGTERM" && stopKillsRanks) stopAll(signal);
      else if (!(signal === "SIGINT" && rankZeroOnTerminal)) ranks[0]!.signal(signal);
    });
  try {
    // The first rank to fail ends the launch; rank 0 ending well ends it too (the others follow it).
    const first = await new Promise<{ r: Rank; status: RankStatus }>((resolve) => {
      for (const r of ranks)
        void r.exit.then((status) => (status.code !== 0 || r.rank === 0) && resolve({ r, status }));
    });
    // Rank 0 stopped by a signal we passed on (Ctrl-C, a stop) ends as it would alone: by its
    // handler's status, or killed by that signal (then it told no one: we stop the others); so
    // does any rank killed by a stop we gave every rank.
    const killedAsAsked =
      first.status.signal !== null &&
      first.status.signal === passedOn &&
      (first.r.rank === 0 || (passedOn === "SIGTERM" && stopKillsRanks));
    const asked = killedAsAsked || (first.r.rank === 0 && first.status.code !== null && first.status.code > 128);
    if (first.status.code !== 0 && !asked) {
      stopAll("SIGTERM");
      // A rank that is stopped (SIGSTOP: often the silent peer the others gave up on) takes the
      // stop only once continued: now, not when it is killed 2 s later.
      stopAll("SIGCONT");
      const { statuses, forcedOut } = await allExited(2000);
      // The first exit seen is not always the cause: a rank killed from outside (kill -9, a crash)
      // and its neighbour, which lost its connection to it, end together and are reaped in either
      // order. A rank ended by a signal we did not send is the one named.
      const killed = statuses.findIndex(
        (s) => s.signal !== null && s.signal !== "SIGTERM" && !(forcedOut && s.signal === "SIGKILL"),
      );
      const failed =
        first.status.signal === null && killed >= 0 ? { r: ranks[killed]!, status: statuses[killed]! } : first;
      // Rank 0 that said why it failed has said it as one process would: not said again.
      if (!(failed.r.rank === 0 && failed.r.lastError)) reportFailure(failed.r, failed.status);
      return failed.r.rank === 0 && failed.status.code ? failed.status.code : 1;
    }
    // Serve's rank 0 stopped as asked told the others, unless they were still joining it: those
    // are stopped now, not left to find the ring gone (or killed 10 s later).
    if (killedAsAsked || (first.r.rank === 0 && stoppingServer())) stopAll("SIGTERM");
    // Rank 0 is done and told the others to stop: give them a moment, then make sure.
    const { statuses, forcedOut } = await allExited(10_000);
    // Rank 0 answered, but a rank that then failed (or would not stop) is still a failed launch.
    const failed = passedOn ? -1 : statuses.findIndex((s) => s.code !== 0);
    if (failed > 0) {
      reportFailure(ranks[failed]!, statuses[failed]!, forcedOut && statuses[failed]!.signal === "SIGKILL");
      return 1;
    }
    // Killed by a signal: the status a shell gives a process killed by it.
    return first.status.code ?? 128 + constants.signals[first.status.signal!];
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * Tensor-parallel ranks compute at the same time: those on this machine share its cores rather
 * than each starting a thread per core (which doubled decode speed with 2 ranks on 2 cores).
 * An MLX_CPU_THREADS of the user's wins.
 */
function sharedCoreThreads(hosts: Host[], command: string[]): { MLX_CPU_THREADS?: string } {
  const local = hosts.filter((h) => !h.ssh).length;
  if (!command.includes("--tensor-parallel") || process.env.MLX_CPU_THREADS || local < 2) return {};
  return { MLX_CPU_THREADS: String(Math.max(1, Math.floor(availableParallelism() / local))) };
}

/**
 * MLX's ring backend's own lines ("[ring] Socket 8 was closed by the peer", a dozen of them when a
 * rank is lost), unless the user asked for them (MLX_RING_VERBOSE): the ranks' error lines and
 * the launcher's say what happened, in words.
 */
const ringChatter = (line: string) => line.startsWith("[ring] ") && !process.env.MLX_RING_VERBOSE;

/**
 * Copies a rank's output to our stderr line by line, prefixed, keeping its last error line;
 * none while `quiet` says so, nor an error line another rank has said already (`said`).
 */
function relay(stream: NodeJS.ReadableStream, prefix: string, r: Rank, quiet: () => boolean, said: Set<string>): void {
  createInterface({ input: stream, crlfDelay: Infinity }).on("line", (line) => {
    if (quiet() || ringChatter(line)) return;
    if (line.startsWith("error:")) {
      r.lastError = line.slice("error:".length).trim();
      if (said.has(r.lastError)) return;
      said.add(r.lastError);
    }
    if (line.trim()) r.lastLine = line.trim();
    process.stderr.write(`${prefix}${line}\n`);
  });
}

/** ssh in batch mode (a password prompt per rank would hang the launch), with the user's config file if given. */
function sshOptions(config: string | undefined): string[] {
  return [...(config ? ["-F", config] : []), "-o", "BatchMode=yes"];
}

const quote = (s: string) => `'${s.replaceAll("'", "'\\''")}'`;

/**
 * The command ssh runs on a remote host: in our directory, with our MLX_* variables and `env`
 * (the hostfile's), write the ring hostfile there and start the rank in the background; fd 3 keeps ssh's stdin, the control
 * line, for the watcher (a background job's own stdin is /dev/null). The watcher passes on each
 * signal name it reads and stops the rank when the line closes; the rank's status is ssh's.
 * Run by sh, whatever the remote login shell is.
 */
export function remoteCommand(
  ring: string,
  rank: number,
  self: string[],
  command: string[],
  hostEnv: Record<string, string> = {},
): string {
  const mlx = Object.entries(process.env).filter(([name]) => name.startsWith("MLX_"));
  const env = [...mlx, ...Object.entries(hostEnv)]
    .filter(([name]) => name !== "MLX_HOSTFILE" && name !== "MLX_RANK")
    .map(([name, value]) => `${name}=${quote(value ?? "")}`);
  const run = [...self, ...command].map(quote).join(" ");
  const script = [
    `cd ${quote(process.cwd())} || exit 1`,
    "f=$(mktemp /tmp/mlx-ring.XXXXXX) || exit 1",
    `printf %s ${quote(ring)} > "$f"`,
    "exec 3<&0",
    `${[...env, 'MLX_HOSTFILE="$f"', `MLX_RANK=${rank}`].join(" ")} ${run} </dev/null 3<&- &`,
    "pid=$!",
    `(while read -r sig; do kill -s "$sig" "$pid"; done; kill "$pid") <&3 >/dev/null 2>&1 &`,
    'wait "$pid"; status=$?',
    'rm -f "$f"',
    'exit "$status"',
  ].join("\n");
  return `sh -c ${quote(script)}`;
}
