// `mlx show <model>`: a stored model's manifest and what its config says; of a model directory
// or GGUF file on disk, what its files say.
import { defineCommand } from "citty";
import { existsSync, readFileSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { readManifest, type ModelManifest } from "../store/manifest";
import { blobPresent } from "../store/blobs";
import { blobPath } from "../store/paths";
import { formatBytes, formatCount, shellWord } from "../format";
import { ggufParameterCount, readGGUFHeader } from "../models/gguf-header";
import { modelRequest } from "../store/pull";
import { ggufOfDirectory, locateModel, looksLikePath, missingModelError } from "../store/resolve";
import { isGGUFFile } from "../models/gguf";
import { directoryWeightFiles } from "../models/load";
import { loadPath, repair, repairHint, unreadableManifestError } from "../store/store";
import { loadAliases } from "../store/aliases";
import type { RemoteModelConfig } from "../providers/config";
import { ollamaParameters, ollamaParameterText, readGenerationDefaults } from "../models/generation-config";
import { fail } from "./log";

// The config.json fields worth a glance; the whole file is one `cat` away in the model directory.
const CONFIG_FIELDS = [
  "model_type",
  "hidden_size",
  "num_hidden_layers",
  "num_attention_heads",
  "num_key_value_heads",
  "vocab_size",
  "max_position_embeddings",
  "rope_theta",
  "tie_word_embeddings",
  "quantization",
];

export default defineCommand({
  meta: {
    name: "show",
    description:
      "Show a stored model (files, format, quantization, sizes, source, config), or what a model directory or GGUF file on disk says",
  },
  args: {
    model: {
      type: "positional",
      required: true,
      description: "Alias, stored model name, or a model directory or GGUF file",
    },
    json: {
      type: "boolean",
      description: "One JSON object: the manifest and a config summary (for a path: its format, size and config)",
    },
  },
  async run({ args }) {
    try {
      // A model on disk where it is (as `mlx run -m ./dir` takes it): what its files say.
      if (looksLikePath(args.model) && existsSync(args.model)) return showFiles(args.model, Boolean(args.json));
      // A remote alias has no files: where it is served, as /api/show describes it (Ollama's cloud models).
      const remote = loadAliases().remotes.get(args.model);
      if (remote) return showRemote(remote, Boolean(args.json));
      const { name } = modelRequest(args.model);
      const unreadable = unreadableManifestError(name);
      if (unreadable) throw unreadable;
      const manifest = readManifest(name);
      if (!manifest) {
        // Only an alias or a source can be fetched: a name that is neither is unknown (a remote
        // provider's alias has no weights), and pulling it would fail too.
        const location = locateModel(args.model);
        if (location.kind === "missing") throw await missingModelError(location);
        // An alias of a model on disk is used where it is (as run and serve load it), never stored.
        if (location.kind === "path")
          return showFiles(location.path, Boolean(args.json), aliasLines(args.model, location.path));
        // An alias made from another model (mlx create, /api/create): that model's files, with the alias's turns.
        if (location.path !== undefined)
          return showFiles(location.path, Boolean(args.json), aliasLines(args.model, location.path));
        throw new Error(
          `'${name}' is not in the store (mlx pull ${shellWord(args.model)} fetches it; mlx list shows what is there)`,
        );
      }
      // A model with files gone is shown all the same, with the command that gets them back.
      const present = await Promise.all(manifest.files.map((f) => blobPresent(f)));
      const missing = new Set(manifest.files.filter((_, i) => !present[i]).map((f) => f.name));
      const config = describedStored(manifest, missing);
      if (args.json) {
        const shown = { manifest, config, path: loadPath(manifest), missingFiles: [...missing] };
        process.stdout.write(`${JSON.stringify(shown, null, 2)}\n`);
        return;
      }
      const lines = [
        ["name", manifest.name],
        ["source", manifest.source],
        ["format", manifest.format],
        ["architecture", manifest.architecture ?? "-"],
        ["quantization", manifest.quantization ?? "-"],
        ["size", formatBytes(manifest.totalBytes)],
        ...(manifest.revision ? [["revision", manifest.revision]] : []),
        ["created", manifest.createdAt],
        ["last used", manifest.lastUsedAt],
        ["path", loadPath(manifest)],
        // The manifest's quantization line above says it already.
        ...configLines(config ?? {}).filter(([k]) => k !== "quantization"),
        ...manifest.files.map((f) => [
          `file ${f.name}`,
          `${formatBytes(f.size)}  sha256:${f.sha256}${missing.has(f.name) ? `  missing: ${repair(manifest.name).command}` : ""}`,
        ]),
        ...aliasLines(args.model, loadPath(manifest)),
      ];
      printFields(lines);
    } catch (error) {
      fail(error);
    }
  },
});

function printFields(lines: string[][]): void {
  const width = Math.max(...lines.map(([k]) => k!.length));
  process.stdout.write(lines.map(([k, v]) => `${k!.padEnd(width)}  ${v}`).join("\n") + "\n");
}

/** A remote provider's model: its settings in models.toml (the key's variable named, never its value). */
function showRemote(remote: RemoteModelConfig, json: boolean): void {
  const shown = {
    name: remote.name,
    provider: remote.kind,
    base_url: remote.baseUrl,
    model: remote.model,
    api_key_env: remote.apiKeyEnv ?? null,
    max_tokens: remote.defaultMaxTokens,
    defined_at: remote.definedAt,
  };
  if (json) {
    process.stdout.write(`${JSON.stringify(shown, null, 2)}\n`);
    return;
  }
  printFields(Object.entries(shown).map(([k, v]) => [k.replace(/_/g, " "), v === null ? "-" : String(v)]));
}

/**
 * What alias `name` gives the model at `path`: the parameters its requests get where they set none
 * (its own and its files' sampling values, num_ctx, num_predict, stop: those /api/show lists), the
 * turns it puts before each prompt, and its license (models.toml's system, messages, license).
 */
function aliasLines(name: string, path: string): string[][] {
  const alias = loadAliases().models.get(name);
  const parameters = ollamaParameters({ ...readGenerationDefaults(path), ...alias?.sampling }, alias?.limits);
  const { system, messages = [] } = alias?.prompt ?? {};
  return [
    ...parameters.map(([key, value]) => [`parameter ${key}`, ollamaParameterText(value)]),
    ...(system === undefined ? [] : [["system", system]]),
    ...messages.map((m) => [`message ${m.role}`, m.content]),
    ...(alias?.license === undefined ? [] : [["license", alias.license]]),
  ];
}

/** A model directory or GGUF file outside the store: its format, size and config (no manifest: nothing stored). */
function showFiles(given: string, json: boolean, extra: string[][] = []): void {
  // A folder holding one GGUF file and no config.json is that file, as run loads it.
  const path = ggufOfDirectory(resolve(given));
  const directory = statSync(path).isDirectory();
  if (!directory && !isGGUFFile(path)) throw new Error(`${path} is neither a model directory nor a GGUF file`);
  const config = directory ? directoryConfig(path) : ggufSummary(path);
  const size = directory ? directoryWeightFiles(path).reduce((n, f) => n + statSync(f).size, 0) : statSync(path).size;
  const format = directory ? "mlx" : "gguf";
  if (json) {
    process.stdout.write(`${JSON.stringify({ path, format, sizeBytes: size, config }, null, 2)}\n`);
    return;
  }
  printFields([["path", path], ["format", format], ["size", formatBytes(size)], ...configLines(config), ...extra]);
}

/**
 * Config fields as lines of the table: a quantization as a summary (with its per-layer overrides
 * counted), not the JSON object, which lists every overridden layer on one line of kilobytes.
 */
function configLines(config: Record<string, unknown>): string[][] {
  return Object.entries(config).map(([k, v]) => {
    if (k === "quantization" && v && typeof v === "object") {
      const { bits, group_size: groupSize, mode, ...rest } = v as Record<string, unknown>;
      // An override is a layer's own quantization, or false for a layer left unquantized.
      const layers = Object.values(rest).filter((o) => o === false || (o && typeof o === "object")).length;
      const text = `${bits}-bit${mode ? ` ${mode}` : ""}${groupSize ? `, group ${groupSize}` : ""}`;
      return [k, layers ? `${text} (${layers} layers differ)` : text];
    }
    return [k, typeof v === "object" ? JSON.stringify(v) : String(v)];
  });
}

/** A model directory's config.json fields worth a glance, as the file has them. */
function directoryConfig(dir: string): Record<string, unknown> {
  const file = join(dir, "config.json");
  if (!existsSync(file)) throw new Error(`${dir} has no config.json: it is no model directory`);
  try {
    return glanceFields(JSON.parse(readFileSync(file, "utf8")));
  } catch (error) {
    throw new Error(`${file} is not JSON: ${(error as Error).message}`);
  }
}

/**
 * configSummary, a failure to read it saying how to repair the model: its blobs were checked when
 * stored, so a config or GGUF header that does not read now was damaged on disk.
 */
function describedStored(manifest: ModelManifest, missing: Set<string>): Record<string, unknown> | undefined {
  try {
    return configSummary(manifest, missing);
  } catch (error) {
    throw new Error(`${(error as Error).message}; ${repairHint(loadPath(manifest))}`, { cause: error });
  }
}

/** What the model's config.json (or GGUF header) says; nothing when that file is missing. */
function configSummary(manifest: ModelManifest, missing: Set<string>): Record<string, unknown> | undefined {
  const file = manifest.files.find((f) => f.name === "config.json");
  if (!file) {
    const gguf = manifest.files.find((f) => f.name.endsWith(".gguf"));
    return gguf && !missing.has(gguf.name) ? ggufSummary(blobPath(gguf.sha256)) : undefined;
  }
  if (missing.has(file.name)) return undefined;
  try {
    return glanceFields(JSON.parse(readFileSync(blobPath(file.sha256), "utf8")));
  } catch (error) {
    // Named as the model's directory has it (a blob's name tells the user nothing), as directoryConfig does.
    throw new Error(`${join(loadPath(manifest), file.name)} is not JSON: ${(error as Error).message}`);
  }
}

/** The CONFIG_FIELDS a config.json sets. */
const glanceFields = (config: Record<string, unknown>) =>
  Object.fromEntries(CONFIG_FIELDS.filter((k) => config[k] !== undefined).map((k) => [k, config[k]]));

/** A GGUF's metadata in config.json's words (the fields a directory shows), its parameters, license and template. */
function ggufSummary(path: string): Record<string, unknown> {
  const { metadata, tensors } = readGGUFHeader(path);
  const arch = metadata.get("general.architecture");
  const own = (key: string) => metadata.get(`${arch}.${key}`);
  const tokens = metadata.get("tokenizer.ggml.tokens");
  const parameters = ggufParameterCount(tensors);
  const summary: Record<string, unknown> = {
    model_name: metadata.get("general.name"),
    parameters: formatCount(parameters),
    hidden_size: own("embedding_length"),
    num_hidden_layers: own("block_count"),
    num_attention_heads: own("attention.head_count"),
    num_key_value_heads: own("attention.head_count_kv"),
    vocab_size: typeof tokens === "object" ? tokens.arrayLength : own("vocab_size"),
    max_position_embeddings: own("context_length"),
    rope_theta: own("rope.freq_base"),
    license: metadata.get("general.license"),
    chat_template: typeof metadata.get("tokenizer.chat_template") === "string" ? "yes" : "no",
  };
  return Object.fromEntries(Object.entries(summary).filter(([, v]) => v !== undefined));
}
