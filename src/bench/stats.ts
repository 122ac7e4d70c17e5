// Summary statistics for benchmark samples: mean ± sample standard deviation (as
// llama-bench reports), median and percentiles (as vLLM's serving benchmark reports).

export interface Summary {
  mean: number;
  sd: number;
  median: number;
  p99: number;
  min: number;
  max: number;
  n: number;
}

export function mean(values: number[]): number {
  return values.length === 0 ? Number.NaN : values.reduce((a, b) => a + b, 0) / values.length;
}

/** Sample standard deviation (n − 1); 0 for a single sample. */
export function sd(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  if (values.length === 1) return 0;
  const m = mean(values);
  return Math.sqrt(values.reduce((a, v) => a + (v - m) ** 2, 0) / (values.length - 1));
}

/** Linear interpolation between closest ranks (numpy's default), q in [0, 100]. */
export function percentile(values: number[], q: number): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const rank = (q / 100) * (sorted.length - 1);
  const lo = Math.floor(rank);
  const hi = Math.ceil(rank);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (rank - lo);
}

export const median = (values: number[]): number => percentile(values, 50);

export function summarize(values: number[]): Summary {
  // Sorted for min and max, not Math.min(...finite): a load test's inter-token gaps can run to
  // millions, past the stack's room for arguments.
  const finite = values.filter(Number.isFinite).sort((a, b) => a - b);
  return {
    mean: mean(finite),
    sd: sd(finite),
    median: median(finite),
    p99: percentile(finite, 99),
    min: finite[0] ?? Number.NaN,
    max: finite.at(-1) ?? Number.NaN,
    n: finite.length,
  };
}

/** "12.34 ± 0.56" */
export function meanSd(s: Pick<Summary, "mean" | "sd">, digits = 2): string {
  if (!Number.isFinite(s.mean)) return "-";
  return `${s.mean.toFixed(digits)} ± ${s.sd.toFixed(digits)}`;
}
