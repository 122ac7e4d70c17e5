// Model aliases from models.toml: the copy shipped inside the executable, overridden by
// the user's $MLX_HOME/models.toml. A bad file is reported with its path, line and problem.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parse, TomlError } from "smol-toml";
import shipped from "../../models.toml" with { type: "text" };
import { ConfigError } from "../errors";
import type { KvQuantization } from "../models/cache";
import { checkSharedProviders, parseRemoteModel, type RemoteModelConfig } from "../providers/config";
import type { SpeculationChoice } from "../models/load";
import { SAMPLING_DEFAULT_KEYS, type SamplingDefaults } from "../models/generation-config";
import { storeRoot } from "./paths";

export interface ModelAlias {
  name: string;
  /** A pull spec (hf:, pypi:, a URL), another alias, or a model's path. */
  source: string;
  /** The source taken as a path: a relative one is from the models.toml's own folder, not the working directory. */
  sourcePath: string;
  description?: string;
  /** Bits per cached key/value (kv_bits: 4 or 8): the model's KV cache stored quantized. */
  kvBits?: number;
  /** A LoRA/DoRA adapter directory applied to the source model (an absolute path). */
  adapter?: string;
  /** Speculative decoding (draft_model = "...", or prompt_lookup = true; num_draft = N). */
  speculation?: SpeculationChoice;
  /** Most positions its KV cache holds (max_kv_size): a rotating cache, as --max-kv-size. */
  maxKvSize?: number;
  /** Sampling values serve's requests get when they set none (temperature = 0.6, ...). */
  sampling: SamplingDefaults;
  /** Its answers' stop strings, length and context where a request sets none (stop, num_predict, num_ctx). */
  limits: ModelLimits;
  /** The turns every prompt to it starts with (system, messages), as an Ollama Modelfile's SYSTEM and MESSAGE. */
  prompt: ModelPrompt;
  /** Its license text, as an Ollama Modelfile's LICENSE (shown, never used). */
  license?: string;
  /** Where the entry is written (file:line), which errors about it name. */
  definedAt: string;
}

/**
 * What an alias puts before each prompt: `system`, the system message of a request that brings
 * none of its own; `messages`, turns (user and assistant) placed before the request's.
 */
export interface ModelPrompt {
  system?: string;
  messages?: { role: "user" | "assistant"; content: string }[];
}

/**
 * An Ollama Modelfile's PARAMETERs that are not sampling values, as models.toml's `stop` (a list
 * of strings), `num_predict` and `num_ctx`: each a request's default, which its own value replaces.
 */
export interface ModelLimits {
  stop?: string[];
  /** The most tokens an answer takes; 0 or less: until a stop or the context's end, as Ollama's. */
  numPredict?: number;
  /** The context a request fills (Ollama's num_ctx): a longer prompt is refused, the answer ends where it is full. */
  numCtx?: number;
}

/** Tokens drafted per speculative step unless told otherwise (mlx-lm's default). */
export const defaultNumDraft = 3;

/**
 * The most tokens a step may draft: a draft is kept whole only while every token of it is, so
 * past a few dozen a step verifies positions that are never kept, and more is a typo (300 for 3).
 */
export const maxNumDraft = 64;

export interface AliasTable {
  defaultModel: string;
  models: Map<string, ModelAlias>;
  /** Aliases served by a remote provider (`provider = "openai"|"anthropic"`) instead of weights. */
  remotes: Map<string, RemoteModelConfig>;
}

/** Whether `name` is an alias of the table, local or remote. */
export function hasAlias(table: AliasTable, name: string): boolean {
  return table.models.has(name) || table.remotes.has(name);
}

/** The settings a local alias may have. */
const ALIAS_KEYS = [
  "source",
  "description",
  "kv_bits",
  "max_kv_size",
  "adapter",
  "draft_model",
  "prompt_lookup",
  "num_draft",
  "system",
  "messages",
  "license",
  "stop",
  "num_predict",
  "num_ctx",
  ...SAMPLING_DEFAULT_KEYS.map((k) => k.name),
];

