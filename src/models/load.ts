// Loading a model from disk: an MLX-community directory (config.json + safetensors) or a
// single GGUF file. Both end as the same thing: HF-named weights, a config, a tokenizer.
import type { ModelLimits, ModelPrompt } from "../store/aliases";
import type { KvQuantization } from "./cache";
import type { SamplingDefaults } from "./generation-config";
import { existsSync, readFileSync, readdirSync, realpathSync, statSync } from "node:fs";
import { basename, join } from "node:path";
import * as mx from "../mlx";
import { ModelLoadError } from "../errors";
import type { MxArray } from "../mlx";
import { buildModel, parseConfig, Weights, type DecoderModel, type ModelConfig } from "./index";
import { LANGUAGE_MODEL_PREFIX, VISION_PREFIXES, type QuantConfig } from "./config";
import { ggufModel, isGGUFFile } from "./gguf";
import { readGGUFHeader, refuseSplitGGUF, type GGUFTensorInfo } from "./gguf-header";
import { HALF_GROUP, keptQuantizedTypes, loadGGUFTensorSteps } from "./gguf-tensors";
import { runSteps, runStepsAsync, type Steps } from "../event-loop";
import { Tokenizer } from "../tokenizer/tokenizer";
import type { Adapter } from "./lora";
import { shardTensors, type Shard, type ShardCut } from "./shard";
import { safetensorsFault } from "./safetensors-table";
import { stageHolds, tensorPart, type Stage } from "./stage";
import { indexedWeightFiles, unindexedWeightFiles, WEIGHT_INDEX } from "../store/model-files";

export type ModelFormat = "mlx" | "gguf";

export interface LoadedModel {
  model: DecoderModel;
  config: ModelConfig;
  tokenizer: Tokenizer;
  weights: Weights;
  format: ModelFormat;
  path: string;
  /** A note for the user about how the file was read (e.g. dequantized at load). */
  notes: string[];
  /** Bytes of weights held in memory. */
  weightBytes: number;
  /** The part of the model this process holds, when its layers are split across processes. */
  stage?: Stage;
  /** How its KV cache stores keys and values (--kv-bits, or the alias's kv_bits); float when absent. */
  kvQuantization?: KvQuantization;
  /** The adapter every generation uses unless a request names its own (`--adapter`, or the alias's adapter). */
  adapter?: Adapter;
  /** Speculative decoding: a draft model of the same vocabulary, or prompt lookup when none. */
  speculation?: { draft?: LoadedModel; numDraft: number };
  /** Most positions its KV cache holds per sequence (--max-kv-size): a rotating cache; all when absent. */
  maxKvSize?: number;
  /**
   * The turns its alias puts before each prompt (models.toml's system and messages), where it was
   * opened by that name (mlx run, mlx chat, the library); a server, whose models answer to several
   * names, gives each request its name's instead (GenerationSpec.modelPrompt).
   */
  prompt?: ModelPrompt;
  /**
   * Its alias's stop strings, answer length and context (models.toml's stop, num_predict,
   * num_ctx), where it was opened by that name, as `prompt`; a server gives each request its name's.
   */
  limits?: ModelLimits;
  /**
   * Its alias's sampling values (models.toml's temperature, top_p, seed, ...), where it was opened
   * by that name, as `prompt`: a generation's own values replace them (the CLI's flags, the
   * library's options); a server gives each request its name's.
   */
  sampling?: SamplingDefaults;
  free(): void;
}

/** Speculative decoding as asked for (--draft-model/--prompt-lookup, or models.toml), before loading. */
export interface SpeculationChoice {
  /** The draft model's name (alias, stored model or path); prompt lookup when absent. */
  draftModel?: string;
  numDraft: number;
}

// Defined with the other typed errors (the CLI's error layer names it without loading MLX).
export { ModelLoadError };

/**
 * The model at `path`, or only the part of it that `stage` names (its other tensors are never
 * read), or of that only the slice of each layer `shard` names (tensor parallel).
 */
export function loadModel(path: string, stage?: Stage, shard?: Shard): LoadedModel {
  return runSteps(loadingSteps(path, stage, shard));
}

