// How a model's bytes fall across its layers, read from the file headers alone (nothing is
// loaded): what splitting its layers across processes needs to plan who holds what.
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from "node:fs";
import { join } from "node:path";
import { parseConfig } from "./config";
import { isGGUFFile } from "./gguf";
import { readGGUFHeader } from "./gguf-header";
import { loadedBytes } from "./gguf-tensors";
import { directoryWeightFiles, ModelLoadError, type LoadedModel } from "./load";
import { tensorPart } from "./stage";

export interface ModelLayout {
  numLayers: number;
  hiddenSize: number;
  /** Bytes of each decoder layer's tensors. */
  layerBytes: number[];
  /** Bytes of the embedding, the final norm and the output layer (the first stage's). */
  endBytes: number;
  /**
   * Multiply-adds per token position: each decoder layer's (the elements of its matrices), and
   * the output layer's (the embedding's when the two are tied; the embedding itself is a lookup).
   * What a stage computes, where bytes would not tell (a GGUF's output layer is often 8-bit
   * where its layers are 4-bit).
   */
  layerWeights: number[];
  headWeights: number;
  /** Bytes every stage holds (rotary tables and the like). */
  sharedBytes: number;
  /** Bytes per value of the hidden states passed between stages (the embedding's float type). */
  activationBytes: number;
  /** The whole model's parameters, quantized matrices counted by the values they stand for. */
  parameters: number;
}

/** Bytes of the whole model's weights as loaded: what one process holding all of it would hold. */
export const modelBytes = (layout: ModelLayout): number =>
  layout.layerBytes.reduce((a, b) => a + b, 0) + layout.endBytes + layout.sharedBytes;

/** Each split model's whole size, read once: a GGUF's header with a large vocabulary takes a while. */
const wholeBytes = new WeakMap<LoadedModel, number>();

/**
 * The bytes of `lm`'s weights as one process holds them: a rank of a split model (a pipeline's
 * stage, a tensor-parallel slice) holds only its share, so the whole is read from the headers.
 */
export function wholeModelBytes(lm: LoadedModel): number {
  if (!lm.stage && !lm.weights.shard) return lm.weightBytes;
  let bytes = wholeBytes.get(lm);
  if (bytes === undefined) wholeBytes.set(lm, (bytes = modelBytes(readLayout(lm.path))));
  return bytes;
}

export function readLayout(path: string): ModelLayout {
  if (!existsSync(path)) throw new ModelLoadError(`model not found: ${path}`);
  const sizes = statSync(path).isDirectory() ? safetensorsSizes(path) : ggufSizes(path);
  let numLayers = 0;
  for (const name of sizes.keys()) {
    const part = tensorPart(name);
    if (typeof part === "number") numLayers = Math.max(numLayers, part + 1);
  }
  const layout: ModelLayout = {
    numLayers,
    hiddenSize: 0,
    layerBytes: new Array(numLayers).fill(0),
    endBytes: 0,
    layerWeights: new Array(numLayers).fill(0),
    headWeights: 0,
    sharedBytes: 0,
    activationBytes: 2,
    parameters: 0,
  };
  const directory = statSync(path).isDirectory();
  const config = directory ? JSON.parse(readFileSync(join(path, "config.json"), "utf8")) : undefined;
  const groupSize = (config?.quantization ?? config?.quantization_config)?.group_size ?? 64;
  const weights = (name: string) => matrixWeights(name, sizes, groupSize);
  for (const [name, { bytes, shape }] of sizes) {
    const matrix = weights(name);
    // A vector's elements; a quantized matrix's scales and biases are no parameters of their own.
    if (!/\.(?:scales|biases)$/.test(name)) layout.parameters += shape.length < 2 ? elements(shape) : matrix;
    const part = tensorPart(name);
    if (part === "ends") layout.endBytes += bytes;
    else if (part === "shared") layout.sharedBytes += bytes;
    else {
      layout.layerBytes[part] += bytes;
      layout.layerWeights[part] += matrix;
    }
  }
  const outputLayer = [...sizes.keys()].filter((name) => /^(?:lm_head|output)\./.test(name));
  const head =
    outputLayer.length > 0
      ? outputLayer
      : [...sizes.keys()].filter((name) => /^(?:model\.embed_tokens|token_embd)\./.test(name));
  layout.headWeights = head.reduce((sum, name) => sum + weights(name), 0);
  layout.hiddenSize = config ? parseConfig(config).hiddenSize : sizes.get("token_embd.weight")!.shape[0]!;
  // Hidden states take the widest float type they meet: the embedding's (its scales' when it is
  // quantized) and the norms' (a GGUF's are float32).
  const floatBytes = (t?: TensorSize) => (t?.dtype === "F32" ? 4 : 2);
  const embedding =
    sizes.get("model.embed_tokens.scales") ?? sizes.get("model.embed_tokens.weight") ?? sizes.get("token_embd.weight");
  const norm = sizes.get("model.norm.weight") ?? sizes.get("output_norm.weight");
  layout.activationBytes = Math.max(floatBytes(embedding), floatBytes(norm));
  return layout;
}

/**
 * The elements of a weight matrix (0 for vectors, and for a quantized matrix's scales and
 * biases): a GGUF gives its logical shape; MLX's quantized safetensors pack a matrix into uint32
 * words beside its scales, one per group of `groupSize` elements.
 */
function matrixWeights(name: string, sizes: Map<string, TensorSize>, groupSize: number): number {
  const t = sizes.get(name)!;
  if (t.shape.length < 2 || /\.(?:scales|biases)$/.test(name)) return 0;
  const scales = name.endsWith(".weight") ? sizes.get(`${name.slice(0, -".weight".length)}.scales`) : undefined;
  return scales ? elements(scales.shape) * groupSize : elements(t.shape);
}

const elements = (shape: number[]) => shape.reduce((a, b) => a * b, 1);

interface TensorSize {
  bytes: number;
  /** As safetensors and GGUF name them: F32, F16, BF16, Q8_0, ... */
  dtype: string;
  /** Innermost dimension first for a GGUF, outermost first for safetensors. */
  shape: number[];
}

function ggufSizes(path: string): Map<string, TensorSize> {
  if (!isGGUFFile(path)) throw new ModelLoadError(`${path} is neither a model directory nor a GGUF file`);
  return new Map(
    readGGUFHeader(path).tensors.map((t) => [t.name, { bytes: loadedBytes(t), dtype: t.type, shape: t.dims }]),
  );
}

/** Each safetensors file starts with the length of a JSON table of its tensors' offsets. */
function safetensorsSizes(dir: string): Map<string, TensorSize> {
  const sizes = new Map<string, TensorSize>();
  // The files the loader reads: not a consolidated copy beside them, counted twice.
  for (const file of directoryWeightFiles(dir)) {
    const fd = openSync(file, "r");
    try {
      const length = Buffer.alloc(8);
      readSync(fd, length, 0, 8, 0);
      const table = Buffer.alloc(Number(length.readBigUInt64LE(0)));
      readSync(fd, table, 0, table.length, 8);
      const entries = JSON.parse(table.toString("utf8")) as Record<
        string,
        { dtype: string; shape: number[]; data_offsets: number[] }
      >;
      for (const [name, t] of Object.entries(entries)) {
        if (name === "__metadata__") continue;
        sizes.set(name, { bytes: t.data_offsets[1]! - t.data_offsets[0]!, dtype: t.dtype, shape: t.shape });
      }
    } finally {
      closeSync(fd);
    }
  }
  return sizes;
}
