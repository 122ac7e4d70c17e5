// What every route shares: the configuration, the model registry and the metrics.
import type { ServerMetrics } from "./metrics";
import type { ModelRegistry } from "./model-registry";
import type { InFlight } from "./inflight";

export interface ServerConfig {
  /** Every route but the probes (/health, /ready) and the pages needs `Authorization: Bearer <apiKey>` (or `x-api-key`) when set. */
  apiKey?: string;
  /** Origins allowed by CORS (none: no CORS headers at all). */
  corsOrigins: string[];
  /** Whether the server listens on loopback only: then only requests addressed to this machine by name are answered. */
  loopbackOnly: boolean;
  /** Host names a loopback server answers besides this machine's (a reverse proxy that passes its own Host on). */
  allowedHosts: string[];
  maxBodyBytes: number;
  requestTimeoutMs: number;
  /** The model a request that names none gets (the one given to `mlx serve -m`). */
  defaultModel?: string;
  /** Bytes the Responses API's stored responses (`store: true`) may hold in all; the oldest go first. */
  storedResponseBytes: number;
  /** Bytes of a streamed answer its client may leave unread before it is cut off (respond.ts's DEFAULT_UNREAD_STREAM_BYTES). */
  unreadStreamBytes: number;
  /** Most sequences a model's scheduler ever holds at once (its largest batch plus its queue). */
  maxSequences: number;
  version: string;
}

export interface ServerState {
  config: ServerConfig;
  models: ModelRegistry;
  metrics: ServerMetrics;
  /** The generations running or queued now (the dashboard's table). */
  inflight: InFlight;
  startedAt: number;
  requests: { total: number; byStatus: Record<string, number>; byRoute: Record<string, number> };
  /** Logs an unexpected error (the client sees a bare 500). */
  logError: (error: unknown) => void;
  /** Told what the server did besides answering (a model evicted from the store by a pull). */
  logWarning: (message: string) => void;
  /** What an operator wants to see by default (a pull's start and end): ServerOptions.logInfo. */
  logInfo: (message: string) => void;
  /** Set once the server stops taking connections: the dashboard's feeds end rather than hold the stop up. */
  stopping: boolean;
  /**
   * Aborted when a stopping server's grace period ends: the generations still running end with
   * their API's last error message (a 503) instead of a cut connection.
   */
  shutdown: AbortController;
  /** Resolves once the prompt cache files queued so far (serve --prompt-cache-dir) are written. */
  promptCacheWrites: () => Promise<void>;
}

/** When the server started, as a date: what a model with no stored date of its own is dated by. */
export const serverStartDate = (s: ServerState): Date => new Date(performance.timeOrigin + s.startedAt);