/**
 * As loadModel, giving the event loop a turn between the pieces of the load (each weight file or
 * tensor read, the tokenizer, the model's construction), so that a server loading a model keeps
 * answering and streaming meanwhile.
 */
export function loadModelAsync(path: string, stage?: Stage, shard?: Shard): Promise<LoadedModel> {
  return runStepsAsync(loadingSteps(path, stage, shard));
}

function loadingSteps(path: string, stage?: Stage, shard?: Shard): Steps<LoadedModel> {
  return checkModelPath(path) === "directory" ? loadDirectory(path, stage, shard) : loadGGUFFile(path, stage, shard);
}

/** What kind of model `path` holds, from a glance at its files; a ModelLoadError when it holds none. */
export function checkModelPath(path: string): "directory" | "gguf" {
  if (!existsSync(path)) throw new ModelLoadError(`model not found: ${path}`);
  if (statSync(path).isDirectory()) {
    configFile(path);
    return "directory";
  }
  // A pipe (`-m <(curl ...)`) failed with "ESPIPE: invalid seek", or hung with no writer.
  if (!statSync(path).isFile())
    throw new ModelLoadError(
      `${path} is not a file on disk (a pipe or a device): a model is read at offsets, give its file`,
    );
  if (!isGGUFFile(path)) throw new ModelLoadError(`${path} is neither a model directory nor a GGUF file`);
  return "gguf";
}

/**
 * What loading `path` would find wrong with its files before reading any weight: checkModelPath's
 * glance, then a directory's config.json and each weight file's table, or a GGUF's header, and
 * that every tensor they list lies within its file (a copy or download cut short). A server asks
 * this before it unloads a loaded model to make room: a model that cannot load takes no place.
 */
export function checkModelFiles(path: string): void {
  if (checkModelPath(path) === "gguf") {
    refuseSplitGGUF(
      withModelErrors(path, () => readGGUFHeader(path)),
      path,
    );
    return;
  }
  const dir = realpathSync(path);
  readDirectoryConfig(dir);
  for (const file of directoryWeightFiles(dir)) {
    if (!existsSync(file)) throw new ModelLoadError(`missing weight file ${file}`);
    withModelErrors(file, () => {
      const fault = safetensorsFault(file);
      if (fault) throw new Error(fault.kind === "truncated" ? `truncated: ${fault.message}` : fault.message);
    });
  }
}

/** An MLX directory's config.json, which every model directory has. */
function configFile(dir: string): string {
  const path = join(dir, "config.json");
  if (!existsSync(path))
    throw new ModelLoadError(`${dir} has no config.json (expected an MLX-community model directory)`);
  return path;
}

function readJson(path: string): Record<string, unknown> {
  try {
    return JSON.parse(readFileSync(path, "utf8"));
  } catch (error) {
    throw new ModelLoadError(`cannot read ${path}: ${(error as Error).message}`);
  }
}

/** The safetensors files of a directory: those named by the index when there is one, else unindexedWeightFiles'. */
export function directoryWeightFiles(dir: string): string[] {
  const indexPath = join(dir, WEIGHT_INDEX);
  if (existsSync(indexPath)) {
    const files = indexFiles(dir, indexPath);
    if (files.length === 0) throw new ModelLoadError(`${indexPath} names no weight files`);
    return files.sort().map((f) => join(dir, f));
  }
  const files = unindexedWeightFiles(readdirSync(dir));
  if (files.length === 0) throw new ModelLoadError(`no .safetensors files in ${dir}`);
  return files.map((f) => join(dir, f));
}

/** The shards an index names, checked as a download checks them (each a file beside it); a ModelLoadError otherwise. */
function indexFiles(dir: string, indexPath: string): string[] {
  try {
    return indexedWeightFiles(readFileSync(indexPath, "utf8"), dir);
  } catch (error) {
    throw new ModelLoadError((error as Error).message);
  }
}

