import type { MemoryFigures } from "../engine/device";
import type { SchedulerStats } from "../engine/scheduler";
import type { Provider } from "../providers";
import { acceptanceRate } from "../engine/speculative";
import { busyFraction, type StageFigures } from "../engine/pipeline/protocol";

// A small Prometheus registry: counters, gauges (set or read at scrape time) and histograms,
// written in the text exposition format (version 0.0.4).

type Labels = Record<string, string>;

const escapeLabel = (v: string) => v.replaceAll("\\", "\\\\").replaceAll('"', '\\"').replaceAll("\n", "\\n");
const formatLabels = (labels: Labels) => {
  const entries = Object.entries(labels);
  return entries.length === 0 ? "" : `{${entries.map(([k, v]) => `${k}="${escapeLabel(v)}"`).join(",")}}`;
};
const formatValue = (v: number) =>
  Number.isNaN(v) ? "NaN" : v === Infinity ? "+Inf" : v === -Infinity ? "-Inf" : String(v);
const key = (labels: Labels) => JSON.stringify(Object.entries(labels).sort());

interface Metric {
  render(): string[];
}

abstract class Base implements Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly type: "counter" | "gauge" | "histogram",
  ) {}
  header(): string[] {
    return [
      `# HELP ${this.name} ${this.help.replaceAll("\\", "\\\\").replaceAll("\n", "\\n")}`,
      `# TYPE ${this.name} ${this.type}`,
    ];
  }
  abstract render(): string[];
}