/** A local alias's entry as its file writes it; its settings are checked once it is known what it inherits. */
interface AliasEntry {
  name: string;
  settings: Record<string, unknown>;
  /** file:line, which errors about it name. */
  at: string;
  /** The directory its relative source, adapter and draft_model paths start from (its file's). */
  relativeTo: string;
}

/** `relativeTo`: the directory relative source and adapter paths start from (the file's own). */
function parseTable(
  text: string,
  origin: string,
  relativeTo: string,
): { defaultModel?: string; models: AliasEntry[]; remotes: RemoteModelConfig[] } {
  let doc: Record<string, unknown>;
  try {
    doc = parse(text) as Record<string, unknown>;
  } catch (error) {
    if (error instanceof TomlError) {
      const reason = error.message.split("\n")[0];
      throw new Error(`${origin}:${error.line}:${error.column}: ${reason}`);
    }
    throw error;
  }
  const models: AliasEntry[] = [];
  const remotes: RemoteModelConfig[] = [];
  const table = doc.models ?? {};
  if (typeof table !== "object" || Array.isArray(table))
    throw new Error(`${withLine(origin, topLevelKeyLine(text, "models"))}: [models] must be a table of aliases`);
  for (const [name, entry] of Object.entries(table as Record<string, unknown>)) {
    const e = entry as Record<string, unknown>;
    const at = withLine(origin, entryLine(text, name));
    if (typeof e === "object" && e !== null && e.provider !== undefined) {
      remotes.push(parseRemoteModel(name, e, at));
      continue;
    }
    // A misspelt setting (kv_bit = 8) would otherwise be ignored without a word, as remote entries' are not;
    // named first, so a misspelt source (sorce = ...) is told as such, not as a source missing.
    const unknown =
      typeof e === "object" && e !== null && !Array.isArray(e)
        ? Object.keys(e).find((key) => !ALIAS_KEYS.includes(key))
        : undefined;
    if (unknown !== undefined)
      throw new Error(`${at}: model '${name}': unknown key '${unknown}' (known: ${ALIAS_KEYS.join(", ")})`);
    if (typeof e !== "object" || typeof e.source !== "string" || e.source.length === 0) {
      throw new Error(`${at}: model '${name}' needs a source = "..." string`);
    }
    models.push({ name, settings: e, at, relativeTo });
  }
  const unknownTopLevel = Object.keys(doc).find((key) => key !== "default" && key !== "models");
  if (unknownTopLevel !== undefined)
    throw new Error(
      `${withLine(origin, topLevelKeyLine(text, unknownTopLevel))}: unknown key '${unknownTopLevel}' (known: default, [models.NAME])`,
    );
  if (doc.default !== undefined && typeof doc.default !== "string")
    throw new Error(`${withLine(origin, topLevelKeyLine(text, "default"))}: 'default' must be a string`);
  // Empty, it would load the working directory as the model ("<cwd> has no config.json").
  if (doc.default === "")
    throw new Error(`${withLine(origin, topLevelKeyLine(text, "default"))}: 'default' must name a model (it is empty)`);
  return { defaultModel: doc.default as string | undefined, models, remotes };
}

/** The line (1-based) setting a top-level key: `key = ...` before the first table, or a `[key]` / `[key.NAME]` header. */
function topLevelKeyLine(text: string, key: string): number | undefined {
  const lines = text.split("\n");
  const firstTable = lines.findIndex((line) => line.trimStart().startsWith("["));
  const name = key.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"); // a quoted key may hold any character
  const assignment = new RegExp(`^\\s*["']?${name}["']?\\s*=`);
  const header = new RegExp(`^\\s*\\[+\\s*["']?${name}["']?\\s*[.\\]]`);
  const at = lines.findIndex((line, i) => (firstTable < 0 || i < firstTable ? assignment : header).test(line));
  return at >= 0 ? at + 1 : undefined;
}

/**
 * The line (1-based) of an alias's entry: its `[models.NAME]` header, or an inline table
 * (`NAME = { ... }` under `[models]`, or `models.NAME = { ... }` before any table); undefined
 * when it is written otherwise.
 */
