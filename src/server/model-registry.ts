// The loaded-model registry: models are loaded on first request by name (an alias, a stored
// model or a path, through resolveModelPath), shared by every request naming them, and
// unloaded after their keep-alive (default 5 minutes) once no request is using them.
// Each loaded model has its own scheduler (continuous batching, src/engine/scheduler.ts).
// A name may stand for a base model plus a LoRA/DoRA adapter (models.toml's `adapter`, or
// serve --adapter): it shares the base's entry (one copy of the weights, one scheduler, so
// requests for the base and its adapters batch together); the adapter is loaded once per base.
import { readdirSync, realpathSync, statSync } from "node:fs";
import { join } from "node:path";
import {
  checkModelFiles,
  loadModel,
  loadModelAsync,
  ModelLoadError,
  type LoadedModel,
  type SpeculationChoice,
} from "../models/load";
import { locateModel, resolveModelPath, type ModelLocation } from "../store/resolve";
import {
  aliasAdapter,
  aliasAdapterBase,
  aliasCacheSettings,
  aliasSpeculation,
  loadAliases,
  type AliasTable,
} from "../store/aliases";
import { loadAdapter, type Adapter } from "../models/lora";
import { applySettings } from "../engine/model-settings";
import { clearMemoryCache } from "../engine/device";
import type { KvQuantization } from "../models/cache";
import { listModels, loadPath, releaseStoredModels, withRepairHint } from "../store/store";
import { readManifest } from "../store/manifest";
import type { IndexEntry } from "../store/model-index";
import type { Scheduler } from "../engine/scheduler";
import { ConfigError, ModelNotFoundError, QueueFullError, UnsupportedError } from "../errors";
import { MAX_TIMER_MS, nextTurn } from "../event-loop";
import { ClientGoneError } from "./errors";

/** The tag Ollama gives a model named without one. */
const LATEST_TAG = ":latest";

/** `name` without Ollama's default tag ("m:latest" is "m"); undefined when it has none. */
export const withoutLatestTag = (name: string): string | undefined =>
  name.endsWith(LATEST_TAG) ? name.slice(0, -LATEST_TAG.length) : undefined;

/**
 * The name `known` knows that `name` means: itself, or "m" for "m:latest" (Ollama's clients add the
 * tag to a name without one); undefined where it knows neither.
 */
export function knownName(name: string, known: (candidate: string) => boolean): string | undefined {
  if (known(name)) return name;
  const untagged = withoutLatestTag(name);
  return untagged !== undefined && known(untagged) ? untagged : undefined;
}

export interface LoadedEntry {
  /** The name it was first requested by. */
  name: string;
  /**
   * Every name requests held it by (aliases of the same weights and settings share it), first
   * first, each as #listedName gives it: /api/ps lists it under each, as /api/tags lists them.
   */
  names: string[];
  path: string;
  /**
   * Every path requests for it named (path first): the store's names of the same files (a copy,
   * aliases pulled from one source) share it, and its files are in use by each until it unloads.
   */
  paths: string[];
  /**
   * Its files (weights) and load settings: names of one model with other settings (models.toml)
   * get models of their own.
   */
  key: string;
  /** Its files as weightsOf read them when it was loaded (see #weightsOf). */
  weights: string;
  lm: LoadedModel;
  scheduler: Scheduler;
  loadedAt: Date;
  loadMs: number;
  /** Requests holding it now. */
  active: number;
  /**
   * Embedding requests under way. They run beside its scheduler, not in its queue: bounded as its
   * generations are (--max-batch plus --max-queue), past that a 429, or a flood of them would all
   * be taken, each slower the more there are, holding its inputs meanwhile.
   */
  embeddings: number;
  /** How long it stays loaded once idle (ms; Infinity: until the server stops). */
  keepAliveMs: number;
  /** When it will be unloaded (undefined while in use or kept forever). */
  expiresAt?: Date;
  lastUsed: number;
  timer?: ReturnType<typeof setTimeout>;
  /** Adapters of this model loaded so far, by directory. */
  adapters: Map<string, Adapter>;
  /** Why the server's --draft-model does not draft for this model, if it does not. */
  speculationSkipped?: string;
}

/** Whether a loaded model drafts with the model at `path`. */
const usesDraft = (entry: LoadedEntry, path: string) => entry.lm.speculation?.draft?.path === path;

export interface Lease {
  entry: LoadedEntry;
  /** The adapter the name asked for stands for, applied to this request's generation. */
  adapter?: Adapter;
  /** Milliseconds spent loading for this request (0 when it was loaded already). */
  loadMs: number;
  /** Ends this request's hold; the model's keep-alive clock starts when none is left. */
  release(): void;
  /**
   * Another hold on the same model and adapter, released on its own: a request's further choices
   * (n > 1) take it. Acquiring again would wait behind a load waiting for room, which waits for
   * this very hold to end: both stuck until their timeout.
   */
  share(): Lease;
}

