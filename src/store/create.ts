// Models made from another with a system prompt, turns and sampling values, as Ollama's
// `create` makes them (a Modelfile's FROM, SYSTEM, MESSAGE, PARAMETER, ADAPTER, LICENSE): an
// alias written into the user's models.toml ($MLX_HOME/models.toml), which `mlx create` and
// POST /api/create write and DELETE /api/delete removes. The file is rewritten whole through a
// temporary file and a rename, under the store's lock, its other entries and comments kept as
// they are written; a change whose result would not load is refused before anything is written.
import { existsSync, statSync } from "node:fs";
import { isAbsolute, resolve } from "node:path";
import { parse, stringify } from "smol-toml";
import { InvalidParameterError, ModelNotFoundError, UnsupportedError } from "../errors";
import { IGNORED_OPTIONS, OFF_ONLY_OPTIONS } from "../api/ollama";
import { SAMPLING_DEFAULT_KEYS } from "../models/generation-config";
import {
  closeMatches,
  entryLine,
  hasAlias,
  loadAliases,
  readAliases,
  readUserFile,
  userAliasFile,
  type ModelPrompt,
} from "./aliases";
import { withStoreLock } from "./lock";
import type { LocateOptions } from "./resolve";
import { readManifest, writeFileAtomic } from "./manifest";
import { modelNameFits } from "./paths";
import { isRemoteSource, refuseMalformedSource, storedModelNamed } from "./pull";
import { listModels } from "./store";

/** What a model is made of, as Ollama's create request and a Modelfile give it. */
export interface ModelRecipe {
  /** The name it is made under. */
  name: string;
  /** The model it is made from: an alias, a stored model, an hf:/pypi: source, or a path. */
  from: string;
  system?: string;
  messages?: ModelPrompt["messages"];
  /** Ollama's parameters by its names (temperature, top_p, repeat_penalty, stop, num_ctx, ...). */
  parameters?: Record<string, unknown>;
  /** A LoRA/DoRA adapter directory. */
  adapter?: string;
  license?: string;
}

/** Each sampling parameter's models.toml key by its Ollama name (repeat_penalty is repetition_penalty). */
const PARAMETER_KEYS = new Map(SAMPLING_DEFAULT_KEYS.map((k) => [k.ollamaName ?? k.name, k]));

/** The parameters kept under their own names that are not sampling values (models.toml's stop, num_predict, num_ctx). */
const LIMIT_PARAMETERS = ["stop", "num_predict", "num_ctx"];

/** Every parameter a model may be made with, for the error naming an unknown one. */
const KNOWN_PARAMETERS = [
  ...PARAMETER_KEYS.keys(),
  ...LIMIT_PARAMETERS,
  ...Object.keys(OFF_ONLY_OPTIONS),
  ...Object.values(IGNORED_OPTIONS).flat(),
];

/**
 * Writes `recipe` as an alias in the user's models.toml (replacing an entry of that name the
 * user's file has); the entry's settings as written. Nothing is written when any of it is refused.
 * `paths`: whether `from` and the adapter may be paths on this machine (a server's clients may not, as LocateOptions).
 */
export async function createModel(
  recipe: ModelRecipe,
  { paths = true }: LocateOptions = {},
): Promise<Record<string, unknown>> {
  const settings = await aliasEntry(recipe, paths);
  await withStoreLock(() => {
    const file = userAliasFile();
    const text = existsSync(file) ? readUserFile(file) : "";
    checkName(recipe.name, text);
    // What it is made from, removed by another process since it was found (mlx rm, which
    // refuses under this lock once the model is written): the model would name nothing.
    const source = settings.source as string;
    if (!isAbsolute(source) && !isRemoteSource(source) && !loadAliases().models.has(source) && !readManifest(source))
      throw new ModelNotFoundError(`model '${recipe.from}' not found: it was removed while '${recipe.name}' was made`);
    writeUserAliases(withEntry(text, recipe.name, entryText(recipe.name, settings)));
  });
  return settings;
}

