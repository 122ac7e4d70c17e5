// Helpers shared by the benchmark scripts.
export interface Timed {
  stdout: string;
  stderr: string;
  exitCode: number;
  /** ms from spawn to the first stdout byte after `marker` (the answer's first byte). */
  firstByteMs: number;
  totalMs: number;
}

/** Runs a command to its end, timing when its answer starts (the first stdout byte after `marker`). */
export async function spawnTimed(
  cmd: string[],
  marker: string,
  options: { cwd?: string; env?: Record<string, string | undefined> } = {},
): Promise<Timed> {
  const started = performance.now();
  const proc = Bun.spawn(cmd, { ...options, stdout: "pipe", stderr: "pipe", stdin: "ignore" });
  let stdout = "";
  let firstByteMs = Number.NaN;
  const decoder = new TextDecoder();
  const stderr = new Response(proc.stderr).text();
  for await (const chunk of proc.stdout) {
    stdout += decoder.decode(chunk, { stream: true });
    if (Number.isNaN(firstByteMs)) {
      const at = stdout.indexOf(marker);
      if (at >= 0 && stdout.length > at + marker.length) firstByteMs = performance.now() - started;
    }
  }
  const exitCode = await proc.exited;
  const text = await stderr;
  if (exitCode !== 0) throw new Error(`${cmd[0]} exited with ${exitCode}: ${text.trim().split("\n").at(-1)}`);
  return { stdout, stderr: text, exitCode, firstByteMs, totalMs: performance.now() - started };
}

export function median(values: number[]): number {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return Number.NaN;
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

export function ratio(a: number, b: number): string {
  return Number.isFinite(a / b) ? `${(a / b).toFixed(2)}×` : "n/a";
}

/**
 * Starts `mlx serve` (any command line that runs it, e.g. under `mlx launch`) and waits until it
 * listens and answers /health; its stderr is drained after that so the pipe never fills.
 */
export async function spawnServe(
  cmd: string[],
  label = "serve",
  env?: Record<string, string | undefined>,
): Promise<{ proc: Bun.Subprocess; url: string }> {
  const proc = Bun.spawn(cmd, { stdout: "ignore", stderr: "pipe", env });
  const listening = /listening on (http:\S+)/;
  let err = "";
  const reader = proc.stderr.getReader();
  while (!listening.test(err)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`${label} exited: ${err}`);
    err += new TextDecoder().decode(value);
  }
  void (async () => {
    while (!(await reader.read()).done);
  })();
  const url = listening.exec(err)![1]!;
  while ((await fetch(`${url}/health`)).status !== 200) await Bun.sleep(100);
  return { proc, url };
}
