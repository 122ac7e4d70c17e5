// Operational routes: /health (liveness; 503 while the first model loads), /ready (would a
// request be served now), /stats (JSON), /metrics (Prometheus text).
import { Hono } from "hono";
import { memoryFigures } from "../../engine/device";
import { acceptanceRate } from "../../engine/speculative";
import { busyFraction, type PipelineFigures } from "../../engine/pipeline";
import type { TunerLimits } from "../../engine/tuner";
import type { ServerState } from "../state";
import { servedContextLength } from "../generation";

export function queueFigures(s: ServerState) {
  let running = 0;
  let waiting = 0;
  let maxQueue = 0;
  for (const e of s.models.loaded) {
    running += e.scheduler.stats.running;
    waiting += e.scheduler.stats.waiting;
    maxQueue += e.scheduler.stats.maxQueue;
  }
  return { running, waiting, max_queue: maxQueue };
}

/**
 * The probes that answer without the API key: liveness (/health) and readiness (/ready) are asked
 * by Kubernetes and load balancers, which carry no key (vLLM likewise keys only its API routes).
 * /metrics tells more (model names, traffic) and keeps the key; Prometheus can send one.
 */
export const keylessProbes: ReadonlySet<string> = new Set(["/health", "/ready"]);

export function opsRoutes(s: ServerState): Hono {
  const r = new Hono();
  r.get("/health", (c) => {
    if (s.models.startingUp) return c.json({ status: "loading" }, 503);
    const lost = lostPipeline(s);
    return lost ? c.json({ status: "failing", error: lost }, 503) : c.json({ status: "ok" });
  });

  r.get("/ready", (c) => {
    if (s.models.startingUp) return c.json({ ready: false, reason: "loading the first model" }, 503);
    // Every request naming no model would fail: not ready, though other models may still be served.
    const failure = s.models.pinnedFailure;
    if (failure) return c.json({ ready: false, reason: `the default model failed to load: ${failure}` }, 503);
    const lost = lostPipeline(s);
    if (lost) return c.json({ ready: false, reason: lost }, 503);
    const busy = s.models.loaded
      .filter((e) => !e.scheduler.accepting || e.embeddings >= s.config.maxSequences)
      .map((e) => e.name)
      .concat(s.models.waitingFull);
    if (busy.length > 0) return c.json({ ready: false, reason: `queue full for ${busy.join(", ")}` }, 503);
    return c.json({ ready: true });
  });

  r.get("/stats", (c) => c.json(stats(s)));

  r.get("/metrics", (c) =>
    c.body(s.metrics.registry.render(), 200, { "Content-Type": "text/plain; version=0.0.4; charset=utf-8" }),
  );
  return r;
}

/**
 * Why a model split across processes can no longer answer (a rank died), while this one stops, or
 * may not (a rank silent for half the peer timeout).
 */
function lostPipeline(s: ServerState): string | undefined {
  return s.models.loaded
    .map((e) => e.scheduler.stats.pipeline)
    .map((p) => p?.lost ?? p?.suspect)
    .find(Boolean);
}

/** The figures of /stats (also sent once a second to the dashboard). */
/** A tuner's limits under the names /stats gives them beside (max_batch, prefill_chunk). */
const limits = (l: TunerLimits) => ({ max_batch: l.maxBatch, prefill_chunk: l.prefillChunk });

export function stats(s: ServerState) {
  return {
    uptime_seconds: (performance.now() - s.startedAt) / 1000,
    // A request waiting for its model (its load, or room to load it) is in no scheduler's queue yet.
    queue: { ...queueFigures(s), waiting_for_model: s.models.acquiring },
    models: s.models.loaded.map((e) => ({
      name: e.name,
      path: e.path,
      active_requests: e.active,
      running: e.scheduler.stats.running,
      waiting: e.scheduler.stats.waiting,
      max_queue: e.scheduler.stats.maxQueue,
      max_batch: e.scheduler.stats.maxBatch,
      prefill_chunk: e.scheduler.stats.prefillChunk,
      tuner: e.scheduler.stats.tuner && {
        target_itl_ms: e.scheduler.stats.tuner.targetItlMs,
        estimated_p99_itl_ms: e.scheduler.stats.tuner.estimatedP99Ms ?? null,
        adjustments: e.scheduler.stats.tuner.adjustments,
        recent_adjustments: e.scheduler.stats.tuner.recent.map((a) => ({
          at: new Date(a.at).toISOString(),
          reason: a.reason,
          from: limits(a.from),
          to: limits(a.to),
        })),
      },
      prefix_cache: e.scheduler.stats.prefixCache && {
        entries: e.scheduler.stats.prefixCache.entries,
        bytes: e.scheduler.stats.prefixCache.bytes,
        hits: e.scheduler.stats.prefixCache.hits,
        misses: e.scheduler.stats.prefixCache.misses,
        hit_tokens: e.scheduler.stats.prefixCache.hitTokens,
      },
      speculation: e.scheduler.stats.speculation && {
        method: e.scheduler.stats.speculation.method,
        num_draft: e.scheduler.stats.speculation.numDraft,
        max_batch: e.scheduler.stats.speculation.maxBatch,
        steps: e.scheduler.stats.speculation.steps,
        drafted_tokens: e.scheduler.stats.speculation.drafted,
        accepted_tokens: e.scheduler.stats.speculation.accepted,
        acceptance_rate: acceptanceRate(e.scheduler.stats.speculation),
      },
      pipeline: e.scheduler.stats.pipeline && pipelineStats(e.scheduler.stats.pipeline),
      keep_alive_seconds: e.keepAliveMs === Infinity ? -1 : e.keepAliveMs / 1000,
      expires_at: e.expiresAt?.toISOString() ?? null,
      loaded_at: e.loadedAt.toISOString(),
      load_seconds: e.loadMs / 1000,
      weight_bytes: e.lm.weightBytes,
      context_length: servedContextLength(e.name, e.lm),
    })),
    requests: { total: s.requests.total, by_status: s.requests.byStatus, by_route: s.requests.byRoute },
    memory: memoryFigures(),
  };
}

/** Each stage of a model split across processes: busy and waiting time, bytes sent per token. */
function pipelineStats(p: PipelineFigures) {
  const perToken = (bytes: number, tokens: number) => (tokens > 0 ? bytes / tokens : 0);
  return {
    ranks: p.ranks,
    lost: p.lost ?? null,
    suspect: p.suspect ?? null,
    sent_bytes: p.sentBytes,
    sent_bytes_per_token: perToken(p.sentBytes, p.tokens),
    receive_wait_seconds: p.waitMs / 1000,
    micro_batches: p.microBatches,
    max_in_flight: p.maxInFlight,
    stages: p.stages.map((s) => ({
      rank: s.rank,
      compute_seconds: s.computeMs / 1000,
      receive_wait_seconds: s.waitMs / 1000,
      busy_fraction: busyFraction(s),
      sent_bytes: s.sentBytes,
      sent_bytes_per_token: perToken(s.sentBytes, s.tokens),
      tokens: s.tokens,
      steps_built_ahead: s.builtAhead,
      steps_guessed_wrong: s.guessedWrong,
      active_memory_bytes: s.activeBytes,
      peak_memory_bytes: s.peakBytes,
    })),
  };
}
