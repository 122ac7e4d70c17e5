// The adaptive tuner: given a target P99 inter-token latency, it smooths what it observes and
// adjusts the decode batch limit and the prefill chunk size within bounds. Too slow: fewer
// sequences per step and smaller prefill chunks (shorter steps); comfortably fast: more, but a
// bigger batch only once the batch is full (a fast step of fewer sequences says nothing of more).
// It moves only a knob whose effect its observations show: the prefill chunk only while it bounded
// a prefill in the steps its estimate stands on (a prompt left over when the chunk was used up:
// otherwise the chunk's size changes no step, short prompts being prefilled whole at any size);
// those steps, not the latest alone, since a slow prefill step lifts the estimate for the plain
// decode steps after it too.
export interface TunerLimits {
  maxBatch: number;
  prefillChunk: number;
}

export interface TunerBounds {
  minBatch: number;
  maxBatch: number;
  minChunk: number;
  maxChunk: number;
}

export interface TunerAdjustment {
  at: number;
  reason: string;
  from: TunerLimits;
  to: TunerLimits;
}

export interface TunerOptions {
  targetItlMs: number;
  bounds: TunerBounds;
  initial: TunerLimits;
  /** EMA weight of a new observation. */
  alpha?: number;
  /** Observations between two adjustments, so each change is seen before the next. */
  settle?: number;
  now?: () => number;
}

export class AdaptiveTuner {
  limits: TunerLimits;
  /** Smoothed mean inter-token latency (ms). */
  emaMs?: number;
  /** Smoothed mean absolute deviation (ms); mean + 3 × this approximates the P99. */
  emaDeviationMs = 0;
  /** The latest adjustments (at most 100). */
  readonly adjustments: TunerAdjustment[] = [];
  /** Adjustments made in all, also those no longer kept. */
  adjustmentCount = 0;
  #sinceChange = 0;
  /** Observations since the latest step whose prefill filled the chunk. */
  #sinceChunkFilled = Infinity;
  readonly #alpha: number;
  readonly #settle: number;
  readonly #now: () => number;

  constructor(readonly options: TunerOptions) {
    this.limits = { ...options.initial };
    this.#alpha = options.alpha ?? 0.2;
    this.#settle = options.settle ?? 8;
    this.#now = options.now ?? Date.now;
  }

  get targetMs(): number {
    return this.options.targetItlMs;
  }

  /** Estimated P99 inter-token latency from the smoothed mean and deviation. */
  get estimatedP99Ms(): number | undefined {
    return this.emaMs === undefined ? undefined : this.emaMs + 3 * this.emaDeviationMs;
  }

  /**
   * Records one inter-token latency, of a decode step of `batch` sequences that `chunkFilled`
   * tells whether a prefill used the whole chunk in, prompt left over; returns the new limits
   * when they changed.
   */
  observe(itlMs: number, batch: number, chunkFilled: boolean): TunerLimits | undefined {
    if (!Number.isFinite(itlMs) || itlMs < 0) return undefined;
    if (this.emaMs === undefined) this.emaMs = itlMs;
    else {
      this.emaDeviationMs = (1 - this.#alpha) * this.emaDeviationMs + this.#alpha * Math.abs(itlMs - this.emaMs);
      this.emaMs = (1 - this.#alpha) * this.emaMs + this.#alpha * itlMs;
    }
    this.#sinceChunkFilled = chunkFilled ? 0 : this.#sinceChunkFilled + 1;
    if (++this.#sinceChange < this.#settle) return undefined;
    // Whether the chunk bounded a prefill in the steps the estimate stands on (about the latest `settle`).
    const chunkBound = this.#sinceChunkFilled < this.#settle;
    const p99 = this.estimatedP99Ms!;
    const { bounds } = this.options;
    const from = { ...this.limits };
    let reason: string;
    if (p99 > this.targetMs) {
      // Over target: halve the prefill chunk first (it stalls every stream), then shed a sequence.
      if (chunkBound && this.limits.prefillChunk > bounds.minChunk)
        this.limits.prefillChunk = Math.max(bounds.minChunk, Math.floor(this.limits.prefillChunk / 2));
      // One fewer than the batch that was too slow: a limit above it would shed nothing. A batch
      // already at the smallest has nothing to shed, and says nothing of what a lower limit would
      // do to a bigger one: the limit stays. So does a batch above the limit: the limit turns new
      // sequences away but sheds none, and until running ones end the last cut is yet to be seen.
      else if (batch > bounds.minBatch && batch <= this.limits.maxBatch)
        this.limits.maxBatch = Math.max(bounds.minBatch, batch - 1);
      reason = `p99 ${p99.toFixed(1)} ms > target ${this.targetMs} ms`;
    } else if (p99 < 0.7 * this.targetMs) {
      // Comfortably under: admit one more sequence when the batch is full, else grow the prefill
      // chunk back while one is in use.
      if (batch >= this.limits.maxBatch && this.limits.maxBatch < bounds.maxBatch) this.limits.maxBatch += 1;
      else if (chunkBound) this.limits.prefillChunk = Math.min(bounds.maxChunk, this.limits.prefillChunk * 2);
      reason = `p99 ${p99.toFixed(1)} ms < 70% of target ${this.targetMs} ms`;
    } else return undefined;
    if (from.maxBatch === this.limits.maxBatch && from.prefillChunk === this.limits.prefillChunk) return undefined;
    this.#sinceChange = 0;
    this.adjustmentCount++;
    this.adjustments.push({ at: this.#now(), reason, from, to: { ...this.limits } });
    if (this.adjustments.length > 100) this.adjustments.shift();
    return { ...this.limits };
  }
}
