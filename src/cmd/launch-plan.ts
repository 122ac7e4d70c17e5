// Where `mlx launch` starts its ranks (hostfiles in mlx.launch's JSON or MLX's ring format),
// and `mlx launch --plan`: who holds which layers, what each loads, what each hop carries.
import { readFileSync } from "node:fs";
import { freemem, hostname, networkInterfaces } from "node:os";
import {
  checkRingAddresses,
  defaultSplit,
  headLayers,
  layerRange,
  layerRoom,
  parseLayers,
  stageBytes,
} from "../engine/pipeline";
import { headerBytes } from "../engine/pipeline/protocol";
import { formatBytes } from "../format";
import { readLayout } from "../models/layout";
import { resolveModelPath } from "../store/resolve";

export interface Host {
  /**
   * The host:port addresses the rank listens on (the ring hostfile's entry): one per network
   * link, MLX's ring backend then connecting each neighbour once per address and spreading each
   * transfer over the connections.
   */
  addresses: string[];
  /** Set for a host that is not this machine: started over ssh. */
  ssh?: string;
  /** Environment variables for the rank (an mlx.launch hostfile's "envs"). */
  env?: Record<string, string>;
}

/** The ring hostfile (MLX's format) of `hosts`, one list of addresses per rank. */
export const ringHostfile = (hosts: Host[]): string => JSON.stringify(hosts.map((h) => h.addresses));

/** Backends an mlx.launch hostfile may name that `mlx launch` cannot start: only the ring's. */
const otherBackends: Record<string, string> = {
  jaccl: "RDMA over Thunderbolt, on macOS",
  "jaccl-ring": "RDMA over Thunderbolt, on macOS",
  mpi: "MPI",
  nccl: "NCCL, on CUDA GPUs",
};

/**
 * Where the ranks go, from a hostfile in any form mlx.launch reads, for the ring backend:
 * mlx.launch's list `[{"ssh": "host", "ips": ["10.0.0.2", ...], "rdma": [...]}, ...]` or the
 * same under `{"backend": "ring", "envs": ["NAME=value", ...], "hosts": [...]}` (each IP listens
 * on `connectionsPerIp` ports, counting up from `startingPort` as mlx.launch numbers them; "rdma"
 * is for JACCL and unused by the ring), or the ring's own `[["host:port", ...], ...]`.
 */
export function readHostfile(path: string, startingPort: number, connectionsPerIp = 1): Host[] {
  let data: unknown;
  try {
    data = JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    throw new Error(`cannot read hostfile ${path}: ${(error as Error).message}`);
  }
  const form = hostfileForm(path, data);
  let port = startingPort;
  const ranks = form.hosts.map((entry, rank): Host => {
    if (Array.isArray(entry) && entry.length > 0 && entry.every((a) => typeof a === "string")) {
      if (connectionsPerIp > 1)
        throw new Error(
          `hostfile ${path}: --connections-per-ip is for mlx.launch's form; the ring's lists every connection's host:port`,
        );
      const hosts = entry.map((address: string) => address.slice(0, Math.max(0, address.lastIndexOf(":"))));
      const bad = hosts.findIndex((host) => !host);
      if (bad >= 0) throw new Error(`hostfile ${path}: entry ${rank} '${entry[bad]}' is not host:port`);
      return { addresses: entry, ssh: isLocal(hosts[0]!) ? undefined : hosts[0], env: form.env };
    }
    const { ssh, ips } = (entry ?? {}) as { ssh?: unknown; ips?: unknown };
    if (typeof ssh !== "string" || !ssh.trim())
      throw new Error(
        `hostfile ${path}: entry ${rank} needs "ssh" (mlx.launch's format) or is ["host:port", ...] (the ring's)`,
      );
    // Not left out quietly: a mistyped IP would put the rank on another link, or on the ssh name's.
    const isAddress = (ip: unknown) => typeof ip === "string" && ip.trim() !== "";
    if (ips !== undefined && !(Array.isArray(ips) && ips.every(isAddress)))
      throw new Error(
        `hostfile ${path}: entry ${rank}'s "ips" must be a list of addresses (got ${JSON.stringify(ips)})`,
      );
    const hosts = Array.isArray(ips) && ips.length > 0 ? (ips as string[]) : [ssh];
    return {
      addresses: hosts.flatMap((ip) => Array.from({ length: connectionsPerIp }, () => `${ip}:${port++}`)),
      ssh: isLocal(ssh) && hosts.every(isLocal) ? undefined : ssh,
      env: form.env,
    };
  });
  checkRingAddresses(
    path,
    ranks.map((host) => host.addresses),
  );
  return ranks;
}