/**
 * Refuses removing stored model `name` while a model made from it by its name needs it (mlx
 * create, /api/create: an alias whose source it is): that one would name nothing, as
 * removeUserAlias refuses for one made from an alias (none of `removedToo`, going with it).
 * removeModel's `refuse`.
 */
export function refuseRemovingMadeFrom(name: string, removedToo: string[] = []): void {
  const made = [...loadAliases().models.values()].find(
    (alias) => alias.source === name && !removedToo.includes(alias.name) && storedModelNamed(alias),
  );
  if (made)
    throw new InvalidParameterError(
      `'${made.name}' is made from '${name}': delete it first, or make it from another model`,
      "model",
    );
}

/** Removes alias `name` from the user's models.toml: false where the file has no such entry. */
export async function removeUserAlias(name: string): Promise<boolean> {
  return withStoreLock(() => {
    const file = userAliasFile();
    if (!existsSync(file)) return false;
    const text = readUserFile(file);
    if (entryLine(text, name) === undefined) return false;
    const rest = withEntry(text, name);
    // Another alias made from it would name nothing, or a path of that name.
    const madeFrom = [...readAliases(rest).models.values()].filter((alias) => alias.source === name);
    if (madeFrom.length > 0)
      throw new InvalidParameterError(
        `'${madeFrom[0]!.name}' is made from '${name}': delete it first, or make it from another model`,
        "model",
      );
    writeUserAliases(rest);
    return true;
  });
}

/**
 * Copies alias `source` of the user's models.toml to `destination` (replacing an entry of that
 * name the file has), its settings as written: Ollama's copy of a model create made.
 */
export async function copyUserAlias(source: string, destination: string): Promise<void> {
  await withStoreLock(() => {
    const file = userAliasFile();
    const text = readUserFile(file);
    const models = (parse(text) as { models?: Record<string, Record<string, unknown>> }).models ?? {};
    const settings = models[source];
    if (settings === undefined) throw new ModelNotFoundError(`no model named '${source}' in ${file}`);
    checkName(destination, text);
    writeUserAliases(withEntry(text, destination, entryText(destination, settings)));
  });
}

/**
 * Whether the user's models.toml has a local alias `name` (one /api/delete and mlx rm may remove,
 * /api/copy copy); a remote provider's entry is the operator's configuration, not a model.
 */
export function isUserAlias(name: string): boolean {
  const file = userAliasFile();
  return existsSync(file) && entryLine(readUserFile(file), name) !== undefined && loadAliases().models.has(name);
}