function* loadDirectory(dir: string, stage?: Stage, shard?: Shard): Steps<LoadedModel> {
  // Resolved once: a stored model's name is a link to its current revision, which an update
  // swaps; every file read through the link as resolved now is of one revision.
  const files = realpathSync(dir);
  const { config, tensors } = yield* directoryTensorSteps(files);
  sanitize(tensors, config);
  const tokenizer = withModelErrors(dir, () => Tokenizer.fromDirectory(files));
  yield;
  return yield* assemble(tensors, config, tokenizer, "mlx", dir, [], stage, shard);
}

/** An MLX directory's config.json, read and checked (a ModelLoadError naming the directory otherwise). */
export function readDirectoryConfig(dir: string): ModelConfig {
  const configPath = configFile(dir);
  return withModelErrors(dir, () => parseConfig(readJson(configPath)));
}

/** An MLX directory's config and weights, as its files hold them. */
export function readDirectoryTensors(dir: string): { config: ModelConfig; tensors: Map<string, MxArray> } {
  return runSteps(directoryTensorSteps(dir));
}

/** As readDirectoryTensors, pausing after each weight file. */
function* directoryTensorSteps(dir: string): Steps<{ config: ModelConfig; tensors: Map<string, MxArray> }> {
  const config = readDirectoryConfig(dir);
  const tensors = new Map<string, MxArray>();
  for (const file of directoryWeightFiles(dir)) {
    if (!existsSync(file)) throw new ModelLoadError(`missing weight file ${file}`);
    const loaded = withModelErrors(file, () => mx.loadSafetensors(file));
    for (const [name, t] of loaded.tensors) tensors.set(name, t);
    yield;
  }
  return { config, tensors };
}

function* loadGGUFFile(file: string, stage?: Stage, shard?: Shard): Steps<LoadedModel> {
  // Resolved once, as loadDirectory's folder: a stored GGUF is read through its model's link to
  // the current revision, which an update swaps, and its header and its tensors are two opens.
  const bytes = realpathSync(file);
  const header = withModelErrors(file, () => readGGUFHeader(bytes));
  refuseSplitGGUF(header, file);
  yield;
  const loaded = yield* withModelErrorSteps(file, () =>
    loadGGUFTensorSteps(bytes, header, stage && ((name) => stageHolds(stage, name))),
  );
  let named: Map<string, MxArray> | undefined;
  try {
    const gguf = withModelErrors(file, () => ggufModel(loaded));
    named = gguf.tensors;
    const config = parseConfig(gguf.config);
    const tokenizer = yield* withModelErrorSteps(file, () =>
      Tokenizer.fromGGUFMetadataSteps(gguf.metadata as Record<string, unknown>, bytes),
    );
    yield;
    const kept = (t: GGUFTensorInfo) =>
      keptQuantizedTypes.has(t.type) || loaded.groupSizes.has(t.name.replace(/\.weight$/, ""));
    const held = header.tensors.filter((t) => !stage || stageHolds(stage, t.name));
    const notes = dequantizedNote(
      basename(file),
      held.filter((t) => !kept(t)),
      held,
    );
    return yield* assemble(gguf.tensors, config, tokenizer, "gguf", file, notes, stage, shard);
  } catch (error) {
    // The weights are read by now (MLX reads a GGUF's at once): left to the garbage collector, a
    // failed load's would stay in memory, each time a server is asked for the model.
    for (const t of [...loaded.tensors.values(), ...(named?.values() ?? [])]) t.free();
    throw error;
  }
}

/**
 * The note on a GGUF's tensors dequantized at load: by type, or by name where others of their
 * type stay quantized (a Q6_K matrix our kernels do not hold in groups of 16 beside those they do).
 */
