// A models.toml entry that names a remote provider instead of weights:
//
//   [models.gpt]
//   provider = "openai"                    # or "anthropic"
//   base_url = "https://api.openai.com/v1" # any OpenAI-compatible server (Anthropic: https://api.anthropic.com)
//   model = "gpt-4o-mini"                  # the provider's name for it
//   api_key_env = "OPENAI_API_KEY"         # the environment variable holding the key (none: no key sent)
//   max_connections = 8                    # ... and the other limits below, all optional
//
// Models on the same base_url share one provider: its connection pool, its circuit and its
// metrics. Their kind and limits must then agree (checkSharedProviders).
import { MAX_TIMER_MS } from "../event-loop";

export type ProviderKind = "openai" | "anthropic";

export interface ProviderLimits {
  /** Requests in flight at once (connections in use); more wait in the queue. */
  maxConnections: number;
  /** Requests waiting for a connection; more are refused at once (429). */
  maxQueue: number;
  /** Longest wait for the provider to start answering (connect + response headers), ms. */
  connectTimeoutMs: number;
  /** Longest silence while reading an answer, ms. */
  readTimeoutMs: number;
  /** Tries after the first on connection errors, 429 and 5xx, before anything reached the client. */
  maxRetries: number;
  /** First backoff (doubled each retry, with jitter), ms; a Retry-After header takes precedence. */
  retryBaseMs: number;
  /** Longest backoff, Retry-After included, ms. */
  retryMaxMs: number;
  /** Consecutive failures that open the circuit. */
  circuitFailures: number;
  /** How long an open circuit refuses requests before letting one try (half-open), ms. */
  circuitCooldownMs: number;
}

export interface RemoteModelConfig {
  /** The alias. */
  name: string;
  kind: ProviderKind;
  /** The provider's URL as it is shown (errors, logs, /metrics, listings): no credentials, no query values. */
  baseUrl: string;
  /** The URL requests go to, with any user:password and query of base_url: never shown. */
  endpoint: string;
  /** Where the entry is written (file:line), which errors about its settings name. */
  definedAt: string;
  /** The model name the provider knows. */
  model: string;
  apiKeyEnv?: string;
  /** max_tokens sent when the request sets none (Anthropic requires one). */
  defaultMaxTokens: number;
  limits: ProviderLimits;
}

export const defaultLimits: ProviderLimits = {
  maxConnections: 8,
  maxQueue: 64,
  connectTimeoutMs: 10_000,
  readTimeoutMs: 120_000,
  maxRetries: 2,
  retryBaseMs: 250,
  retryMaxMs: 30_000,
  circuitFailures: 5,
  circuitCooldownMs: 30_000,
};

const defaultBaseUrl: Record<ProviderKind, string> = {
  openai: "https://api.openai.com/v1",
  anthropic: "https://api.anthropic.com",
};

/** The TOML keys of the limits, their field, and whether they count seconds (turned into ms). */
const LIMIT_KEYS: [string, keyof ProviderLimits, "count" | "seconds"][] = [
  ["max_connections", "maxConnections", "count"],
  ["max_queue", "maxQueue", "count"],
  ["connect_timeout", "connectTimeoutMs", "seconds"],
  ["read_timeout", "readTimeoutMs", "seconds"],
  ["max_retries", "maxRetries", "count"],
  ["retry_base", "retryBaseMs", "seconds"],
  ["retry_max", "retryMaxMs", "seconds"],
  ["circuit_failures", "circuitFailures", "count"],
  ["circuit_cooldown", "circuitCooldownMs", "seconds"],
];

const KNOWN_KEYS = new Set(["provider", "base_url", "model", "api_key_env", "max_tokens", "description"]);
for (const [key] of LIMIT_KEYS) KNOWN_KEYS.add(key);

