// The dashboard's feed: once a second, the figures of /stats plus what a chart needs that /stats
// does not carry: tokens generated so far (counted live), the generations in flight, and time to
// first token and inter-token latency percentiles over the last few seconds.
import type { Histogram } from "../metrics";
import { stats } from "../routes/ops";
import type { ServerState } from "../state";

/** Seconds of history behind the latency percentiles. */
const WINDOW = 10;

export type Percentiles = { p50: number; p90: number; p99: number } | null;

/**
 * The q-quantile of the observations between two cumulative snapshots of a histogram, linearly
 * interpolated inside its bucket (as Prometheus' histogram_quantile does); null with none.
 */
export function windowQuantile(
  buckets: number[],
  from: { counts: number[]; count: number },
  to: { counts: number[]; count: number },
  q: number,
): number | null {
  const total = to.count - from.count;
  if (total <= 0) return null;
  const rank = q * total;
  let below = 0;
  for (let i = 0; i < buckets.length; i++) {
    const upTo = to.counts[i]! - from.counts[i]!;
    if (upTo >= rank) {
      const lower = i === 0 ? 0 : buckets[i - 1]!;
      return lower + ((buckets[i]! - lower) * (rank - below)) / Math.max(upTo - below, 1);
    }
    below = upTo;
  }
  return buckets.at(-1)!; // in the +Inf bucket: the largest bound is all that is known
}

/** One feed per dashboard connection: it remembers the last WINDOW seconds of histograms. */
export function dashboardFeed(s: ServerState): () => unknown {
  const history = new Map<Histogram, { counts: number[]; count: number }[]>();
  const percentiles = (h: Histogram): Percentiles => {
    const past = history.get(h) ?? [];
    const now = h.totals();
    past.push(now);
    if (past.length > WINDOW + 1) past.shift();
    history.set(h, past);
    const q = (p: number) => windowQuantile(h.buckets, past[0]!, now, p);
    const p50 = q(0.5);
    return p50 === null ? null : { p50, p90: q(0.9)!, p99: q(0.99)! };
  };
  return () => {
    const now = performance.now();
    return {
      time: Date.now() / 1000,
      stats: stats(s),
      generated_tokens: s.inflight.generatedTokens,
      ttft_seconds: percentiles(s.metrics.ttft),
      itl_seconds: percentiles(s.metrics.itl),
      in_flight: s.inflight.list.map((f) => ({
        id: f.id,
        model: f.model,
        age_seconds: (now - f.startedAt) / 1000,
        prompt_tokens: f.promptTokens,
        tokens: f.tokens,
      })),
    };
  };
}