export function entryLine(text: string, name: string): number | undefined {
  // Compared as the lines are, without spaces (a quoted name may hold some).
  const keys = [name, `"${name}"`, `'${name}'`].map((key) => key.replace(/\s+/g, ""));
  const headers = new Set(keys.map((key) => `[models.${key}]`));
  let table: string | undefined; // the [header] the line is under; undefined before the first
  // Spaces are allowed around the dot, brackets and =, and a comment after them.
  const at = text.split("\n").findIndex((line) => {
    const bare = line.split("#")[0]!.replace(/\s+/g, "");
    if (bare.startsWith("[")) {
      table = bare;
      return headers.has(bare);
    }
    if (!bare.includes("=")) return false;
    const key = bare.split("=")[0]!;
    if (table === "[models]") return keys.includes(key);
    return table === undefined && keys.some((k) => key === `models.${k}`);
  });
  return at >= 0 ? at + 1 : undefined;
}

const withLine = (origin: string, line: number | undefined) => (line ? `${origin}:${line}` : origin);

/**
 * The aliases in force. A user file that cannot be read or is malformed is a ConfigError naming
 * it (and the line): every command and request that reads models.toml fails alike until it is fixed.
 */
export function loadAliases(): AliasTable {
  try {
    return readAliases();
  } catch (error) {
    throw new ConfigError((error as Error).message, { cause: error });
  }
}

/** The user's models.toml: $MLX_HOME/models.toml. */
export const userAliasFile = () => join(storeRoot(), "models.toml");

/** The aliases the shipped table and the user's file make; `userText`: the user file's text as it is about to be written. */
export function readAliases(userText?: string): AliasTable {
  const base = parseTable(shipped, "models.toml (built in)", process.cwd());
  const entries = new Map(base.models.map((m) => [m.name, m]));
  const remotes = new Map(base.remotes.map((m) => [m.name, m]));
  let defaultModel = base.defaultModel ?? "smollm2";
  const userFile = userAliasFile();
  if (userText !== undefined || existsSync(userFile)) {
    const text = userText ?? readUserFile(userFile);
    const user = parseTable(text, userFile, dirname(userFile));
    // A user's entry replaces the shipped one of that name, whichever kind either is.
    for (const m of user.models) {
      entries.set(m.name, m);
      remotes.delete(m.name);
    }
    for (const m of user.remotes) {
      remotes.set(m.name, m);
      entries.delete(m.name);
    }
    defaultModel = user.defaultModel ?? defaultModel;
    // Only the user's entries can name other aliases (the shipped ones name sources).
    checkAliasChains(entries, remotes, (name) => withLine(userFile, entryLine(text, name)));
  }
  checkSharedProviders(remotes.values());
  return { defaultModel, models: aliasesOf(entries), remotes };
}

/** The alias `entry` names as its source, if its source is one (as resolveModelPath follows them). */
function sourceAlias(entry: AliasEntry, entries: Map<string, AliasEntry>): AliasEntry | undefined {
  const source = entry.settings.source as string;
  return source === entry.name ? undefined : entries.get(source);
}

/** Settings that are an alias's own, never taken from its source's: what it is, and its adapter (adapterAlias). */
const OWN_KEYS = ["source", "description", "adapter"];

/** Speculation is one choice: an alias writing either of these replaces the other its source writes. */
const DRAFT_KEYS = ["draft_model", "prompt_lookup"];

/**
 * Each alias with its settings checked. One naming another as its source takes the settings it
 * leaves out from that one (its KV cache, speculation and sampling values), as Ollama's FROM
 * takes the base's parameters; each source is built before the aliases naming it, so a bad
 * value is told at the entry that writes it.
 */