/** Reads a remote entry of models.toml; `origin` (the file and the entry's line) and the alias name its errors. */
export function parseRemoteModel(name: string, e: Record<string, unknown>, origin: string): RemoteModelConfig {
  const where = `${origin}: model '${name}'`;
  const kind = e.provider;
  if (kind !== "openai" && kind !== "anthropic") throw new Error(`${where}: provider must be "openai" or "anthropic"`);
  for (const key of Object.keys(e))
    if (!KNOWN_KEYS.has(key)) throw new Error(`${where}: unknown key '${key}' for a remote model`);
  if (typeof e.model !== "string" || e.model.length === 0)
    throw new Error(`${where}: a remote model needs model = "<the provider's model name>"`);
  const baseUrl = e.base_url ?? defaultBaseUrl[kind];
  if (typeof baseUrl !== "string" || !URL.canParse(baseUrl) || !/^https?:$/.test(new URL(baseUrl).protocol))
    throw new Error(`${where}: base_url must be an http(s) URL`);
  if (e.description !== undefined && typeof e.description !== "string")
    throw new Error(`${where}: description must be a string`);
  if (e.api_key_env !== undefined && (typeof e.api_key_env !== "string" || e.api_key_env.length === 0))
    throw new Error(`${where}: api_key_env must name an environment variable`);
  const limits = { ...defaultLimits };
  for (const [key, field, unit] of LIMIT_KEYS) {
    const value = e[key];
    if (value === undefined) continue;
    const ok = typeof value === "number" && Number.isFinite(value) && value >= 0;
    if (!ok || (unit === "count" && !Number.isInteger(value)))
      throw new Error(`${where}: ${key} must be a ${unit === "count" ? "whole number" : "number of seconds"} >= 0`);
    // A wait past a timer's limit would fire at once (every request "timed out", no backoff).
    if (unit === "seconds" && value * 1000 > MAX_TIMER_MS)
      throw new Error(`${where}: ${key} must be at most ${Math.floor(MAX_TIMER_MS / 1000)} seconds (about 24 days)`);
    limits[field] = unit === "seconds" ? value * 1000 : value;
  }
  if (limits.maxConnections < 1) throw new Error(`${where}: max_connections must be at least 1`);
  if (limits.circuitFailures < 1) throw new Error(`${where}: circuit_failures must be at least 1`);
  // A timeout of 0 would fail every request at once (it does not mean "none").
  if (limits.connectTimeoutMs === 0) throw new Error(`${where}: connect_timeout must be more than 0 seconds`);
  if (limits.readTimeoutMs === 0) throw new Error(`${where}: read_timeout must be more than 0 seconds`);
  const maxTokens = e.max_tokens ?? 4096;
  if (typeof maxTokens !== "number" || !Number.isInteger(maxTokens) || maxTokens < 1)
    throw new Error(`${where}: max_tokens must be a whole number >= 1`);
  const endpoint = new URL(baseUrl);
  endpoint.pathname = endpoint.pathname.replace(/\/+$/, ""); // ".../v1/" is ".../v1": one provider
  return {
    name,
    kind,
    baseUrl: shownUrl(endpoint),
    endpoint: endpoint.href,
    definedAt: origin,
    model: e.model,
    apiKeyEnv: e.api_key_env as string | undefined,
    defaultMaxTokens: maxTokens,
    limits,
  };
}

/**
 * A base URL as it may be shown: base_url may carry secrets (user:password, which fetch sends as
 * Basic auth, or a key in its query, as some gateways take it), so those are masked.
 */
export function shownUrl(url: URL): string {
  const shown = new URL(url);
  if (shown.username || shown.password) {
    shown.username = "***";
    shown.password = "";
  }
  for (const key of [...shown.searchParams.keys()]) shown.searchParams.set(key, "***");
  return shown.href.replace(/\/+$/, "");
}

/**
 * Models on one endpoint share its provider (pool, circuit, metrics), so they must agree on its
 * kind and limits: a second entry that does not is named with its file and line.
 */
export function checkSharedProviders(remotes: Iterable<RemoteModelConfig>): void {
  const first = new Map<string, RemoteModelConfig>();
  for (const config of remotes) {
    const owner = first.get(config.endpoint);
    if (!owner) first.set(config.endpoint, config);
    else if (!sameProvider(owner, config))
      throw new Error(
        `${config.definedAt}: model '${config.name}': its base_url ${config.baseUrl} is also that of model '${owner.name}' (${owner.definedAt}), with another provider kind or other limits: models on one base_url share its connections and circuit, so they must agree`,
      );
  }
}

/** Whether two entries on one base_url set up the same provider. */
export const sameProvider = (a: RemoteModelConfig, b: RemoteModelConfig) =>
  a.kind === b.kind && JSON.stringify(a.limits) === JSON.stringify(b.limits);
