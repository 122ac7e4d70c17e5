// Remote models by alias, and their providers, shared by everything in this process (the
// server's routes, run, chat, bench). A provider is its base URL: the models on it share one
// connection pool, one circuit and one set of metrics, so they must agree on its limits.
// Providers are told apart by their real endpoint (credentials included) and shown by their
// base URL with the secrets masked.
import { loadAliases } from "../store/aliases";
import { sameProvider, type RemoteModelConfig } from "./config";
import { Provider, RemoteModel } from "./model";

export { Provider, RemoteModel, type RemoteEmbeddings, type StreamOptions } from "./model";
export { remoteSampling, streamRemoteCompletion } from "./completion";
export { RemoteConversation } from "./conversation";
export { describeFetchError } from "./types";
export { shownUrl } from "./config";
export type { RemoteEvent, RemoteRequest, RemoteUsage } from "./types";

const providers = new Map<string, { provider: Provider; config: RemoteModelConfig }>();

/** The remote model an alias names (none: the default model); undefined when it is not a remote alias. */
export function remoteModel(name: string | undefined): RemoteModel | undefined {
  const aliases = loadAliases();
  const config = aliases.remotes.get(name ?? aliases.defaultModel);
  return config && new RemoteModel(config, providerFor(config));
}

/** The aliases served by remote providers. */
export function remoteModelNames(): string[] {
  return remoteModelConfigs().map((config) => config.name);
}

/** What each remote alias stands for (no provider is set up for it: that waits for a request). */
export function remoteModelConfigs(): RemoteModelConfig[] {
  return [...loadAliases().remotes.values()];
}

/** The providers used so far (for /metrics). */
export function activeProviders(): Provider[] {
  return [...providers.values()].map((p) => p.provider);
}

function providerFor(config: RemoteModelConfig): Provider {
  const known = providers.get(config.endpoint);
  if (known && sameProvider(known.config, config)) return known.provider;
  // models.toml (whose entries on one base_url agree) was edited since: the provider is set up anew.
  // Endpoints that differ only where they are masked (another user:password or query value) show
  // alike: a number tells them apart, or /metrics would list one series twice.
  const shown = new Set(
    [...providers].filter(([endpoint]) => endpoint !== config.endpoint).map(([, known]) => known.provider.label),
  );
  let label = config.baseUrl;
  for (let n = 2; shown.has(label); n++) label = `${config.baseUrl} (${n})`;
  const provider = new Provider(label, config.limits, config.kind);
  providers.set(config.endpoint, { provider, config });
  return provider;
}