function aliasesOf(entries: Map<string, AliasEntry>): Map<string, ModelAlias> {
  const built = new Map<string, { alias: ModelAlias; inheritable: Record<string, unknown> }>();
  const build = (entry: AliasEntry) => {
    const done = built.get(entry.name);
    if (done) return done;
    const source = sourceAlias(entry, entries);
    const own = entry.settings;
    const inherited = Object.entries(source ? build(source).inheritable : {}).filter(
      ([key]) => !(DRAFT_KEYS.includes(key) && DRAFT_KEYS.some((k) => k in own)),
    );
    const settings = { ...Object.fromEntries(inherited), ...own };
    const alias = toAlias(entry.name, settings, entry.at, entry.relativeTo);
    const inheritable = Object.fromEntries(Object.entries(settings).filter(([key]) => !OWN_KEYS.includes(key)));
    // As resolved from the file that wrote it, which may be another than the inheriting alias's.
    if (alias.speculation?.draftModel) inheritable.draft_model = alias.speculation.draftModel;
    built.set(entry.name, { alias, inheritable });
    return built.get(entry.name)!;
  };
  return new Map([...entries.values()].map((entry) => [entry.name, build(entry).alias]));
}

/** An alias from its settings (its own and those it inherits), each checked. */
function toAlias(name: string, e: Record<string, unknown>, at: string, relativeTo: string): ModelAlias {
  if (e.description !== undefined && typeof e.description !== "string")
    throw new Error(`${at}: model '${name}': description must be a string`);
  if (e.kv_bits !== undefined && e.kv_bits !== 4 && e.kv_bits !== 8)
    throw new Error(`${at}: model '${name}': kv_bits must be 4 or 8`);
  if (e.adapter !== undefined && (typeof e.adapter !== "string" || e.adapter.length === 0))
    throw new Error(`${at}: model '${name}': adapter must be a directory path`);
  if (e.system !== undefined && typeof e.system !== "string")
    throw new Error(`${at}: model '${name}': system must be a string`);
  if (e.license !== undefined && typeof e.license !== "string")
    throw new Error(`${at}: model '${name}': license must be a string`);
  if (e.messages !== undefined && !validMessages(e.messages))
    throw new Error(
      `${at}: model '${name}': messages must be a list of { role = "user" | "assistant", content = "..." }`,
    );
  if (e.stop !== undefined && !(Array.isArray(e.stop) && e.stop.every((s) => typeof s === "string" && s !== "")))
    throw new Error(`${at}: model '${name}': stop must be a list of strings (stop = ["<|im_end|>"])`);
  if (e.num_predict !== undefined && !(Number.isSafeInteger(e.num_predict) && (e.num_predict as number) >= -2))
    throw new Error(`${at}: model '${name}': num_predict must be a whole number >= -2 (-1: no limit)`);
  if (e.num_ctx !== undefined && !(Number.isSafeInteger(e.num_ctx) && (e.num_ctx as number) >= 1))
    throw new Error(`${at}: model '${name}': num_ctx must be a whole number >= 1`);
  if (e.max_kv_size !== undefined && !(Number.isInteger(e.max_kv_size) && (e.max_kv_size as number) > 4))
    throw new Error(`${at}: model '${name}': max_kv_size must be a whole number > 4`);
  const source = e.source as string;
  return {
    name,
    source,
    sourcePath: resolve(relativeTo, source),
    description: e.description as string | undefined,
    kvBits: e.kv_bits as number | undefined,
    adapter: e.adapter === undefined ? undefined : resolve(relativeTo, e.adapter as string),
    speculation: aliasSpeculationEntry(e, `${at}: model '${name}'`, relativeTo),
    maxKvSize: e.max_kv_size as number | undefined,
    sampling: aliasSamplingEntry(e, `${at}: model '${name}'`),
    limits: {
      stop: e.stop as string[] | undefined,
      numPredict: e.num_predict as number | undefined,
      numCtx: e.num_ctx as number | undefined,
    },
    prompt: { system: e.system as string | undefined, messages: e.messages as ModelPrompt["messages"] },
    license: e.license as string | undefined,
    definedAt: at,
  };
}

/** Turns as models.toml's `messages` writes them: the system message is `system`'s, once, first. */
function validMessages(value: unknown): boolean {
  return (
    Array.isArray(value) &&
    value.every(
      (m) =>
        typeof m === "object" &&
        m !== null &&
        (m.role === "user" || m.role === "assistant") &&
        typeof m.content === "string" &&
        Object.keys(m).every((key) => key === "role" || key === "content"),
    )
  );
}