function dequantizedNote(file: string, dequantized: GGUFTensorInfo[], held: GGUFTensorInfo[]): string[] {
  if (dequantized.length === 0) return [];
  const wholeTypes: string[] = [];
  const someOfType: string[] = [];
  for (const type of new Set(dequantized.map((t) => t.type))) {
    const names = dequantized.filter((t) => t.type === type).map((t) => t.name);
    const all = held.filter((t) => t.type === type).length;
    if (names.length === all) wholeTypes.push(type);
    else
      someOfType.push(
        `${names.length} of its ${all} ${type} tensors (${names.slice(0, 3).join(", ")}${names.length > 3 ? ", …" : ""})`,
      );
  }
  const subject = [...(wholeTypes.length > 0 ? [`its ${wholeTypes.join(", ")} tensors`] : []), ...someOfType];
  const one = wholeTypes.length === 0 && dequantized.length === 1;
  const quantizedTypes = [...keptQuantizedTypes].filter((t) => !/^B?F\d+$/.test(t));
  const halfGroups = mx.cpuKernelsReadHalfGroups(HALF_GROUP)
    ? `, and Q6_K matrices of rows a multiple of ${HALF_GROUP}`
    : "";
  return [
    `${file}: ${subject.join(" and ")} ${one ? "was" : "were"} dequantized to 16-bit at load time (only ${quantizedTypes.join(", ")} stay quantized${halfGroups}), so ${one ? "it takes" : "they take"} more memory; \`mlx convert\` re-quantizes ${one ? "it" : "them"} to 4-bit`,
  ];
}

/**
 * Drops what mlx-lm drops: rotary caches, a tied output layer's duplicate, and a multimodal
 * model's vision tower, whose language model's weights lose their prefix. Gemma 3 ties exactly
 * when the weights have no lm_head (mlx-lm's gemma3_text), so its lm_head is kept whatever
 * tie_word_embeddings says.
 */
function sanitize(tensors: Map<string, MxArray>, config: ModelConfig): void {
  const tiedDuplicate = config.tieWordEmbeddings && config.modelType !== "gemma3_text";
  for (const [name, t] of [...tensors]) {
    if (!name.startsWith(LANGUAGE_MODEL_PREFIX)) continue;
    tensors.delete(name);
    tensors.set(name.slice(LANGUAGE_MODEL_PREFIX.length), t);
  }
  for (const [name, t] of [...tensors]) {
    const unused =
      name.includes("rotary_emb.inv_freq") ||
      (tiedDuplicate && name.startsWith("lm_head.")) ||
      VISION_PREFIXES.some((prefix) => name.startsWith(prefix));
    if (!unused) continue;
    t.free();
    tensors.delete(name);
  }
}

function* assemble(
  tensors: Map<string, MxArray>,
  config: ModelConfig,
  tokenizer: Tokenizer,
  format: ModelFormat,
  path: string,
  notes: string[],
  stage?: Stage,
  shard?: Shard,
): Steps<LoadedModel> {
  // A stage drops the tensors it does not use before anything reads them (MLX loads lazily).
  if (stage)
    for (const [name, t] of tensors)
      if (!stageHolds(stage, name)) {
        t.free();
        tensors.delete(name);
      }
  checkTensorsFitConfig(tensors, config, format === "mlx" ? join(path, "config.json") : path, stage);
  // The model's layers are built with the shard's heads and widths; the engine sees the model's.
  const cuts = new Map<string, ShardCut>();
  const layersConfig = shard ? shardTensors(tensors, config, shard, cuts) : config;
  const weights = new Weights(tensors, layersConfig, stage, shard);
  if (shard) weights.lora.cuts = cuts;
  const model = withModelErrors(path, () => buildModel(weights));
  refuseUnreadTensors(weights, config, format === "mlx" ? join(path, "config.json") : path);
  yield;
  // Read every weight now, so a truncated or corrupt file fails here rather than mid-answer.
  withModelErrors(path, () => mx.evaluate(...tensors.values()));
  // Every decode step streams all the weights: huge pages spare it a TLB miss every 4 KiB.
  mx.memory.hugePages([...tensors.values(), ...weights.derived]);
  const weightBytes = [...tensors.values()].reduce((n, t) => n + t.nbytes, 0);
  const lm: LoadedModel = {
    model,
    config,
    tokenizer,
    weights,
    format,
    path,
    notes,
    weightBytes,
    stage,
    free: () => {
      lm.adapter?.free();
      lm.adapter = undefined;
      for (const t of [...tensors.values(), ...weights.derived]) t.free();
      tensors.clear();
      weights.derived.length = 0;
    },
  };
  return lm;
}