export class Counter extends Base {
  readonly #values = new Map<string, { labels: Labels; value: number }>();
  constructor(name: string, help: string) {
    super(name, help, "counter");
  }
  inc(labels: Labels = {}, by = 1): void {
    const k = key(labels);
    const entry = this.#values.get(k) ?? { labels, value: 0 };
    entry.value += by;
    this.#values.set(k, entry);
  }
  get(labels: Labels = {}): number {
    return this.#values.get(key(labels))?.value ?? 0;
  }
  render(): string[] {
    return [
      ...this.header(),
      ...[...this.#values.values()].map((e) => `${this.name}${formatLabels(e.labels)} ${formatValue(e.value)}`),
    ];
  }
}

type Read = () => number | { labels: Labels; value: number }[];

/** A value read from live state at scrape time. */
class Reading extends Base {
  constructor(
    name: string,
    help: string,
    type: "counter" | "gauge",
    readonly read: Read,
  ) {
    super(name, help, type);
  }
  render(): string[] {
    const v = this.read();
    const rows = typeof v === "number" ? [{ labels: {}, value: v }] : v;
    return [...this.header(), ...rows.map((e) => `${this.name}${formatLabels(e.labels)} ${formatValue(e.value)}`)];
  }
}

export class Gauge extends Reading {
  constructor(name: string, help: string, read: Read) {
    super(name, help, "gauge", read);
  }
}

/** A count the live state keeps itself (a split model's compute time, say), read at scrape time. */
export class CountReading extends Reading {
  constructor(name: `${string}_total`, help: string, read: Read) {
    super(name, help, "counter", read);
  }
}

type LiveSchedulers = () => { model: string; stats: SchedulerStats }[];

/**
 * A count each loaded model's scheduler keeps (its prefix-cache hits, say), read at scrape time, plus
 * what the model counted before it was unloaded: loaded again, it goes on from there rather than from
 * zero, so the counter never goes down while the server runs.
 */
export class ModelCount extends Base {
  readonly #unloaded = new Map<string, number>();
  constructor(
    name: `${string}_total`,
    help: string,
    readonly schedulers: LiveSchedulers,
    readonly pick: (s: SchedulerStats) => number | undefined,
  ) {
    super(name, help, "counter");
  }
  /** Keeps what a model that is being unloaded counted. */
  retire(model: string, stats: SchedulerStats): void {
    const value = this.pick(stats);
    if (value !== undefined) this.#unloaded.set(model, (this.#unloaded.get(model) ?? 0) + value);
  }
  render(): string[] {
    const totals = new Map(this.#unloaded);
    for (const { model, stats } of this.schedulers()) {
      const value = this.pick(stats);
      if (value !== undefined) totals.set(model, (totals.get(model) ?? 0) + value);
    }
    return [
      ...this.header(),
      ...[...totals].map(([model, value]) => `${this.name}${formatLabels({ model })} ${formatValue(value)}`),
    ];
  }
}

export class Histogram extends Base {
  readonly #series = new Map<string, { labels: Labels; counts: number[]; sum: number; count: number }>();
  constructor(
    name: string,
    help: string,
    readonly buckets: number[],
  ) {
    super(name, help, "histogram");
  }
  observe(value: number, labels: Labels = {}): void {
    const k = key(labels);
    let s = this.#series.get(k);
    if (!s) this.#series.set(k, (s = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 }));
    this.buckets.forEach((le, i) => {
      if (value <= le) s.counts[i]!++;
    });
    s.sum += value;
    s.count++;
  }
  /** Cumulative counts per bucket (and in all) over every label set, for windowed quantiles. */
  totals(): { counts: number[]; count: number } {
    const counts = this.buckets.map(() => 0);
    let count = 0;
    for (const s of this.#series.values()) {
      s.counts.forEach((n, i) => (counts[i]! += n));
      count += s.count;
    }
    return { counts, count };
  }
  render(): string[] {
    const lines = this.header();
    for (const s of this.#series.values()) {
      this.buckets.forEach((le, i) =>
        lines.push(`${this.name}_bucket${formatLabels({ ...s.labels, le: formatValue(le) })} ${s.counts[i]}`),
      );
      lines.push(`${this.name}_bucket${formatLabels({ ...s.labels, le: "+Inf" })} ${s.count}`);
      lines.push(`${this.name}_sum${formatLabels(s.labels)} ${formatValue(s.sum)}`);
      lines.push(`${this.name}_count${formatLabels(s.labels)} ${s.count}`);
    }
    return lines;
  }
}

export class Registry {
  readonly #metrics: Metric[] = [];
  add<T extends Metric>(metric: T): T {
    this.#metrics.push(metric);
    return metric;
  }
  render(): string {
    return `${this.#metrics.flatMap((m) => m.render()).join("\n")}\n`;
  }
}

const latencyBuckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];

/**
 * The server's metrics. Gauges read live state through the callbacks given; call retireModel with a
 * model's figures as it is unloaded, so its counts go on when it is loaded again.
 */
export function serverMetrics(live: {
  schedulers: LiveSchedulers;
  running: () => number;
  waiting: () => number;
  waitingForModel: () => number;
  loadedModels: () => number;
  loadingModels: () => string[];
  memory: () => MemoryFigures;
  providers: () => Provider[];
}) {
  const registry = new Registry();
  const modelCount = (name: `${string}_total`, help: string, pick: (s: SchedulerStats) => number | undefined) =>
    registry.add(new ModelCount(name, help, live.schedulers, pick));
  const metrics = {
    registry,
    requests: registry.add(new Counter("mlx_http_requests_total", "HTTP requests by route and status code")),
    finished: registry.add(
      new Counter(
        "mlx_generations_total",
        "Generations by route and finish reason (stop, length, cancelled, timeout, shutdown, error), each once, those that ended before they started included",
      ),
    ),
    promptTokens: registry.add(
      new Counter("mlx_prompt_tokens_total", "Prompt tokens processed, by generations and embeddings"),
    ),
    generatedTokens: registry.add(new Counter("mlx_generation_tokens_total", "Tokens generated")),
    ttft: registry.add(
      new Histogram(
        "mlx_time_to_first_token_seconds",
        "Time from a request's arrival (its wait for its model included) to its first generated token",
        latencyBuckets,
      ),
    ),
    e2e: registry.add(
      new Histogram(
        "mlx_e2e_request_latency_seconds",
        "Time from a request's arrival (its wait for its model included) to the end of its generation",
        latencyBuckets,
      ),
    ),
    queueWait: registry.add(
      new Histogram(
        "mlx_queue_wait_seconds",
        "Time a request waited before its prefill: for its model (its load, or room for it), then in the queue",
        latencyBuckets,
      ),
    ),
    running: registry.add(new Gauge("mlx_requests_running", "Requests generating now", live.running)),
    waiting: registry.add(new Gauge("mlx_requests_waiting", "Requests waiting in the queue", live.waiting)),
    waitingForModel: registry.add(
      new Gauge(
        "mlx_requests_waiting_for_model",
        "Requests waiting for their model to be loaded, or for another to go idle to make room for it",
        live.waitingForModel,
      ),
    ),
    models: registry.add(new Gauge("mlx_models_loaded", "Models held in memory", live.loadedModels)),
    // A series per model only while it loads: one that loaded, or failed to, leaves no stale 1 behind.
    loading: registry.add(
      new Gauge("mlx_model_loading", "1 for each model being loaded now (its weights read, its settings applied)", () =>
        live.loadingModels().map((model) => ({ labels: { model }, value: 1 })),
      ),
    ),
    activeMemory: registry.add(new Gauge("mlx_memory_active_bytes", "MLX active memory", () => live.memory().active)),
    peakMemory: registry.add(
      new Gauge("mlx_memory_peak_bytes", "MLX peak memory since the server started", () => live.memory().peak),
    ),
    cacheMemory: registry.add(
      new Gauge("mlx_memory_cache_bytes", "MLX buffer cache memory", () => live.memory().cache),
    ),
    liveArrays: registry.add(
      new Gauge(
        "mlx_arrays_live",
        "MLX array handles alive now (back to a baseline when idle)",
        () => live.memory().arrays,
      ),
    ),
    itl: registry.add(
      new Histogram(
        "mlx_inter_token_latency_seconds",
        "Time between two tokens of a running sequence (one decode step)",
        latencyBuckets,
      ),
    ),
    batchSize: registry.add(
      new Gauge("mlx_batch_size", "Sequences decoding together, per model", () => perModel(live, (s) => s.running)),
    ),
    batchLimit: registry.add(
      new Gauge("mlx_batch_limit", "Most sequences per decode step, per model (set by the tuner when on)", () =>
        perModel(live, (s) => s.maxBatch),
      ),
    ),
    prefillChunk: registry.add(
      new Gauge("mlx_prefill_chunk_tokens", "Prompt tokens prefilled between decode steps, per model", () =>
        perModel(live, (s) => s.prefillChunk, Math.max),
      ),
    ),
    tunerTarget: registry.add(
      new Gauge("mlx_tuner_target_itl_seconds", "The tuner's target P99 inter-token latency", () =>
        perModel(live, (s) => s.tuner && s.tuner.targetItlMs / 1000, Math.max),
      ),
    ),
    tunerP99: registry.add(
      new Gauge("mlx_tuner_estimated_p99_itl_seconds", "The tuner's smoothed P99 inter-token latency", () =>
        perModel(live, (s) => s.tuner?.estimatedP99Ms && s.tuner.estimatedP99Ms / 1000, Math.max),
      ),
    ),
    tunerAdjustments: modelCount(
      "mlx_tuner_adjustments_total",
      "Adjustments the tuner made, per model (the latest 10 in /stats)",
      (s) => s.tuner?.adjustments,
    ),
    prefixHits: modelCount(
      "mlx_prefix_cache_hits_total",
      "Requests that started from a cached prefix, per model",
      (s) => s.prefixCache?.hits,
    ),
    // With the hits, the lookups (and the hit rate) /stats gives.
    prefixMisses: modelCount(
      "mlx_prefix_cache_misses_total",
      "Requests that found no cached prefix, per model",
      (s) => s.prefixCache?.misses,
    ),
    prefixHitTokens: modelCount(
      "mlx_prefix_cache_hit_tokens_total",
      "Prompt tokens served from the prefix cache, per model",
      (s) => s.prefixCache?.hitTokens,
    ),
    prefixBytes: registry.add(
      new Gauge("mlx_prefix_cache_bytes", "Bytes held by the prefix cache, per model", () =>
        perModel(live, (s) => s.prefixCache?.bytes),
      ),
    ),
    // Remote providers (models.toml `provider = ...`): per provider (its base URL) and model.
    providerRequests: registry.add(
      new Counter(
        "mlx_provider_requests_total",
        "Requests to remote providers by provider, model and outcome (ok, cancelled, timeout, unavailable, rejected, rate_limited, circuit_open, queue_full, invalid_answer, unsupported, error)",
      ),
    ),
    providerRetries: registry.add(
      new Counter(
        "mlx_provider_retries_total",
        "Retries of remote requests by provider, model and reason (an HTTP status, connection, timeout, stream, invalid_answer)",
      ),
    ),
    providerFirstByte: registry.add(
      new Histogram(
        "mlx_provider_time_to_first_byte_seconds",
        "Time from a request to the first event of its remote answer, retries included",
        latencyBuckets,
      ),
    ),
    providerDuration: registry.add(
      new Histogram(
        "mlx_provider_request_duration_seconds",
        "Time from a request to the end of its remote answer",
        latencyBuckets,
      ),
    ),
    providerInUse: registry.add(
      new Gauge("mlx_provider_connections_in_use", "Connections of a remote provider's pool in use", () =>
        live.providers().map((p) => ({ labels: { provider: p.label }, value: p.pool.inUse })),
      ),
    ),
    providerMax: registry.add(
      new Gauge("mlx_provider_connections_max", "Most connections of a remote provider's pool", () =>
        live.providers().map((p) => ({ labels: { provider: p.label }, value: p.pool.max })),
      ),
    ),
    providerWaiting: registry.add(
      new Gauge("mlx_provider_queue_waiting", "Requests waiting for a connection to a remote provider", () =>
        live.providers().map((p) => ({ labels: { provider: p.label }, value: p.pool.waiting })),
      ),
    ),
    providerCircuit: registry.add(
      new Gauge("mlx_provider_circuit_state", "A remote provider's circuit: 1 for its current state", () =>
        live.providers().flatMap((p) =>
          CIRCUIT_STATES.map((state) => ({
            labels: { provider: p.label, state },
            value: p.circuit.state === state ? 1 : 0,
          })),
        ),
      ),
    ),
    draftedTokens: modelCount(
      "mlx_speculative_drafted_tokens_total",
      "Tokens drafted by speculative decoding, per model",
      (s) => s.speculation?.drafted,
    ),
    acceptedTokens: modelCount(
      "mlx_speculative_accepted_tokens_total",
      "Drafted tokens the model kept, per model",
      (s) => s.speculation?.accepted,
    ),
    acceptanceRate: registry.add(
      new Gauge("mlx_speculative_acceptance_rate", "Accepted over drafted tokens, per model", () => {
        // Over all the name's entries' tokens: two rates do not add up.
        const accepted = new Map(perModel(live, (s) => s.speculation?.accepted).map((r) => [r.labels.model, r.value]));
        return perModel(live, (s) => s.speculation?.drafted).map(({ labels, value: drafted }) => ({
          labels,
          value: acceptanceRate({ drafted, accepted: accepted.get(labels.model)! }),
        }));
      }),
    ),
    stageCompute: registry.add(
      new CountReading(
        "mlx_pipeline_stage_compute_seconds_total",
        "Time each rank of a split model spent computing its layers",
        () => perStage(live, (s) => s.computeMs / 1000),
      ),
    ),
    stageWait: registry.add(
      new CountReading(
        "mlx_pipeline_stage_receive_wait_seconds_total",
        "Time each rank of a split model waited to receive",
        () => perStage(live, (s) => s.waitMs / 1000),
      ),
    ),
    stageBusy: registry.add(
      new Gauge(
        "mlx_pipeline_stage_busy_ratio",
        "Share of each rank's time spent computing rather than waiting for work, since it started",
        () => perStage(live, busyFraction),
      ),
    ),
    stageMemory: registry.add(
      new Gauge("mlx_pipeline_stage_memory_active_bytes", "MLX active memory of each rank of a split model", () =>
        perStage(live, (s) => s.activeBytes),
      ),
    ),
    stagePeakMemory: registry.add(
      new Gauge(
        "mlx_pipeline_stage_memory_peak_bytes",
        "MLX peak memory of each rank of a split model since it started",
        () => perStage(live, (s) => s.peakBytes),
      ),
    ),
    maxInFlight: registry.add(
      new Gauge("mlx_pipeline_max_in_flight", "Most decode micro-batches rank 0 had in flight at once", () =>
        perModel(live, (s) => s.pipeline?.maxInFlight, Math.max),
      ),
    ),
    stageBytesPerToken: registry.add(
      new Gauge(
        "mlx_pipeline_sent_bytes_per_token",
        "Bytes each rank of a split model sent on per token position",
        () => perStage(live, (s) => (s.tokens > 0 ? s.sentBytes / s.tokens : 0)),
      ),
    ),
  };
  return {
    ...metrics,
    /** Keeps what a model that is being unloaded counted in the per-model counters. */
    retireModel(model: string, stats: SchedulerStats): void {
      for (const metric of Object.values(metrics)) if (metric instanceof ModelCount) metric.retire(model, stats);
    },
  };
}

const CIRCUIT_STATES = ["closed", "half_open", "open"] as const;

/** One row per stage (rank 1 onwards) of each model split across processes. */
function perStage(live: { schedulers: LiveSchedulers }, pick: (s: StageFigures) => number) {
  return live
    .schedulers()
    .flatMap(({ model, stats }) =>
      (stats.pipeline?.stages ?? []).map((s) => ({ labels: { model, rank: String(s.rank) }, value: pick(s) })),
    );
}

const sum = (a: number, b: number) => a + b;

/**
 * One row per loaded model that has the figure. A name loaded twice (models.toml changed its
 * alias's settings while the first was loaded: two entries) is one row, its entries' figures
 * `combine`d (summed, or a limit's largest): a series given twice is a malformed exposition.
 */
function perModel(
  live: { schedulers: LiveSchedulers },
  pick: (s: SchedulerStats) => number | undefined,
  combine: (a: number, b: number) => number = sum,
) {
  const byModel = new Map<string, number>();
  for (const { model, stats } of live.schedulers()) {
    const value = pick(stats);
    if (value === undefined) continue;
    const earlier = byModel.get(model);
    byModel.set(model, earlier === undefined ? value : combine(earlier, value));
  }
  return [...byModel].map(([model, value]) => ({ labels: { model }, value }));
}

export type ServerMetrics = ReturnType<typeof serverMetrics>;
