// What `mlx launch` has ssh run on a remote host, run here by sh the way sshd would: the rank
// gets the ring hostfile, its rank and our MLX_* variables in our directory; the launcher's
// signals reach it over stdin, the end of stdin (a dropped connection) stops it, its status
// is the command's, and its hostfile is removed. scripts/ssh-launch-check.sh runs it under a
// real sshd.
import { describe, expect, test } from "bun:test";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { remoteCommand } from "../src/cmd/launch";

const ring = JSON.stringify([["10.0.0.1:5000"], ["10.0.0.2:5001"]]);

/** The remote side of rank 1 running `script` (a stand-in for the mlx executable). */
function remote(script: string) {
  process.env.MLX_LAUNCH_TEST = "it's here";
  // As an mlx.launch hostfile's "envs" give it (MLX_RANK is the launcher's to set).
  const command = remoteCommand(ring, 1, ["sh", "-c", script], [], { HOSTFILE_ENV: "from 'envs'", MLX_RANK: "7" });
  delete process.env.MLX_LAUNCH_TEST;
  const child = spawn("sh", ["-c", command], { stdio: ["pipe", "pipe", "pipe"] });
  let stdout = "";
  child.stdout.on("data", (chunk) => (stdout += chunk));
  const exit = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  const line = async () => {
    while (!stdout.includes("\n")) await Bun.sleep(10);
    return stdout.split("\n")[0]!.split(" ");
  };
  return { child, exit, line };
}

// Prints what it was given, then waits to be stopped (sleep in the background, so the shell
// that is the rank takes the signal and reports it).
const rank =
  'echo "$MLX_RANK $PWD $MLX_HOSTFILE $(cat "$MLX_HOSTFILE") $MLX_LAUNCH_TEST:$HOSTFILE_ENV"; sleep 30 & wait';

describe("a remote rank", () => {
  test("gets its rank, directory, ring hostfile, our MLX_* variables and the hostfile's; a signal name on stdin reaches it", async () => {
    const r = remote(rank);
    const [rankText, cwd, hostfile, written, ...variable] = await r.line();
    expect(rankText).toBe("1");
    expect(cwd).toBe(process.cwd());
    expect(written).toBe(ring);
    expect(variable.join(" ")).toBe("it's here:from 'envs'");
    r.child.stdin!.write("TERM\n");
    expect(await r.exit).toBe(143); // 128 + SIGTERM: the rank's own status
    expect(existsSync(hostfile!)).toBe(false);
  });

  test("stops when its stdin closes (the launcher or the connection gone)", async () => {
    const r = remote(rank);
    const [, , hostfile] = await r.line();
    r.child.stdin!.end();
    expect(await r.exit).toBe(143);
    expect(existsSync(hostfile!)).toBe(false);
  });

  test("a rank that ends by itself ends the remote command with its status, stdin still open", async () => {
    const r = remote("exit 3");
    expect(await r.exit).toBe(3);
    r.child.stdin!.end();
  });
});