/** How a model is loaded beyond its weights (serve's flags, else the alias's models.toml entry). */
export interface LoadSettings {
  kvQuantization?: KvQuantization;
  maxKvSize?: number;
  speculation?: SpeculationChoice;
}

export interface ModelRegistryOptions {
  defaultKeepAliveMs: number;
  /**
   * Models held at once: to load another, idle ones are unloaded (least recently used first);
   * while every loaded model is busy, the load waits for one to go idle.
   */
  maxLoaded: number;
  makeScheduler: (lm: LoadedModel) => Scheduler;
  /** Every model's KV cache quantization (serve --kv-bits); else each alias's kv_bits. */
  kvQuantization?: KvQuantization;
  /** Every model's speculative decoding (serve --draft-model/--prompt-lookup); else each alias's. */
  speculation?: SpeculationChoice;
  /** Every model's rotating KV cache size (serve --max-kv-size); else each alias's max_kv_size. */
  maxKvSize?: number;
  /** Loads a model in place of loadModel (a rank of a pipeline loads its part). */
  load?: (path: string, settings: LoadSettings) => LoadedModel | Promise<LoadedModel>;
  /** Throws for what `load` cannot load (a split server's other models), before a loaded model is unloaded for it. */
  refuseLoad?: (path: string, settings: LoadSettings) => void;
  /** The files of the one model `load` can load (a model split across ranks): no other is offered. */
  onlyPath?: string;
  /** Told each stored model a request's pull evicted (the store keeps under its size limit). */
  onEvicted?: (name: string) => void;
  /** Told the start and end of each pull a request's model needs (the server's log). */
  onPullLog?: (line: string) => void;
  onLoad?: (entry: LoadedEntry) => void;
  onUnload?: (entry: LoadedEntry) => void;
  /** Extra model names (serve --adapter): a base model (undefined: the default) plus an adapter directory. */
  adapters?: Map<string, { base: string | undefined; dir: string }>;
  /**
   * The model the server was started with (serve -m): kept loaded unless a request says otherwise
   * (keep_alive 0 unloads it, as Ollama does), and kept again whenever it is loaded again.
   */
  pinned?: string;
  /**
   * Whether a request may name a model by its path on this machine (default true); the names
   * the operator gave (pinned, adapters' bases) always may.
   */
  requestPaths?: boolean;
  /**
   * Requests that may wait for a model to be loaded (or for room to load it), per model: what its
   * scheduler takes at once (--max-batch plus --max-queue). One more would be refused once it
   * loaded, so it is refused now (a QueueFullError, a 429) rather than after the wait. Default: no bound.
   */
  maxWaiting?: number;
  /**
   * How long no request holds any model before the memory freed meanwhile goes back to the system
   * (ms; default IDLE_MEMORY_RETURN_MS, Infinity never). See #scheduleMemoryReturn.
   */
  idleMemoryReturnMs?: number;
}

/** The default of ModelRegistryOptions.idleMemoryReturnMs. */
export const IDLE_MEMORY_RETURN_MS = 30_000;

export class ModelRegistry {
  /** By key (LoadedEntry.key). */
  readonly #byKey = new Map<string, LoadedEntry>();
  readonly #pathOf = new Map<string, string>();
  /** What each name in #pathOf named when it was resolved (#meaning). */
  readonly #meaningOf = new Map<string, string | undefined>();
  /** The names (as resolvedName gives them) that were models.toml aliases when resolved: see #aliasGone. */
  readonly #aliasNames = new Set<string>();
  readonly #loading = new Map<string, Promise<LoadedEntry>>();
  /** By key, the name of each model whose weights are being read now (past #makeRoom, not yet loaded or failed). */
  readonly #loadingNames = new Map<string, string>();
  /** Acquisitions under way: requests' and preloads'. */
  #acquiring = 0;
  /** Of those, the requests' (a preload is no request waiting). */
  #requestsAcquiring = 0;
  #everLoaded = false;
  /** Loads waiting for a busy model to go idle. */
  #waitingForRoom: (() => void)[] = [];
  /** Requests for a loaded model held back until the loads waiting for room have had their turn. */
  #waitingBehindLoads: (() => void)[] = [];
  /** Why the pinned model's latest load failed (none since it loaded). */
  #pinnedFailure?: string;
  /** Set once the server stops: nothing loaded from then on is kept. */
  #disposed = false;
  /** Loads past #makeRoom, not yet in #byKey: each holds one of the maxLoaded slots. */
  #loadsUnderWay = 0;
  /** Requests on their way to holding a model (by key): that model is not idle either. */
  readonly #claims = new Map<string, number>();
  /** By key, the name its first claim (of those still held) asked for it by. */
  readonly #claimedAs = new Map<string, string>();
  /** Set while every model is idle, until the memory freed meanwhile goes back (#scheduleMemoryReturn). */
  #memoryReturn?: ReturnType<typeof setTimeout>;
  /** Names that resolved as themselves without ":latest" (the name the settings and adapter are looked up by). */
  readonly #untagged = new Map<string, string>();
  /** The key of the pinned model (options.pinned), once its name is resolved. */
  #pinnedKey?: string;
  /**
   * By key, the keep-alive the latest request for a model still loading asked for: the model gets
   * it once loaded, also when every request it was loaded for has gone away meanwhile.
   */
  readonly #keepAliveAsked = new Map<string, number>();