/**
 * An alias may name another as its source (a base plus an adapter), but not a remote provider's
 * alias (no weights here to load, or to apply an adapter to); a chain that comes back to where it
 * started would be followed for ever (an alias naming itself names a stored model), and one with
 * two adapters would need both applied at once.
 */
function checkAliasChains(
  entries: Map<string, AliasEntry>,
  remotes: Map<string, RemoteModelConfig>,
  where: (name: string) => string,
): void {
  // Taken for a path, it would be "model not found: $MLX_HOME/<name>", which says nothing of why.
  for (const { name, settings } of entries.values())
    if (remotes.has(settings.source as string))
      throw new Error(
        `${where(name)}: model '${name}': its source '${settings.source}' is a remote model, which has no weights to load (a source is a pull source, a path or a local alias)`,
      );
  for (const start of entries.values()) {
    const chain = [start];
    let at = sourceAlias(start, entries);
    while (at !== undefined && !chain.includes(at)) {
      chain.push(at);
      at = sourceAlias(at, entries);
    }
    const names = chain.map((entry) => entry.name);
    if (at === start)
      throw new Error(
        `${where(start.name)}: model '${start.name}': its source leads back to it (${[...names, start.name].join(" -> ")})`,
      );
    const tuned = chain.filter((entry) => entry.settings.adapter !== undefined).map((entry) => entry.name);
    if (tuned.length > 1)
      throw new Error(
        `${where(start.name)}: model '${start.name}': '${tuned[0]}' and its source '${tuned[1]}' both have an adapter (one at a time)`,
      );
  }
}

export function readUserFile(file: string): string {
  try {
    return readFileSync(file, "utf8");
  } catch (error) {
    // Node's message does not always name the file (EISDIR does not).
    throw new Error(`${file}: cannot read it (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`);
  }
}

/** `relativeTo`: where a draft_model written as a relative path (./small, ../small.gguf) starts, as source's. */
function aliasSpeculationEntry(
  e: Record<string, unknown>,
  where: string,
  relativeTo: string,
): SpeculationChoice | undefined {
  const { draft_model: draftModel, prompt_lookup: promptLookup, num_draft: numDraft } = e;
  if (draftModel !== undefined && (typeof draftModel !== "string" || draftModel === ""))
    throw new Error(`${where}: draft_model must be a model name`);
  if (promptLookup !== undefined && typeof promptLookup !== "boolean")
    throw new Error(`${where}: prompt_lookup must be true or false`);
  if (draftModel && promptLookup) throw new Error(`${where}: give draft_model or prompt_lookup, not both`);
  if (numDraft !== undefined && !(Number.isInteger(numDraft) && (numDraft as number) > 0))
    throw new Error(`${where}: num_draft must be a whole number > 0`);
  if ((numDraft as number) > maxNumDraft) throw new Error(`${where}: num_draft must be at most ${maxNumDraft}`);
  // Alone it would draft nothing, unsaid, as --num-draft alone is refused (prompt_lookup = false keeps it, switched off).
  if (numDraft !== undefined && draftModel === undefined && promptLookup === undefined)
    throw new Error(`${where}: num_draft needs draft_model or prompt_lookup`);
  if (!draftModel && !promptLookup) return undefined;
  // Only a name that says it is a relative path: another is an alias, a stored model or a source.
  const draft =
    typeof draftModel === "string" && /^\.\.?[/\\]/.test(draftModel) ? resolve(relativeTo, draftModel) : draftModel;
  return { draftModel: draft as string | undefined, numDraft: (numDraft as number) ?? defaultNumDraft };
}

/** The speculative decoding models.toml asks for the model named `spec` (default: the default model). */
export function aliasSpeculation(spec: string | undefined): SpeculationChoice | undefined {
  const table = loadAliases();
  return table.models.get(spec ?? table.defaultModel)?.speculation;
}

/** An alias's sampling values (temperature, top_p, top_k, min_p, repetition_penalty, seed, ...), each checked. */
function aliasSamplingEntry(e: Record<string, unknown>, where: string): SamplingDefaults {
  const sampling: SamplingDefaults = {};
  for (const { key, name, valid, range, engine } of SAMPLING_DEFAULT_KEYS) {
    const value = e[name];
    if (value === undefined) continue;
    if (typeof value !== "number" || !valid(value)) throw new Error(`${where}: ${name} must be ${range}`);
    sampling[key] = engine ? engine(value) : value;
  }
  return sampling;
}

