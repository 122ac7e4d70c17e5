// Every engine step timed, for the serving benchmarks (serve-steps.ts, serve-profile.ts): wraps
// BatchGenerator.step, so that the scheduler `mlx serve` runs is measured as it is.
import { BatchGenerator } from "../src/engine/batch";
import { median } from "./lib";

export interface StepRecord {
  /** Clock (performance.now()) at the step's start and end. */
  start: number;
  end: number;
  /** The process's CPU time during the step (the engine's threads included). */
  cpuMs: number;
  /** Sequences decoding before and after the step, and whether any waited. */
  before: number;
  after: number;
  waiting: boolean;
  /** Tokens the step delivered. */
  tokens: number;
}

/** From now on, every step of every BatchGenerator is recorded into `records()` (reset() starts afresh). */
export function recordSteps(): { records: () => StepRecord[]; reset: () => void } {
  let records: StepRecord[] = [];
  const step = BatchGenerator.prototype.step;
  BatchGenerator.prototype.step = function (this: BatchGenerator) {
    const [before, waiting] = [this.running, this.waiting > 0];
    const [start, cpu] = [performance.now(), process.cpuUsage()];
    const events = step.call(this);
    const used = process.cpuUsage(cpu);
    records.push({
      start,
      end: performance.now(),
      cpuMs: (used.user + used.system) / 1000,
      before,
      after: this.running,
      waiting,
      tokens: events.length,
    });
    return events;
  };
  return { records: () => records, reset: () => (records = []) };
}

/** Decode steps by the rows they decoded: "rows: count × median ms", fewest rows first. */
export function byRows(decodes: StepRecord[]): string {
  const times = new Map<number, number[]>();
  for (const r of decodes) times.set(r.before, [...(times.get(r.before) ?? []), r.end - r.start]);
  return [...times.entries()]
    .sort(([a], [b]) => a - b)
    .map(([rows, ms]) => `${rows}: ${ms.length} × ${median(ms).toFixed(1)}`)
    .join(", ");
}
