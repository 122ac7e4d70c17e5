// Where `mlx launch` starts its ranks (hostfiles in mlx.launch's JSON or MLX's ring format),
// and `mlx launch --plan`: who holds which layers, what each loads, what each hop carries.
import { readFileSync } from "node:fs";
import { freemem, hostname, networkInterfaces } from "node:os";
import { defaultSplit, headLayers, layerRange, parseLayers, stageBytes } from "../engine/pipeline";
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
}

/** The ring hostfile (MLX's format) of `hosts`, one list of addresses per rank. */
export const ringHostfile = (hosts: Host[]): string => JSON.stringify(hosts.map((h) => h.addresses));

/**
 * mlx.launch's [{"ssh": "host", "ips": ["10.0.0.2", ...]}, ...] (each IP on the next port from
 * `startingPort`, as mlx.launch numbers them) or the ring's [["host:port", ...], ...].
 */
export function readHostfile(path: string, startingPort: number): Host[] {
  let entries: unknown;
  try {
    entries = JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    throw new Error(`cannot read hostfile ${path}: ${(error as Error).message}`);
  }
  if (!Array.isArray(entries) || entries.length === 0)
    throw new Error(`hostfile ${path}: expected a JSON list of hosts`);
  let port = startingPort;
  return entries.map((entry, rank) => {
    if (Array.isArray(entry) && entry.length > 0 && entry.every((a) => typeof a === "string")) {
      const hosts = entry.map((address: string) => address.slice(0, Math.max(0, address.lastIndexOf(":"))));
      const bad = hosts.findIndex((host) => !host);
      if (bad >= 0) throw new Error(`hostfile ${path}: entry ${rank} '${entry[bad]}' is not host:port`);
      return { addresses: entry, ssh: isLocal(hosts[0]!) ? undefined : hosts[0] };
    }
    const { ssh, ips } = (entry ?? {}) as { ssh?: unknown; ips?: unknown };
    if (typeof ssh !== "string")
      throw new Error(
        `hostfile ${path}: entry ${rank} needs "ssh" (mlx.launch's format) or is ["host:port", ...] (the ring's)`,
      );
    const given = Array.isArray(ips) ? ips.filter((ip): ip is string => typeof ip === "string") : [];
    const hosts = given.length > 0 ? given : [ssh];
    return {
      addresses: hosts.map((ip) => `${ip}:${port++}`),
      ssh: isLocal(ssh) && hosts.every(isLocal) ? undefined : ssh,
    };
  });
}

function isLocal(host: string): boolean {
  const mine = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((i) => i.address));
  // All of 127.0.0.0/8 is this machine's loopback (Linux answers on every one of them).
  return ["localhost", "::1", hostname()].includes(host) || host.startsWith("127.") || mine.includes(host);
}

/** The value of a flag among a command's arguments (--name value, --name=value, or its alias). */
function flag(command: string[], names: string[]): string | undefined {
  for (const [i, arg] of command.entries()) {
    for (const name of names) {
      if (arg === name) return command[i + 1];
      if (arg.startsWith(`${name}=`)) return arg.slice(name.length + 1);
    }
  }
  return undefined;
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
  const stages = layers
    ? parseLayers(layers, layout.numLayers, hosts.length)
    : defaultSplit(
        layout,
        hosts.map(() => freemem()),
      );
  const hop = layout.hiddenSize * layout.activationBytes;
  const lines = [
    `model: ${path} (${layout.numLayers} layers, hidden size ${layout.hiddenSize})`,
    ...(layers ? [] : [`rank 0's output layer counts as ${headLayers(layout).toFixed(1)} layers of work`]),
    ...stages.map((stage, rank) => {
      const parts = `layers ${layerRange(stage)}${stage.ends ? " + embedding and output" : ""}`;
      return `rank ${rank}  ${hosts[rank]!.addresses.join(",")}${hosts[rank]!.ssh ? " (ssh)" : ""}  ${parts}  loads ${formatBytes(stageBytes(layout, stage))}`;
    }),
    `per token, each hop: ${hop} bytes of hidden states (${layout.hiddenSize} × ${layout.activationBytes}), plus a ${headerBytes}-byte header per message; ${hosts.length} hops a step (the last back to rank 0)`,
  ];
  return `${lines.join("\n")}\n`;
}