/** The sampling values models.toml gives the model named `spec` (default: the default model). */
export function aliasSampling(spec: string | undefined): SamplingDefaults {
  const table = loadAliases();
  return table.models.get(spec ?? table.defaultModel)?.sampling ?? {};
}

/** The stop strings, answer length and context models.toml gives the model named `spec` (default: the default model). */
export function aliasLimits(spec: string | undefined): ModelLimits {
  const table = loadAliases();
  return table.models.get(spec ?? table.defaultModel)?.limits ?? {};
}

/** The turns models.toml puts before every prompt to the model named `spec` (default: the default model). */
export function aliasPrompt(spec: string | undefined): ModelPrompt {
  const table = loadAliases();
  return table.models.get(spec ?? table.defaultModel)?.prompt ?? {};
}

/** The KV cache quantization models.toml asks for the model named `spec` (default: the default model). */
export function aliasKvQuantization(spec: string | undefined): KvQuantization | undefined {
  const table = loadAliases();
  const bits = table.models.get(spec ?? table.defaultModel)?.kvBits;
  return bits === undefined ? undefined : { bits, groupSize: 64 };
}

/**
 * The adapter models.toml applies to the model named `spec` (default: the default model), if
 * any: its own, or that of the alias it names as its source (a base plus an adapter), as
 * resolving the name follows that chain to the base's weights.
 */
export function aliasAdapter(spec: string | undefined): string | undefined {
  return adapterAlias(spec)?.adapter;
}

/** The model models.toml applies the adapter of `spec` to (aliasAdapter): the source of the alias that has it. */
export function aliasAdapterBase(spec: string | undefined): string | undefined {
  return adapterAlias(spec)?.source;
}

/** The alias of `spec`'s chain that has an adapter, if any. */
function adapterAlias(spec: string | undefined): ModelAlias | undefined {
  const table = loadAliases();
  // At most one alias of the chain has an adapter (checkAliasChains), and the chain ends.
  for (let name = spec ?? table.defaultModel, alias = table.models.get(name); alias; ) {
    if (alias.adapter) return alias;
    if (alias.source === name) return undefined;
    name = alias.source;
    alias = table.models.get(name);
  }
  return undefined;
}

/** The rotating KV cache size models.toml asks for the model named `spec` (default: the default model). */
export function aliasMaxKvSize(spec: string | undefined): number | undefined {
  const table = loadAliases();
  return table.models.get(spec ?? table.defaultModel)?.maxKvSize;
}

/** A model's KV cache settings: those `given` (by flags), else what models.toml asks for the model named `spec`. */
export function aliasCacheSettings(
  spec: string | undefined,
  given: { kvQuantization?: KvQuantization; maxKvSize?: number },
): { kvQuantization?: KvQuantization; maxKvSize?: number } {
  return {
    kvQuantization: given.kvQuantization ?? aliasKvQuantization(spec),
    maxKvSize: given.maxKvSize ?? aliasMaxKvSize(spec),
  };
}

/** Aliases that look like what the user typed, closest first (for "did you mean"). */
export function closeMatches(name: string, candidates: string[], limit = 3): string[] {
  const scored = candidates.map((c) => ({ c, d: editDistance(name.toLowerCase(), c.toLowerCase()) }));
  // One name inside the other, when it has a few letters: every word holds an "n" (launch's -n).
  const within = (outer: string, inner: string) => inner.length >= 3 && outer.includes(inner);
  return scored
    .filter(({ c, d }) => d <= Math.max(2, Math.floor(c.length / 3)) || within(c, name) || within(name, c))
    .sort((a, b) => a.d - b.d)
    .slice(0, limit)
    .map(({ c }) => c);
}

function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current[j] = Math.min(previous[j]! + 1, current[j - 1]! + 1, previous[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    previous = current;
  }
  return previous[b.length]!;
}