/**
 * Refuses a config that does not describe the weights (the layers it counts, the widths it
 * gives), which would otherwise fail deep inside the model's construction or load weights it
 * never reads and answer garbage. Names and shapes only: no weight is read. A stage holds
 * only its own layers, so only those are checked.
 */
function checkTensorsFitConfig(
  tensors: Map<string, MxArray>,
  config: ModelConfig,
  source: string,
  stage: Stage | undefined,
): void {
  const mismatch = (problem: string) => new ModelLoadError(`${source} does not match the weights: ${problem}`);
  // Each layer the weights hold, by its first tensor's name (what the errors below name).
  const layers = new Map<number, string>();
  for (const name of [...tensors.keys()].sort()) {
    const layer = tensorPart(name);
    if (typeof layer === "number" && !layers.has(layer)) layers.set(layer, name);
  }
  const [start, end] = stage ? [stage.start, stage.end] : [0, config.numHiddenLayers];
  const layerCount = `num_hidden_layers is ${config.numHiddenLayers}`;
  const unused = Math.min(...[...layers.keys()].filter((layer) => layer < start || layer >= end));
  if (layers.has(unused)) throw mismatch(`tensor ${layers.get(unused)} is not used (${layerCount})`);
  // A missing layer is named by what a layer that is there names its first tensor.
  const [someLayer, someName] = [...layers][0] ?? [];
  for (let layer = start; layer < end; layer++)
    if (!layers.has(layer)) {
      const name = someName ? someName.replace(`.${someLayer}.`, `.${layer}.`) : `model.layers.${layer}.*`;
      throw mismatch(`missing tensor ${name} (${layerCount})`);
    }
  // A matrix by its rows; a norm's weight whole (one of [64, 1] failed at the first token in MLX's words).
  const expectSize = (name: string, size: number, what: string) => {
    const shape = tensors.get(name)?.shape;
    const fits = name.endsWith("norm.weight") ? shape?.length === 1 && shape[0] === size : shape?.[0] === size;
    if (shape && !fits) throw mismatch(`tensor ${name} has shape [${shape}], but ${what} is ${size}`);
  };
  const expectInputs = (name: string, size: number, what: string) => {
    const weight = tensors.get(name);
    if (!weight) return;
    const prefix = name.slice(0, -".weight".length);
    const inputs = linearInputs(weight, tensors.has(`${prefix}.scales`) && quantizationAt(config, prefix));
    if (inputs !== size)
      throw mismatch(`tensor ${name} has shape [${weight.shape}] (${inputs} inputs), but ${what} is ${size}`);
  };
  const heads = (name: string, count: number) => `${name} × head_dim (${count} × ${config.headDim})`;
  expectSize("model.norm.weight", config.hiddenSize, "hidden_size");
  // Token ids past vocab_size would be refused as if the prompt were wrong, ids past the embedding read garbage.
  expectSize("model.embed_tokens.weight", config.vocabSize, "vocab_size");
  expectSize("lm_head.weight", config.vocabSize, "vocab_size");
  checkOutputLayer(tensors, config, stage, mismatch);
  // A bias holds one value per output of its layer (per expert, for stacked experts).
  for (const [name, bias] of tensors) {
    const weight = name.endsWith(".bias") && tensors.get(`${name.slice(0, -".bias".length)}.weight`);
    if (weight && bias.shape.join() !== weight.shape.slice(0, -1).join())
      throw mismatch(`tensor ${name} has shape [${bias.shape}], but its weight has shape [${weight.shape}]`);
  }
  checkQuantizedShapes(tensors, config, source, mismatch);
  expectInputs("model.embed_tokens.weight", config.hiddenSize, "hidden_size");
  expectInputs("lm_head.weight", config.hiddenSize, "hidden_size");
  for (let layer = start; layer < end; layer++) {
    const prefix = `model.layers.${layer}`;
    expectSize(`${prefix}.input_layernorm.weight`, config.hiddenSize, "hidden_size");
    expectSize(`${prefix}.post_attention_layernorm.weight`, config.hiddenSize, "hidden_size");
    expectSize(
      `${prefix}.self_attn.q_proj.weight`,
      config.numAttentionHeads * config.headDim,
      heads("num_attention_heads", config.numAttentionHeads),
    );
    for (const part of ["k_proj", "v_proj"])
      expectSize(
        `${prefix}.self_attn.${part}.weight`,
        config.numKeyValueHeads * config.headDim,
        heads("num_key_value_heads", config.numKeyValueHeads),
      );
    for (const part of ["q_proj", "k_proj", "v_proj"])
      expectInputs(`${prefix}.self_attn.${part}.weight`, config.hiddenSize, "hidden_size");
    for (const norm of ["q_norm", "k_norm"])
      expectSize(`${prefix}.self_attn.${norm}.weight`, config.headDim, "head_dim");
    expectInputs(
      `${prefix}.self_attn.o_proj.weight`,
      config.numAttentionHeads * config.headDim,
      heads("num_attention_heads", config.numAttentionHeads),
    );
    expectSize(`${prefix}.self_attn.o_proj.weight`, config.hiddenSize, "hidden_size");
    // A dense MLP (experts have their own sizes): a misshapen one would fail at the first token in MLX's words.
    for (const part of ["gate_proj", "up_proj"]) {
      expectSize(`${prefix}.mlp.${part}.weight`, config.intermediateSize, "intermediate_size");
      expectInputs(`${prefix}.mlp.${part}.weight`, config.hiddenSize, "hidden_size");
    }
    expectSize(`${prefix}.mlp.down_proj.weight`, config.hiddenSize, "hidden_size");
    expectInputs(`${prefix}.mlp.down_proj.weight`, config.intermediateSize, "intermediate_size");
    // A bias config.json gives a layer but the weights lack would be left out of its product
    // without a word, and the model answer as it was never trained to (mlx-lm refuses it too).
    for (const [parts, why] of promisedBiases(config))
      for (const part of parts)
        if (tensors.has(`${prefix}.${part}.weight`) && !tensors.has(`${prefix}.${part}.bias`))
          throw mismatch(`missing tensor ${prefix}.${part}.bias (${why})`);
  }
}

