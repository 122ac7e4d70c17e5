// Which files of a model directory or hub repository a model needs: the loader reads these
// and nothing else, so READMEs, PyTorch .bin copies, ONNX exports and images are never fetched.

export const WEIGHT_INDEX = "model.safetensors.index.json";

const METADATA_FILES = [
  "config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "generation_config.json",
  "special_tokens_map.json",
  "chat_template.jinja",
  // A multimodal model's processor keeps its chat template here.
  "chat_template.json",
];

/**
 * The needed subset of `available` (top-level file names). With a weight index, only the
 * shards it names: repositories often also hold a consolidated copy of the same weights.
 */
export function neededFiles(available: string[], indexedWeights?: string[]): string[] {
  const present = new Set(available);
  const weights = indexedWeights ? [...new Set(indexedWeights)] : unindexedWeightFiles(available);
  const metadata = [...METADATA_FILES, WEIGHT_INDEX].filter((name) => present.has(name));
  return [...metadata, ...weights.sort()];
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