/** The models.toml settings of `recipe`, each checked (the aliases they make are checked again before writing). */
async function aliasEntry(recipe: ModelRecipe, paths: boolean): Promise<Record<string, unknown>> {
  const settings: Record<string, unknown> = { source: await sourceOf(recipe.from, recipe.name, paths) };
  if (recipe.system !== undefined) settings.system = recipe.system;
  if (recipe.messages?.length) settings.messages = recipe.messages.map(({ role, content }) => ({ role, content }));
  if (recipe.license !== undefined) settings.license = recipe.license;
  if (recipe.adapter !== undefined) {
    if (!paths)
      throw new InvalidParameterError(
        "this server takes no paths on its disk from requests: no adapter directory",
        "adapters",
      );
    const dir = resolve(recipe.adapter);
    if (!statSync(dir, { throwIfNoEntry: false })?.isDirectory())
      throw new InvalidParameterError(`adapter ${dir} is not a directory (give an adapter's directory)`, "adapters");
    settings.adapter = dir;
  }
  for (const [name, given] of Object.entries(recipe.parameters ?? {})) {
    // A Modelfile's values are text ("0.7", "true"); the JSON API's are typed.
    const value =
      typeof given === "string" && given.trim() !== "" && !Number.isNaN(Number(given)) ? Number(given) : given;
    const refused = (range: string) =>
      new InvalidParameterError(`parameter '${name}' must be ${range} (got ${String(given)})`, "parameters");
    if (name === "stop") {
      // One string, or several (a Modelfile's PARAMETER stop lines, the API's list).
      const stop = typeof given === "string" ? [given] : given;
      if (!Array.isArray(stop) || !stop.every((s) => typeof s === "string" && s !== ""))
        throw refused("a string or a list of strings");
      settings.stop = stop;
    } else if (LIMIT_PARAMETERS.includes(name)) {
      // Its range is checked with the alias it makes, as models.toml's own num_ctx is.
      settings[name] = value;
    } else if (name in OFF_ONLY_OPTIONS) {
      // As /api/chat takes it: only the value that turns it off, which leaves nothing to keep.
      if (value !== OFF_ONLY_OPTIONS[name])
        throw new UnsupportedError(
          `parameter '${name}' is not supported here (only ${OFF_ONLY_OPTIONS[name]}, which turns it off)`,
          "parameters",
        );
    } else if ((IGNORED_OPTIONS.integer as readonly string[]).includes(name)) {
      if (!Number.isSafeInteger(value)) throw refused("a whole number");
    } else if ((IGNORED_OPTIONS.number as readonly string[]).includes(name)) {
      if (typeof value !== "number") throw refused("a number");
    } else if ((IGNORED_OPTIONS.boolean as readonly string[]).includes(name)) {
      // A runtime hint /api/chat takes and leaves unused, as this engine has no use for it: nothing to keep.
      if (typeof value !== "boolean" && value !== "true" && value !== "false") throw refused("true or false");
    } else if (name === "seed" && value === -1) {
      // Ollama's own default, a random seed: what a model without one has.
    } else {
      const key = PARAMETER_KEYS.get(name);
      if (!key)
        throw new InvalidParameterError(
          `unknown parameter '${name}' (known: ${KNOWN_PARAMETERS.join(", ")})`,
          "parameters",
        );
      if (typeof value !== "number" || !key.valid(value)) throw refused(key.range);
      settings[key.name] = value;
    }
  }
  return settings;
}

/**
 * What an alias names as its source for `from`: an alias, a stored model or an hf:/pypi: source
 * by its name, a path made absolute (a relative one would be taken from models.toml's folder).
 */
async function sourceOf(from: string, name: string, paths: boolean): Promise<string> {
  if (from.trim() === "") throw new InvalidParameterError("'from' is empty: name the model to make it from", "from");
  if (from === name) throw new InvalidParameterError(`'${name}' cannot be made from itself`, "from");
  const aliases = loadAliases();
  const remote = aliases.remotes.get(from);
  if (remote)
    throw new UnsupportedError(
      `'${from}' is served by a remote ${remote.kind} provider: it has no weights to make a model from`,
      "from",
    );
  // A malformed source is refused now, not by each request for the alias (which logs it as pulled).
  if (isRemoteSource(from)) refuseMalformedSource(from, "from");
  if (aliases.models.has(from) || isRemoteSource(from) || readManifest(from)) return from;
  // Where paths are refused the disk is not looked at, so the answer says nothing of what is there.
  const path = resolve(from);
  if (paths && existsSync(path)) return path;
  const known = [...aliases.models.keys(), ...(await listModels()).map((m) => m.name)];
  throw new ModelNotFoundError(
    `model '${from}' not found: make a model from an alias, a stored model, an hf:/pypi: source or a path`,
    closeMatches(from, known),
  );
}

/** What a model's name may hold, as said in errors. */
export const MODEL_NAME_RULE = "use letters, digits and . _ - : / (starting with a letter or digit)";

/**
 * Whether `name` may name a model made or copied here: as Ollama's names (namespace/model:tag), and
 * one models.toml reads back as the key it was written as.
 */
export const isModelName = (name: string) => /^[A-Za-z0-9][A-Za-z0-9._:/-]*$/.test(name);

/**
 * A name a model may be made under: one no stored model or remote alias has, nor an alias that
 * models.toml ships (the user's own file's entries are replaced, as Ollama's create replaces a model).
 */