/** A hostfile's list of hosts, and the environment the object form sets for every rank. */
function hostfileForm(path: string, data: unknown): { hosts: unknown[]; env?: Record<string, string> } {
  if (Array.isArray(data) && data.length > 0) return { hosts: data };
  if (!data || typeof data !== "object" || Array.isArray(data))
    throw new Error(`hostfile ${path}: expected a JSON list of hosts, or an object with "hosts"`);
  const { backend, envs, hosts } = data as { backend?: unknown; envs?: unknown; hosts?: unknown };
  if (typeof backend === "string" && backend in otherBackends)
    throw new Error(
      `hostfile ${path}: backend "${backend}" (${otherBackends[backend]}) is not supported: mlx launch starts MLX's ring backend (TCP); use "ring" or leave it out`,
    );
  if (backend !== undefined && backend !== "" && backend !== "ring")
    throw new Error(`hostfile ${path}: unknown backend ${JSON.stringify(backend)} (mlx launch starts "ring")`);
  if (!Array.isArray(hosts) || hosts.length === 0) throw new Error(`hostfile ${path}: "hosts" must be a list of hosts`);
  if (envs === undefined) return { hosts };
  if (!Array.isArray(envs)) throw new Error(`hostfile ${path}: "envs" must be a list of "NAME=value"`);
  const env: Record<string, string> = {};
  for (const e of envs) {
    const at = typeof e === "string" ? e.indexOf("=") : -1;
    const name = at > 0 ? (e as string).slice(0, at) : "";
    if (!/^[A-Za-z_][A-Za-z0-9_]*$/.test(name))
      throw new Error(`hostfile ${path}: "envs" entry ${JSON.stringify(e)} is not "NAME=value"`);
    env[name] = (e as string).slice(at + 1);
  }
  return { hosts, env };
}

function isLocal(host: string): boolean {
  const mine = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((i) => i.address));
  // All of 127.0.0.0/8 is this machine's loopback (Linux answers on every one of them).
  return ["localhost", "::1", hostname()].includes(host) || host.startsWith("127.") || mine.includes(host);
}

/**
 * The value of a flag among a command's arguments (--name value, --name=value, or its alias): the
 * last one given, as the command itself reads a flag given twice; none past the command's own
 * "--", where a prompt may say anything.
 */
export function flag(command: string[], names: string[]): string | undefined {
  const end = command.indexOf("--");
  const flags = end >= 0 ? command.slice(0, end) : command;
  let value: string | undefined;
  for (const [i, arg] of flags.entries()) {
    for (const name of names) {
      if (arg === name) value = flags[i + 1];
      else if (arg.startsWith(`${name}=`)) value = arg.slice(name.length + 1);
    }
  }
  return value;
}

export async function describePlan(hosts: Host[], command: string[]): Promise<string> {
  if (command.includes("--tensor-parallel"))
    throw new Error(
      "--plan shows a split into runs of layers; with --tensor-parallel every rank holds a slice of every layer",
    );
  const path = await resolveModelPath(flag(command, ["--model", "-m"]));
  const layout = readLayout(path);
  const layers = flag(command, ["--layers"]);
  // Remote hosts' free memory is theirs to tell at start; here every rank counts as this one.
  const stagesByHand = layers !== undefined;
  const stages = stagesByHand
    ? parseLayers(layers, layout.numLayers, hosts.length)
    : defaultSplit(
        layout,
        hosts.map((_, rank) => layerRoom(layout, rank, freemem())),
      );
  const hop = layout.hiddenSize * layout.activationBytes;
  const lines = [
    `model: ${path} (${layout.numLayers} layers, hidden size ${layout.hiddenSize})`,
    ...(stagesByHand ? [] : [`rank 0's output layer counts as ${headLayers(layout).toFixed(1)} layers of work`]),
    ...stages.map((stage, rank) => {
      const parts = `layers ${layerRange(stage)}${stage.ends ? " + embedding and output" : ""}`;
      return `rank ${rank}  ${hosts[rank]!.addresses.join(",")}${hosts[rank]!.ssh ? " (ssh)" : ""}  ${parts}  loads ${formatBytes(stageBytes(layout, stage))}`;
    }),
    `per token, each hop: ${hop} bytes of hidden states (${layout.hiddenSize} × ${layout.activationBytes}), plus a ${headerBytes}-byte header per message; ${hosts.length} hops a step (the last back to rank 0)`,
  ];
  return `${lines.join("\n")}\n`;
}
