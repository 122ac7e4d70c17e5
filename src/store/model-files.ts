// Which files of a model directory or hub repository a model needs: the loader reads these
// and nothing else, so READMEs, PyTorch .bin copies, ONNX exports and images are never fetched.

export const WEIGHT_INDEX = "model.safetensors.index.json";
/** A sentence-transformers model's list of modules: how its hidden states become an embedding. */
const SENTENCE_TRANSFORMERS_MODULES = "modules.json";

const METADATA_FILES = [
  "config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "generation_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  // A multimodal model's processor keeps its chat template here.
  "chat_template.json",
  SENTENCE_TRANSFORMERS_MODULES,
  // Its max_seq_length: the longest input a sentence-transformers model embeds.
  "sentence_bert_config.json",
  // Its prompts: the default one goes before every input a sentence-transformers model embeds.
  "config_sentence_transformers.json",
];

/**
 * The needed subset of `available` (file names, a folder's files as "folder/name"). With a weight
 * index, only the shards it names: repositories often also hold a consolidated copy of the same
 * weights. A sentence-transformers model's modules.json names the folder of its pooling settings.
 * `read` gives the text of one of the files (the index, modules.json); `origin` names the model in errors.
 */
export async function neededFiles(
  available: string[],
  read: (name: string) => Promise<string>,
  origin: string,
): Promise<string[]> {
  const present = new Set(available);
  const indexed = present.has(WEIGHT_INDEX) ? indexedWeightFiles(await read(WEIGHT_INDEX), origin) : undefined;
  const poolingConfig = present.has(SENTENCE_TRANSFORMERS_MODULES)
    ? poolingConfigFile(await read(SENTENCE_TRANSFORMERS_MODULES))
    : undefined;
  return neededOf(available, indexed, poolingConfig);
}

/** neededFiles, given the weights the index names (when there is one) and the pooling module's config file. */
export function neededOf(available: string[], indexedWeights?: string[], poolingConfig?: string): string[] {
  const present = new Set(available);
  const weights = indexedWeights ? [...new Set(indexedWeights)] : unindexedWeightFiles(available);
  const metadata = [...METADATA_FILES, WEIGHT_INDEX, ...(poolingConfig ? [poolingConfig] : [])].filter((name) =>
    present.has(name),
  );
  return [...metadata, ...weights.sort()];
}

/**
 * The file a sentence-transformers Pooling module keeps its settings in, among a modules.json's
 * entries (`modules`, as parsed): "1_Pooling/config.json", a folder beside modules.json.
 */
export function poolingConfigOf(modules: unknown): string | undefined {
  const entry = Array.isArray(modules)
    ? modules.find((m) => typeof m?.type === "string" && m.type.endsWith("models.Pooling"))
    : undefined;
  if (!entry) return undefined;
  const folder = String(entry.path ?? "");
  return folder ? `${folder}/config.json` : "config.json";
}

/** The Pooling module's config file that a modules.json (its text) names; undefined when none, or not a folder beside it. */
function poolingConfigFile(modulesJson: string): string | undefined {
  let modules: unknown;
  try {
    modules = JSON.parse(modulesJson);
  } catch {
    return undefined; // the loader names what is wrong with it
  }
  const file = poolingConfigOf(modules);
  return file && isModelFileName(file) && file.includes("/") ? file : undefined;
}

/** A file of a model: a name, or one folder and a name ("1_Pooling/config.json"); never a path out of it. */
export function isModelFileName(name: string): boolean {
  const parts = name.split("/");
  return parts.length <= 2 && parts.every((part) => /^[^/\\]+$/.test(part) && part !== "." && part !== "..");
}

/**
 * The weight files among `names` (top-level file names) where no index names them: the
 * model*.safetensors that mlx-lm reads, or every .safetensors where none is named so. Others
 * beside model* files hold the weights a second time (Mistral's consolidated.safetensors) or
 * are not the model's (a LoRA's adapters.safetensors).
 */
export function unindexedWeightFiles(names: string[]): string[] {
  const files = names.filter((name) => name.endsWith(".safetensors") && !name.includes("/")).sort();
  const model = files.filter((name) => name.startsWith("model"));
  return model.length > 0 ? model : files;
}

/** Shard names from a model.safetensors.index.json. */
export function indexedWeightFiles(indexJson: string, origin: string): string[] {
  let map: unknown;
  try {
    map = (JSON.parse(indexJson) as { weight_map?: unknown }).weight_map;
  } catch (error) {
    throw new Error(`${origin}: ${WEIGHT_INDEX} is not valid JSON (${(error as Error).message})`);
  }
  if (typeof map !== "object" || map === null) throw new Error(`${origin}: ${WEIGHT_INDEX} has no weight_map`);
  const files = [...new Set(Object.values(map as Record<string, unknown>))];
  const bad = files.find((f) => typeof f !== "string" || f.includes("/") || f.includes("\\") || f.startsWith("."));
  if (bad !== undefined)
    throw new Error(`${origin}: ${WEIGHT_INDEX} names '${String(bad)}', which is not a file beside it`);
  return files as string[];
}