  constructor(readonly options: ModelRegistryOptions) {}

  /** True while the server has not finished loading any model yet but is loading one. */
  get startingUp(): boolean {
    return !this.#everLoaded && this.#acquiring > 0;
  }

  /** Why the model the server was started with could not be loaded, until it loads. */
  get pinnedFailure(): string | undefined {
    return this.#pinnedFailure;
  }

  /** Requests waiting for their model: to be found, loaded, or for room to load it (a preload is none). */
  get acquiring(): number {
    return this.#requestsAcquiring;
  }

  /**
   * The models not loaded yet whose requests waiting for them fill what they take at once
   * (options.maxWaiting): another request for one is refused (a 429), as for a loaded model's full queue.
   */
  get waitingFull(): string[] {
    const bound = this.options.maxWaiting ?? Infinity;
    return [...this.#claims]
      .filter(([key, waiting]) => !this.#byKey.has(key) && waiting >= bound)
      .map(([key]) => this.#claimedAs.get(key)!);
  }

  get loaded(): LoadedEntry[] {
    return [...this.#byKey.values()];
  }

  /** The names of the models being loaded now (once for a name loaded under two keys). */
  get loading(): string[] {
    return [...new Set(this.#loadingNames.values())];
  }

  /** What each name serve --adapter added stands for: its base (undefined: the default model) and adapter directory. */
  get servedAdapters(): ReadonlyMap<string, { base: string | undefined; dir: string }> {
    return this.options.adapters ?? new Map();
  }

  /** The loaded model a name refers to, if any (no resolving, no loading); "m:latest" is "m" as in resolve. */
  find(name: string): LoadedEntry | undefined {
    const path = this.#pathOf.get(name);
    const entry = path
      ? this.#byKey.get(this.#key(path, this.#settings(name)))
      : this.loaded.find((e) => e.names.includes(name));
    const untagged = withoutLatestTag(name);
    return entry ?? (untagged === undefined ? undefined : this.find(untagged));
  }

  /** The name a request naming `name` resolved as: "m" for an "m:latest" that no model has, else `name`. */
  resolvedName(name: string): string {
    return this.#untagged.get(name) ?? name;
  }

  /** The models the store holds, loaded or not (none when the store cannot be read). */
  async stored(): Promise<IndexEntry[]> {
    try {
      return await listModels();
    } catch {
      return [];
    }
  }

  /** The stored models a request may name: all of them, or the one this server holds (options.onlyPath). */
  async offered(): Promise<IndexEntry[]> {
    const stored = await this.stored();
    const only = this.options.onlyPath;
    if (only === undefined) return stored;
    return stored.filter((m) => {
      const manifest = readManifest(m.name);
      return manifest !== undefined && loadPath(manifest) === only;
    });
  }

  /**
   * Whether a request may name alias `name` here: any, or on a server that holds one model
   * (options.onlyPath) an alias of that model under settings it can load (options.refuseLoad).
   */
  offersAlias(name: string): boolean {
    const only = this.options.onlyPath;
    if (only === undefined) return true;
    try {
      if (locateModel(name).path !== only) return false;
      this.options.refuseLoad?.(only, this.#settings(name));
      return true;
    } catch {
      return false;
    }
  }

  /** Whether `name` may be a path on this machine: one the operator gave, or any where requests may. */
  mayBePath(name: string): boolean {
    return this.options.requestPaths !== false || name === this.options.pinned || this.servedAdapters.has(name);
  }

  async resolve(name: string): Promise<string> {
    const served = this.options.adapters?.get(name);
    const paths = this.mayBePath(name);
    // "m:latest" that resolved as "m" is located as "m".
    const located = () => (served ? served.base : this.resolvedName(name));
    const known = this.#pathOf.get(name);
    if (known && this.loaded.some((e) => e.paths.includes(known))) {
      const now = this.#meaning(located(), paths);
      // A name that stood for an alias removed since (elsewhere) is forgotten, as /api/delete's here.
      if (now === undefined && !served && this.#aliasGone(this.resolvedName(name)))
        this.forget(this.resolvedName(name));
      else if (now === undefined || now === this.#meaningOf.get(name)) return known;
    }
    const offered = (known: string) => this.offersAlias(known);
    const resolving = {
      onProgress: () => {},
      onEvicted: this.options.onEvicted,
      pullLog: this.options.onPullLog,
      paths,
      offered,
    };
    const path = await resolveModelPath(served ? served.base : name, resolving).catch((error) => {
      // Ollama's clients may name a model with its default tag: "m:latest" is "m" where no model has that name.
      const untagged = withoutLatestTag(name);
      if (!(error instanceof ModelNotFoundError) || untagged === undefined) throw error;
      this.#untagged.set(name, untagged);
      return this.resolve(untagged);
    });
    this.#pathOf.set(name, path);
    this.#meaningOf.set(name, this.#meaning(located(), paths));
    if (!served && loadAliases().models.has(this.resolvedName(name))) this.#aliasNames.add(this.resolvedName(name));
    return path;
  }

  /**
   * Whether `name`, an alias when a request resolved it, names nothing now: its models.toml entry
   * is gone (a made model `mlx rm` removed in another process, an entry deleted by hand) and no
   * stored model or path has that name. A models.toml that cannot be read says nothing is gone.
   */
  #aliasGone(name: string, aliases?: AliasTable): boolean {
    if (!this.#aliasNames.has(name)) return false;
    try {
      const location = locateModel(name, aliases ?? loadAliases(), { paths: this.mayBePath(name) });
      return location.kind === "missing" && !location.alias;
    } catch {
      return false;
    }
  }

  /**
   * Forgets the aliases removed since requests named them (#aliasGone), as forget() does for
   * /api/delete: a listing of what is loaded and served is read after it, so that a made model
   * removed by another process (`mlx rm`) is listed no more, before any request names it again.
   */
  forgetRemoved(): void {
    if (this.#aliasNames.size === 0) return;
    let aliases: AliasTable;
    try {
      aliases = loadAliases();
    } catch {
      return; // models.toml unreadable: nothing can be told gone
    }
    for (const name of this.#aliasNames) if (this.#aliasGone(name, aliases)) this.forget(name);
  }

  /**
   * What `spec` names now, found without opening anything (an alias's source, a path, a stored
   * model): a loaded model stays the name's while this does not change, and an alias whose source
   * models.toml changed since names another model, loaded as such (as Ollama reloads a model
   * replaced). Undefined where that cannot be told (a stored model's manifest gone, models.toml
   * unreadable): the loaded model answers, or the request fails on its own error.
   */
  #meaning(spec: string | undefined, paths: boolean): string | undefined {
    let location: ModelLocation;
    try {
      location = locateModel(spec, undefined, { paths });
    } catch {
      return undefined;
    }
    switch (location.kind) {
      case "source":
        return `source ${location.request.source}`;
      case "path":
        return `path ${location.path}`;
      case "stored":
        return `stored ${location.name}`;
      case "missing":
        return location.alias ? `missing ${location.source}` : undefined;
    }
  }

  /**
   * The model named, loaded if need be, held until release(). `keepAliveMs` sets its keep-alive
   * from now on. Once `signal` aborts (the client went away) the request stops waiting (a
   * ClientGoneError), and a load that only it waited for is not made.
   */
  acquire(name: string, keepAliveMs?: number, signal?: AbortSignal): Promise<Lease> {
    return this.#acquire(name, keepAliveMs, signal, true);
  }

  /**
   * Loads `name` for no request (serve -m, and its adapters, at start) and lets it go: the server
   * is starting up meanwhile, but no request waits for it (/stats' waiting_for_model, the gauge).
   */
  async preload(name: string): Promise<void> {
    (await this.#acquire(name, undefined, undefined, false)).release();
  }

  async #acquire(
    name: string,
    keepAliveMs: number | undefined,
    signal: AbortSignal | undefined,
    forRequest: boolean,
  ): Promise<Lease> {
    let entry: LoadedEntry | undefined;
    let loadMs = 0;
    let key: string | undefined;
    let path = "";
    /** Whether it waited for the model to load: its keep-alive went to the load (#keepAliveAsked). */
    let waitedForLoad = false;
    this.#acquiring++;
    if (forRequest) this.#requestsAcquiring++;
    try {
      path = await this.resolve(name);
      const settings = this.#settings(this.resolvedName(name));
      const weights = this.#weightsOf(path);
      const wanted = loadKey(settings, weights);
      if (name === this.options.pinned) this.#pinnedKey = wanted;
      // First come, first served: a request for a loaded model waits behind the loads that
      // wait for room, or a steady flow of requests would keep it busy and them waiting for ever.
      while (this.#byKey.has(wanted) && this.#waitingForRoom.length > 0)
        await untilAborted(new Promise<void>((resolve) => this.#waitingBehindLoads.push(resolve)), signal);
      const waiting = this.#byKey.has(wanted) ? 0 : (this.#claims.get(wanted) ?? 0);
      if (waiting >= (this.options.maxWaiting ?? Infinity))
        throw new QueueFullError(`the queue is full (${waiting} waiting for ${name} to load)`);
      key = wanted;
      this.#claims.set(key, (this.#claims.get(key) ?? 0) + 1);
      if (!this.#claimedAs.has(key)) this.#claimedAs.set(key, name);
      entry = this.#byKey.get(key);
      if (!entry) {
        waitedForLoad = true;
        const started = performance.now();
        if (keepAliveMs !== undefined) this.#keepAliveAsked.set(key, this.#keepAlive(keepAliveMs));
        entry = await untilAborted(this.#load(this.#listedName(name, path, key), path, key, weights, settings), signal);
        loadMs = performance.now() - started;
      }
      if (name === this.options.pinned) this.#pinnedFailure = undefined;
    } catch (error) {
      // A client gone, or a request refused, says nothing of whether the model loads.
      if (name === this.options.pinned && !(error instanceof ClientGoneError || error instanceof QueueFullError))
        this.#pinnedFailure = (error as Error).message;
      throw error;
    } finally {
      this.#acquiring--;
      if (forRequest) this.#requestsAcquiring--;
      if (key !== undefined) this.#unclaim(key);
      // A load waiting for room may now be wanted by nobody: it looks again (#makeRoom).
      if (signal?.aborted) this.#wakeWaitingForRoom();
    }
    const held = entry;
    // Another name of the same files: they are in use here until it unloads, as its own path is.
    if (!held.paths.includes(path)) held.paths.push(path);
    this.#listUnder(held, this.#listedName(name, held.path, held.key));
    let adapter: Adapter | undefined;
    try {
      // "m:latest" is "m" where no model has that name: with m's adapter.
      adapter = this.#adapter(held, this.resolvedName(name));
    } catch (error) {
      // The model stays loaded, but no request holds it: its keep-alive clock starts now (a
      // model loaded for this request had none, and stayed loaded for ever).
      if (held.active === 0) this.#scheduleExpiry(held);
      throw error;
    }
    // One that waited for the load gave the model its keep-alive as it loaded, unless a later
    // request's replaced it (a stop while it loaded): not set again over that.
    if (keepAliveMs !== undefined && !waitedForLoad) held.keepAliveMs = this.#keepAlive(keepAliveMs);
    const lease = this.#hold(held, adapter, loadMs);
    if (signal?.aborted) {
      lease.release();
      throw new ClientGoneError();
    }
    return lease;
  }

  /**
   * Lists `entry` under `name` too, and under no other loaded model: a name models.toml pointed
   * elsewhere meanwhile is the model it names now (a loaded model keeps its first name).
   */
  #listUnder(entry: LoadedEntry, name: string): void {
    for (const other of this.loaded)
      if (other !== entry && other.names.length > 1) other.names = other.names.filter((n) => n !== name);
    if (!entry.names.includes(name)) entry.names.push(name);
  }

  /** A hold on a loaded model (see Lease). */
  #hold(held: LoadedEntry, adapter: Adapter | undefined, loadMs: number): Lease {
    held.active++;
    held.lastUsed = Date.now();
    this.#cancelExpiry(held);
    this.#cancelMemoryReturn();
    let released = false;
    return {
      entry: held,
      adapter,
      loadMs,
      release: () => {
        if (released) return;
        released = true;
        held.active--;
        held.lastUsed = Date.now();
        if (held.active === 0) {
          this.#wakeWaitingForRoom();
          this.#scheduleExpiry(held);
          this.#scheduleMemoryReturn();
        }
      },
      share: () => this.#hold(held, adapter, 0),
    };
  }

  /**
   * Forgets the name of a model that is no more (a made model deleted), with the "name:latest"
   * that stood for it: requests naming it resolve afresh (and find nothing) rather than the model
   * it loaded, which /api/ps and /v1/models no longer list under it. A loaded model left with no
   * name is unloaded, at once or as soon as its requests end.
   */
  forget(name: string): void {
    const names = new Set([name, ...[...this.#untagged].filter(([, untagged]) => untagged === name).map(([n]) => n)]);
    for (const n of names) {
      this.#pathOf.delete(n);
      this.#meaningOf.delete(n);
      this.#untagged.delete(n);
      this.#aliasNames.delete(n);
    }
    for (const entry of this.loaded) {
      if (!entry.names.some((n) => names.has(n))) continue;
      entry.names = entry.names.filter((n) => !names.has(n));
      if (entry.names.length === 0) this.setKeepAlive(entry, 0);
    }
  }

  /**
   * Sets the keep-alive of the model `name` names while it loads (or waits for room to load), as a
   * request for it asking so would (0: unloaded once loaded, or as soon as its requests end).
   * Whether one was loading.
   */
  setLoadingKeepAlive(name: string, keepAliveMs: number): boolean {
    // "m:latest" is the "m" a request loads, as find() takes it.
    const named = this.#pathOf.has(name) ? name : withoutLatestTag(name);
    const path = named === undefined ? undefined : this.#pathOf.get(named);
    if (named === undefined || path === undefined) return false;
    const key = this.#key(path, this.#settings(this.resolvedName(named)));
    if (!this.#loading.has(key)) return false;
    this.#keepAliveAsked.set(key, this.#keepAlive(keepAliveMs));
    return true;
  }

  /** Sets a loaded model's keep-alive (0 unloads it now, or as soon as its requests end). */
  setKeepAlive(entry: LoadedEntry, keepAliveMs: number): void {
    entry.keepAliveMs = this.#keepAlive(keepAliveMs);
    if (entry.active === 0) this.#scheduleExpiry(entry);
  }

  /**
   * The loaded models whose own files `path` is (the store is about to remove or replace them):
   * those must unload first. A loaded model that holds `path` only as another name of its own
   * files (a copy it was also asked by) lets go of it here, and of the names requests gave it by
   * that path: its files stay, and a request by such a name finds what the store holds then.
   */
  holdersOf(path: string): LoadedEntry[] {
    for (const e of this.loaded)
      if (e.path !== path && e.paths.includes(path)) {
        e.paths = e.paths.filter((p) => p !== path);
        e.names = e.names.filter((n) => this.#pathOf.get(n) !== path);
      }
    return this.loaded.filter((e) => e.path === path);
  }

  /**
   * Whether `path` is the model this server holds split across ranks (options.onlyPath): it stays
   * for the server's life, as its other ranks hold their layers whatever this process frees.
   */
  holdsForLife(path: string): boolean {
    return this.options.onlyPath === path;
  }

  /** A keep-alive asked for: for ever on a server holding one model split across ranks (holdsForLife). */
  #keepAlive(ms: number): number {
    return this.options.onlyPath === undefined ? ms : Infinity;
  }

  unload(entry: LoadedEntry): void {
    if (this.#byKey.get(entry.key) !== entry) return;
    this.#cancelExpiry(entry);
    this.#byKey.delete(entry.key);
    entry.scheduler.dispose();
    for (const adapter of entry.adapters.values()) adapter.free();
    entry.adapters.clear();
    const paths = [...entry.paths, entry.lm.speculation?.draft?.path].filter((p) => p !== undefined);
    entry.lm.free();
    // The model's buffers go back to the system, not to MLX's cache and the heap.
    clearMemoryCache();
    // Its files (and its draft's) no longer in use here, unless another loaded model uses them
    // (the revisions kept for it removed meanwhile, which no request waits for).
    void this.releaseUnused(paths);
    this.options.onUnload?.(entry);
  }

  /**
   * Ends this server's use of the stored models at `paths` that no loaded model holds, nor drafts
   * with: from then on `mlx rm` and eviction may take them.
   */
  releaseUnused(paths: string[]): Promise<void> {
    return releaseStoredModels(
      paths.filter((path) => !this.loaded.some((e) => e.paths.includes(path) || usesDraft(e, path))),
    );
  }

  /** Unloads everything (the server is stopping); a load under way frees its model when done. */
  dispose(): void {
    this.#disposed = true;
    this.#cancelMemoryReturn();
    for (const entry of this.loaded) this.unload(entry);
  }

  /** What loading `name` applies beyond its weights. */
  #settings(name: string): LoadSettings {
    // serve --adapter names take their base model's settings, so that they share its entry.
    const own = this.options.adapters?.has(name) ? this.options.adapters.get(name)!.base : name;
    return {
      ...aliasCacheSettings(own, this.options),
      speculation: this.options.speculation ?? aliasSpeculation(own),
    };
  }

  /**
   * A draft model that `name`'s models.toml entry names and that cannot draft for it (not found,
   * a remote model, another vocabulary): the operator's file is at fault, not the request, which
   * sent no draft_model. Told as that file's error (a 500 naming the entry), not a 400.
   */
  #aliasDraftError(name: string, error: unknown): unknown {
    if (this.options.speculation !== undefined || !(error instanceof UnsupportedError)) return error;
    if (error.param !== "draft_model") return error;
    const alias = loadAliases().models.get(this.resolvedName(name));
    return alias
      ? new ConfigError(`${alias.definedAt}: model '${alias.name}': ${error.message}`, { cause: error })
      : error;
  }

  /**
   * The name the model loaded for a request naming `name` is listed by (/api/ps, mlx stop): an
   * adapter's base, whose entry it is (unless the name's own settings make it another entry).
   */
  #listedName(name: string, path: string, key: string): string {
    const base = this.adapterBase(this.resolvedName(name));
    return base !== undefined && this.#key(path, this.#settings(base)) === key ? base : name;
  }

  #key(path: string, settings: LoadSettings): string {
    return loadKey(settings, this.#weightsOf(path));
  }

  /**
   * The files at `path` (weightsOf), as they were when a loaded model was loaded from it: an
   * update that moves a stored model's name to another revision leaves this server on the
   * revision it loaded (its files kept for it, its in-use mark held) until it unloads, and the
   * next load reads the new one. Read afresh, the moved link made another key, which loaded the
   * new revision beside or instead of the old and let go of the name's in-use mark meanwhile.
   */
  #weightsOf(path: string): string {
    return this.loaded.find((e) => e.paths.includes(path))?.weights ?? weightsOf(path);
  }

  async #load(name: string, path: string, key: string, weights: string, settings: LoadSettings): Promise<LoadedEntry> {
    const pending = this.#loading.get(key);
    if (pending) return pending;
    const promise = (async () => {
      let reserved = false;
      try {
        // Let the event loop answer /health (503, loading) before the load starts.
        await nextTurn();
        // A path that holds no model, or files that cannot load (a config or weight file's table
        // that does not read, a file cut short), fail before a loaded model is unloaded to make
        // room. A stored model's files failing to load are said with the commands that repair them.
        try {
          checkModelFiles(path);
        } catch (error) {
          throw withRepairHint(error, path);
        }
        this.options.refuseLoad?.(path, settings);
        await this.#makeRoom(key);
        reserved = true;
        this.#loadingNames.set(key, name);
        const started = performance.now();
        // Loaded in pieces, the event loop taking a turn between them: /health and the other
        // models' streams are served meanwhile.
        const lm = this.options.load
          ? await this.options.load(path, settings)
          : await loadModelAsync(path).catch((error) => {
              throw withRepairHint(error, path);
            });
        if (this.#disposed) {
          lm.free();
          throw new ModelLoadError(`${name} finished loading after the server stopped`);
        }
        // The server's --draft-model is for its own model (-m); another model it serves that the
        // draft cannot draft for goes without speculation rather than failing every request.
        const serverWide = this.options.speculation !== undefined && key !== this.#pinnedKey;
        const speculationSkipped = await applySettings(
          lm,
          settings,
          async (draft) => loadModel(await resolveModelPath(draft, { onProgress: () => {} })),
          { otherVocabulary: serverWide ? "skip" : "refuse" },
        ).catch((error) => {
          throw this.#aliasDraftError(name, error);
        });
        let scheduler: Scheduler;
        try {
          scheduler = this.options.makeScheduler(lm);
        } catch (error) {
          // The server's settings do not fit this model (a KV cache group size, say): every
          // request for it says so, and none keeps a copy of its weights.
          lm.free();
          throw new ModelLoadError(`cannot serve ${name} with this server's settings: ${(error as Error).message}`);
        }
        const entry: LoadedEntry = {
          name,
          names: [name],
          path,
          paths: [path],
          key,
          weights,
          lm,
          scheduler,
          loadedAt: new Date(),
          loadMs: performance.now() - started,
          active: 0,
          embeddings: 0,
          keepAliveMs: this.#keepAlive(
            this.#keepAliveAsked.get(key) ?? (key === this.#pinnedKey ? Infinity : this.options.defaultKeepAliveMs),
          ),
          lastUsed: Date.now(),
          adapters: new Map(),
          speculationSkipped,
        };
        this.#byKey.set(key, entry);
        this.#everLoaded = true;
        this.options.onLoad?.(entry);
        // Every request it was loaded for went away while it loaded: it idles from now on (a
        // keep-alive of 0 asked for unloads it now).
        if (!this.#claims.has(key)) this.#scheduleExpiry(entry);
        return entry;
      } finally {
        this.#loading.delete(key);
        this.#loadingNames.delete(key);
        this.#keepAliveAsked.delete(key);
        if (reserved) {
          this.#loadsUnderWay--;
          // Its slot is a loaded model now, or free again (the load failed): loads waiting look again.
          this.#wakeWaitingForRoom();
        }
        for (const wake of this.#waitingBehindLoads.splice(0)) wake();
      }
    })();
    this.#loading.set(key, promise);
    return promise;
  }

  /**
   * The adapter directory `name` stands for (serve --adapter, or its models.toml alias); undefined
   * for a plain model. Read from models.toml each time, as the name's other settings are.
   */
  adapterDir(name: string): string | undefined {
    return this.options.adapters?.get(name)?.dir ?? aliasAdapter(name);
  }

  /** The model `name`'s adapter is applied to (adapterDir), by the name the server lists it by. */
  adapterBase(name: string): string | undefined {
    const served = this.options.adapters?.get(name);
    // serve --adapter without -m: the default model, as resolving it loads.
    return served ? (served.base ?? loadAliases().defaultModel) : aliasAdapterBase(name);
  }

  /** The adapter `name` stands for on `entry`'s model, loaded on first use; undefined for a plain model. */
  #adapter(entry: LoadedEntry, name: string): Adapter | undefined {
    const dir = this.adapterDir(name);
    if (!dir) return undefined;
    let adapter = entry.adapters.get(dir);
    if (!adapter) entry.adapters.set(dir, (adapter = loadAdapter(dir, entry.lm.weights.lora)));
    return adapter;
  }

  #unclaim(key: string): void {
    const left = (this.#claims.get(key) ?? 1) - 1;
    if (left > 0) this.#claims.set(key, left);
    else {
      this.#claims.delete(key);
      this.#claimedAs.delete(key);
    }
  }

  /**
   * Room for the model `key` names, unless no request wants it any more: a slot taken at once
   * (#loadsUnderWay), so that a load woken with it finds none left.
   */
  async #makeRoom(key: string): Promise<void> {
    for (;;) {
      if (!this.#claims.has(key)) throw new ClientGoneError();
      // Least recently used first, those kept for ever (serve -m's, keep_alive -1) last: as
      // Ollama makes room with the idle model of the shortest keep-alive, a model a client asked
      // to keep is not the first to go.
      const keptForever = (e: LoadedEntry) => (e.keepAliveMs === Infinity ? 1 : 0);
      const idle = this.loaded
        .filter((e) => e.active === 0 && !this.#claims.has(e.key))
        .sort((a, b) => keptForever(a) - keptForever(b) || a.lastUsed - b.lastUsed);
      const taken = () => this.#byKey.size + this.#loadsUnderWay;
      while (taken() >= this.options.maxLoaded && idle.length > 0) this.unload(idle.shift()!);
      if (taken() < this.options.maxLoaded) {
        this.#loadsUnderWay++;
        return;
      }
      await new Promise<void>((resolve) => this.#waitingForRoom.push(resolve));
    }
  }

  #wakeWaitingForRoom(): void {
    for (const wake of this.#waitingForRoom.splice(0)) wake();
  }

  /**
   * Once no request has held any model for idleMemoryReturnMs, MLX's buffer cache and the malloc
   * heap's free pages go back to the system (clearMemoryCache: MLX's cache cleared, malloc_trim).
   * The heap keeps what it freed (ffi/src/malloc_reuse.cpp: reused, it spares a prompt its page
   * faults), and under load it grows to the highest the batch and the prefix cache's churn have
   * needed together, in holes the live buffers leave: a soak at concurrency 2 saw the heap's free
   * part go from ~65 MB to ~210 MB over 1,900 requests (bench/soak.ts), all of it resident, and
   * kept for ever once the server went idle with its model loaded; malloc_trim gave ~100 MB of it
   * back. Only when idle for a while: under load the next steps fault it in again.
   */
  #scheduleMemoryReturn(): void {
    const ms = this.options.idleMemoryReturnMs ?? IDLE_MEMORY_RETURN_MS;
    if (ms === Infinity || this.#disposed || this.loaded.some((e) => e.active > 0)) return;
    this.#cancelMemoryReturn();
    this.#memoryReturn = setTimeout(() => {
      this.#memoryReturn = undefined;
      if (this.#disposed || this.loaded.length === 0 || this.loaded.some((e) => e.active > 0)) return;
      clearMemoryCache();
    }, ms);
    this.#memoryReturn.unref?.();
  }

  #cancelMemoryReturn(): void {
    if (this.#memoryReturn) clearTimeout(this.#memoryReturn);
    this.#memoryReturn = undefined;
  }

  #cancelExpiry(entry: LoadedEntry): void {
    if (entry.timer) clearTimeout(entry.timer);
    entry.timer = undefined;
    entry.expiresAt = undefined;
  }

  #scheduleExpiry(entry: LoadedEntry): void {
    this.#cancelExpiry(entry);
    // A request still on its way to holding it (its load just done) starts the clock when it lets go.
    if (entry.keepAliveMs === Infinity || this.#claims.has(entry.key)) return;
    if (entry.keepAliveMs <= 0) return this.unload(entry);
    const deadline = Date.now() + entry.keepAliveMs;
    entry.expiresAt = new Date(deadline);
    // setTimeout waits at most ~24.8 days: a longer keep-alive (Ollama's "720h") waits in turns.
    const wait = () => {
      const left = deadline - Date.now();
      entry.timer = setTimeout(
        () => {
          if (left > MAX_TIMER_MS) wait();
          else if (entry.active === 0) this.unload(entry);
        },
        Math.min(left, MAX_TIMER_MS),
      );
      entry.timer.unref?.();
    };
    wait();
  }
}

/** A loaded model's LoadedEntry.key: its load settings and its files (weightsOf). */
const loadKey = (settings: LoadSettings, weights: string) => `${JSON.stringify(settings)}\n${weights}`;

/**
 * The files a model path stands for, links followed: the store's names of one model (a copy, aliases
 * pulled from one source) are links to the same blobs, which are loaded once, as Ollama loads a
 * copied model's blob once. Of a directory, the entries the loader reads from (its own, not those
 * of its folders, which may be many: a clone's .git). A path that cannot be read is itself (its
 * load says why).
 */
function weightsOf(path: string): string {
  try {
    if (!statSync(path).isDirectory()) return realpathSync(path);
    const entries = readdirSync(path)
      .map((name) => `${name}=${realpathSync(join(path, name))}`)
      .sort();
    return entries.length > 0 ? entries.join("\n") : path;
  } catch {
    return path;
  }
}

/** `promise`, or a ClientGoneError as soon as `signal` aborts (what `promise` settles to later is dropped). */
function untilAborted<T>(promise: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return promise;
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new ClientGoneError());
    if (signal.aborted) onAbort();
    else signal.addEventListener("abort", onAbort, { once: true });
    promise.then(resolve, reject).finally(() => signal.removeEventListener("abort", onAbort));
  });
}
