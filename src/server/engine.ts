// The contract between the HTTP layer and whatever generates tokens. Routes build a
// GenerationRequest, submit it, and read GenerationEvents until "done" (or "error"); they never
// touch the model. Today a serial loop implements it (scheduler.ts); a continuous-batching
// scheduler can replace it by implementing the same interface, without touching any route.
// The shapes deliberately match src/engine/scheduler.ts so that one can be adapted in a few lines.
export { QueueFullError } from "../engine/scheduler";
export type { FinishReason, GenerationEvent, GenerationRequest, GenerationUsage, TokenLogprob } from "../engine/scheduler";
import type { GenerationEvent, GenerationRequest } from "../engine/scheduler";
import type { TunerAdjustment } from "../engine/tuner";

export interface EngineStats {
  running: number;
  waiting: number;
  maxQueue: number;
  /** Current decode batch limit and prefill chunk (the tuner may move them). */
  maxBatch?: number;
  prefillChunk?: number;
  tuner?: { targetItlMs: number; estimatedP99Ms?: number; adjustments: number; recent: TunerAdjustment[] };
  prefixCache?: { entries: number; bytes: number; hits: number; misses: number; hitTokens: number };
}

export interface Engine {
  /**
   * Queues a generation; its events arrive on the returned stream, always ending with one
   * "done" or "error". Throws QueueFullError (synchronously) when the queue is full.
   */
  submit(request: GenerationRequest): AsyncIterable<GenerationEvent>;
  readonly stats: EngineStats;
  /** Whether submit() would be accepted now. */
  readonly accepting: boolean;
  /** Cancels everything and releases what the engine holds. */
  dispose(): void;
}