function checkName(name: string, userText: string): void {
  if (name.trim() === "") throw new InvalidParameterError("the model's name is empty", "model");
  if (!isModelName(name)) throw new InvalidParameterError(`'${name}' is not a model name: ${MODEL_NAME_RULE}`, "model");
  if (!modelNameFits(name))
    throw new InvalidParameterError(`a name of ${name.length} characters is too long; choose a shorter one`, "model");
  if (isRemoteSource(name)) throw new InvalidParameterError(`'${name}' is a source, not a model name`, "model");
  if (readManifest(name))
    throw new InvalidParameterError(`'${name}' is a stored model: choose another name (or remove it first)`, "model");
  const aliases = loadAliases();
  if (entryLine(userText, name) === undefined && hasAlias(aliases, name))
    throw new InvalidParameterError(`'${name}' is an alias models.toml ships: choose another name`, "model");
}

/**
 * `text` with alias `name`'s entry replaced by `entry` where it was (its [models.NAME] table with
 * its sub-tables, or its one line `NAME = { ... }`), or
 * removed (`entry` undefined); an entry the text lacks is added at its end. Every other line is
 * kept as it is written.
 */
function withEntry(text: string, name: string, entry?: string): string {
  const at = entryLine(text, name);
  const lines = text.replace(/\n+$/, "").split("\n");
  const replacement = entry === undefined ? [] : entry.replace(/\n+$/, "").split("\n");
  if (at === undefined) {
    if (text.trim() === "") return replacement.length ? `${replacement.join("\n")}\n` : "";
    return `${[...lines, ...(replacement.length ? ["", ...replacement] : [])].join("\n")}\n`;
  }
  const bare = (line: string) => line.split("#")[0]!.replace(/\s+/g, "");
  const isComment = (line: string) => line.trim().startsWith("#");
  let start = at - 1;
  let end = start + 1;
  const header = bare(lines[start]!);
  if (header.startsWith("[")) {
    const key = header.slice("[models.".length, -1);
    const own = (line: string) =>
      [`[models.${key}.`, `[[models.${key}.`].some((prefix) => bare(line).startsWith(prefix));
    while (end < lines.length && !(bare(lines[end]!).startsWith("[") && !own(lines[end]!))) end++;
    // Comments and blank lines just before the next table are that table's; those just above its
    // header are the entry's: kept above its replacement, removed with it.
    while (end > start + 1 && (bare(lines[end - 1]!) === "" || isComment(lines[end - 1]!))) end--;
    if (entry === undefined) while (start > 0 && isComment(lines[start - 1]!)) start--;
  }
  const kept = [...lines.slice(0, start), ...replacement, ...lines.slice(end)];
  // A removed entry leaves one blank line between its neighbours, not two.
  if (replacement.length === 0 && start > 0 && kept[start - 1]?.trim() === "" && kept[start]?.trim() === "")
    kept.splice(start, 1);
  const joined = kept.join("\n").replace(/^\n+/, "").replace(/\n+$/, "");
  return joined === "" ? "" : `${joined}\n`;
}

/** Alias `name`'s entry as a [models.NAME] table. */
function entryText(name: string, settings: Record<string, unknown>): string {
  // smol-toml writes the table (quoting the name as it needs); messages as an inline array, which reads as the entry's own lines.
  const { messages, ...rest } = settings;
  let table = stringify({ models: { [name]: rest } }).trimEnd();
  if (Array.isArray(messages)) {
    const turns = messages.map((m) => `{ role = ${value(m.role)}, content = ${value(m.content)} }`);
    table += `\nmessages = [\n${turns.map((t) => `  ${t},\n`).join("")}]`;
  }
  return `${table}\n`;
}

/** A value as TOML writes it. */
const value = (v: unknown) => stringify({ v }).slice("v = ".length).trimEnd();

/**
 * Replaces the user's models.toml with `text`, once the aliases it makes load (a duplicate entry,
 * a source leading back to itself, two adapters in a chain are refused, the file left as it was).
 */
function writeUserAliases(text: string): void {
  const file = userAliasFile();
  try {
    readAliases(text);
  } catch (error) {
    // Its place in a file not written yet says nothing; what is wrong with the entry does.
    throw new InvalidParameterError((error as Error).message.replace(/^.*?:\d+(:\d+)?: /, ""), "model");
  }
  writeFileAtomic(file, text, "models.toml");
}