/** The projections of a layer that config.json says have biases, each list with the reason. */
function promisedBiases(config: ModelConfig): [string[], string][] {
  const attention = ["q_proj", "k_proj", "v_proj", "o_proj"].map((p) => `self_attn.${p}`);
  const promised: [string[], string][] = [];
  if (config.attentionBias) promised.push([attention, "attention_bias is true"]);
  // Qwen2's queries, keys and values always have biases (transformers' and mlx-lm's Qwen2 have no setting for it).
  else if (config.modelType === "qwen2")
    promised.push([attention.slice(0, 3), "qwen2's q, k and v projections have biases"]);
  if (config.mlpBias) promised.push([["gate_proj", "up_proj", "down_proj"].map((p) => `mlp.${p}`), "mlp_bias is true"]);
  return promised;
}

/**
 * Weights the model never reads mean config.json describes another model than the weights (a
 * Qwen3's q/k norms under model_type llama): it would answer garbage without a word, where
 * mlx-lm refuses them ("parameters not in model"). Its arrays are freed first.
 */
function refuseUnreadTensors(weights: Weights, config: ModelConfig, source: string): void {
  const unread = weights.unread();
  if (unread.length === 0) return;
  for (const t of [...weights.tensors.values(), ...weights.derived]) t.free();
  const more = unread.length > 1 ? ` (and ${unread.length - 1} more)` : "";
  throw new ModelLoadError(
    `${source} does not match the weights: tensor ${unread[0]}${more} is not part of a ${config.modelType} model`,
  );
}

/**
 * A model that does not tie its output layer to the embedding needs lm_head.weight: without it
 * the model would answer through the embedding, garbage for an untied model (mlx-lm refuses it
 * too). Gemma 3 ties exactly when the weights have no lm_head, so it cannot lack one.
 */
