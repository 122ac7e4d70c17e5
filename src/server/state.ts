// What every route shares: the configuration, the model registry and the metrics.
import type { ServerMetrics } from "./metrics";
import type { ModelRegistry } from "./models";
import type { InFlight } from "./inflight";

export interface ServerConfig {
  /** Every route but /health needs `Authorization: Bearer <apiKey>` when set. */
  apiKey?: string;
  /** Origins allowed by CORS (none: no CORS headers at all). */
  corsOrigins: string[];
  maxBodyBytes: number;
  requestTimeoutMs: number;
  /** The model a request that names none gets (the one given to `mlx serve -m`). */
  defaultModel?: string;
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
}

export async function readJson(req: { text(): Promise<string> }): Promise<unknown> {
  const { ValidationError } = await import("../api/validate");
  const text = await req.text();
  if (!text.trim()) throw new ValidationError("the request body is empty (expected JSON)");
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new ValidationError(`the request body is not valid JSON: ${(error as Error).message}`);
  }
}