function checkOutputLayer(
  tensors: Map<string, MxArray>,
  config: ModelConfig,
  stage: Stage | undefined,
  mismatch: (problem: string) => ModelLoadError,
): void {
  const holdsOutput = !stage || stageHolds(stage, "lm_head.weight");
  if (config.tieWordEmbeddings || config.modelType === "gemma3_text" || !holdsOutput || tensors.has("lm_head.weight"))
    return;
  const why =
    config.raw.tie_word_embeddings === false
      ? "tie_word_embeddings is false"
      : `${config.modelType} does not tie it unless tie_word_embeddings is true`;
  throw mismatch(`missing tensor lm_head.weight (${why})`);
}

/**
 * Each quantized layer's packed weight and scales must hold the same inputs under the bits and
 * group size config.json gives it (inputs = packed words × 32 / bits = groups × group size):
 * otherwise the first product fails mid-answer with MLX's words, not ours. Weights packed by
 * another scheme (a quantization_config MLX does not read) are refused by name.
 */
function checkQuantizedShapes(
  tensors: Map<string, MxArray>,
  config: ModelConfig,
  source: string,
  mismatch: (problem: string) => ModelLoadError,
): void {
  if (config.foreignQuantization) {
    const packed = [...tensors].find(([, t]) => !mx.isFloating(t.dtype));
    if (packed)
      throw new ModelLoadError(
        `${source}: quant_method '${config.foreignQuantization}' is not a quantization we read (MLX's own and mxfp4 are; its tensor ${packed[0]} is ${packed[1].dtypeName}); use an MLX-quantized or GGUF version of this model`,
      );
  }
  for (const [name, scales] of tensors) {
    if (!name.endsWith(".scales")) continue;
    const prefix = name.slice(0, -".scales".length);
    const weight = tensors.get(`${prefix}.weight`);
    const quant = quantizationAt(config, prefix);
    if (!weight || !quant) continue;
    // Else MLX's own words at the first product, naming neither the file nor the layer.
    if (!MLX_QUANTIZATION_MODES.includes(quant.mode))
      throw new ModelLoadError(
        `${source}: '${prefix}' is quantized in mode '${quant.mode}', which MLX does not have (${MLX_QUANTIZATION_MODES.join(", ")})`,
      );
    // Affine codes are read as scale × code + bias per group: without the biases MLX stops at the first product, in its words.
    if (quant.mode === "affine" && !tensors.has(`${prefix}.biases`))
      throw mismatch(`missing tensor ${prefix}.biases (an affine-quantized layer has biases beside its scales)`);
    if (linearInputs(weight, quant) !== scales.shape.at(-1)! * quant.groupSize)
      throw mismatch(
        `'${prefix}' has weight [${weight.shape}] and scales [${scales.shape}], which do not fit ${quant.bits}-bit quantization in groups of ${quant.groupSize}`,
      );
  }
}

/** The quantization modes MLX's quantized products take. */
const MLX_QUANTIZATION_MODES = ["affine", "mxfp4", "nvfp4", "mxfp8"];

/** How config.json quantizes the layer at `prefix` (its own override, else the model's), if at all. */
function quantizationAt(config: ModelConfig, prefix: string): QuantConfig | undefined {
  return config.quantizationOverrides[prefix] || config.quantization;
}

/** A linear layer's inputs: its weight's last dimension, unpacked (32 / bits values a word) where it is quantized. */
function linearInputs(weight: MxArray, quant: QuantConfig | false | undefined): number {
  return quant ? (weight.shape.at(-1)! * 32) / quant.bits : weight.shape.at(-1)!;
}

/** Runs `fn`, which reads the model at `path`: whatever it throws becomes a ModelLoadError naming the path. */
export function withModelErrors<T>(path: string, fn: () => T): T {
  try {
    return fn();
  } catch (error) {
    throw modelError(path, error);
  }
}

/** As withModelErrors, for work done in steps. */
function* withModelErrorSteps<T>(path: string, steps: () => Steps<T>): Steps<T> {
  try {
    return yield* steps();
  } catch (error) {
    throw modelError(path, error);
  }
}

const modelError = (path: string, error: unknown) =>
  error instanceof ModelLoadError ? error : new ModelLoadError(`cannot load ${path}: ${(error as Error).message}`);
