// GGUF → an MLX-community model directory that mlx-lm loads as it is: quantized weights
// kept as affine 4/8-bit, config.json, the tokenizer files and the chat template.
import { existsSync, mkdirSync, readdirSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import * as mx from "../mlx";
import { ggufModel, hfTensorName, quantizationOf, type GGUFModel } from "./gguf";
import { readGGUFHeader, refuseSplitGGUF, type GGUFHeader } from "./gguf-header";
import { sentenceTransformersPoolingFiles } from "./pooling";
import { keptQuantizedTypes, loadGGUFTensors, widenedTypes } from "./gguf-tensors";
import { loadModel, withModelErrors } from "./load";
import { nextTurn } from "../event-loop";
import { cachedTokenizerFiles } from "../tokenizer/gguf-cache";
import { requireFreeSpace } from "../files";
import { writeErrorReason } from "../format";

export interface ConvertResult {
  dir: string;
  tensors: number;
  bytes: number;
}

export interface ConvertOptions {
  force?: boolean;
  /**
   * Tensors MLX dequantized at load (K-quants, Q5_0, ...) are quantized again, to MLX's affine
   * `bits` (default 4; 0 keeps them 16-bit) in groups of `groupSize` (default 64, as mlx-lm).
   * Asked for (not the default), the float matrices of an F16, BF16 or F32 file too, as
   * `mlx_lm.convert -q` quantizes a model; by default they stay as they are.
   */
  bits?: number;
  groupSize?: number;
}

/**
 * Writes the MLX directory. The event loop gets a turn between layers: Ctrl-C stops a long
 * conversion there, before anything is written.
 */
export async function convertGGUF(
  ggufPath: string,
  outDir: string,
  { force = false, bits: asked, groupSize = 64 }: ConvertOptions = {},
): Promise<ConvertResult> {
  const bits = asked ?? 4;
  const target = resolve(outDir);
  // --force replaces a directory of an earlier conversion, never a file given by mistake.
  if (existsSync(target) && !statSync(target).isDirectory()) throw new Error(`${target} exists and is not a directory`);
  if (existsSync(target) && readdirSync(target).length > 0 && !force) {
    throw new Error(`${target} exists and is not empty (use --force to replace it)`);
  }
  if (bits !== 0 && ![2, 3, 4, 5, 6, 8].includes(bits))
    throw new Error(`--bits must be 2, 3, 4, 5, 6 or 8 (or 0 to keep 16-bit weights) (got ${bits})`);
  if (![32, 64, 128].includes(groupSize)) throw new Error(`--group-size must be 32, 64 or 128 (got ${groupSize})`);
  // A file that cannot be read is a ModelLoadError, as at load: the CLI tells it from a bad
  // option or an output it cannot write. The header check refuses a corrupt file before MLX reads it.
  const header = withModelErrors(ggufPath, () => readGGUFHeader(ggufPath));
  refuseSplitGGUF(header, ggufPath);
  const gguf = withModelErrors(ggufPath, () =>
    ggufModel(loadGGUFTensors(ggufPath, header, undefined, { halfGroups: false })),
  );
  try {
    if (bits > 0) await requantize(gguf, header, { bits, groupSize, floats: asked !== undefined });
    if (gguf.tensors.has("rope_freqs")) ropeFreqsAsConfig(gguf);
    // Known from the shapes before a tensor is computed: a disk that cannot hold the weights
    // fails the conversion now, with nothing written, not once it is full.
    const bytes = [...gguf.tensors.values()].reduce((n, t) => n + t.nbytes, 0);
    requireFreeSpace(dirname(target), bytes, `the conversion of ${ggufPath}`);
    for (const t of gguf.tensors.values()) {
      mx.evaluate(t);
      await nextTurn();
    }
    const { tokenizerJson, tokenizerConfig, eosTokenIds } = cachedTokenizerFiles(
      ggufPath,
      gguf.metadata as Record<string, unknown>,
    );
    // Every end-of-generation id (eos, eot, eom), so generation stops where the GGUF says.
    const generationConfig = {
      bos_token_id: gguf.config.bos_token_id,
      eos_token_id: eosTokenIds.length === 1 ? eosTokenIds[0] : eosTokenIds,
    };

    // Write everything into a sibling folder first and rename it into place, so an
    // interrupted conversion never leaves a directory that looks complete.
    const staging = `${target}.partial-${process.pid}`;
    let result: ConvertResult;
    try {
      mkdirSync(dirname(target), { recursive: true });
      rmSync(staging, { recursive: true, force: true });
      mkdirSync(staging);
      mx.saveSafetensors(join(staging, "model.safetensors"), gguf.tensors, { format: "mlx" });
      const json = (name: string, value: unknown) =>
        writeFileSync(join(staging, name), `${JSON.stringify(value, null, 2)}\n`);
      json("config.json", gguf.config);
      json("tokenizer.json", tokenizerJson);
      json("tokenizer_config.json", tokenizerConfig);
      json("generation_config.json", generationConfig);
      const pooling = sentenceTransformersPoolingFiles(header.metadata, Number(gguf.config.hidden_size));
      for (const [name, value] of Object.entries(pooling ?? {})) {
        mkdirSync(dirname(join(staging, name)), { recursive: true });
        json(name, value);
      }
      // Freed before the check below reads the conversion back, so the model is held once.
      result = {
        dir: target,
        tensors: gguf.tensors.size,
        bytes,
      };
      for (const t of gguf.tensors.values()) t.free();
      gguf.tensors.clear();
      refuseUnloadable(staging, ggufPath);
      rmSync(target, { recursive: true, force: true });
      renameSync(staging, target);
    } catch (error) {
      // (existsSync: on a path through a file, rmSync fails even with `force`.)
      if (existsSync(staging)) rmSync(staging, { recursive: true, force: true });
      // One line naming the output directory, not the staging folder beside it.
      const weights = `cannot save ${join(staging, "model.safetensors")}: `;
      if ((error as NodeJS.ErrnoException).code)
        throw new Error(`cannot write ${target}: ${writeErrorReason(error)}`, { cause: error });
      if ((error as Error).message.startsWith(weights))
        throw new Error(`cannot write ${target}: ${(error as Error).message.slice(weights.length)}`, { cause: error });
      throw error;
    }
    return result;
  } finally {
    for (const t of gguf.tensors.values()) t.free();
  }
}

/**
 * A conversion the loader refuses (a GGUF lacking a tensor, or holding one of the wrong shape:
 * nothing reads them before the model is built) must not become a directory that looks complete,
 * nor a stored model: it is loaded once, as `mlx run -m` and mlx-lm would, and refused in its
 * words, named by the GGUF (the folder it names is removed).
 */
function refuseUnloadable(dir: string, ggufPath: string): void {
  try {
    loadModel(dir).free();
  } catch (error) {
    const reason = (error as Error).message.replaceAll(`${dir}/`, "").replaceAll(dir, "the conversion");
    throw new Error(`${ggufPath} does not convert into a model that loads: ${reason}`, { cause: error });
  }
}

/**
 * A GGUF of a Llama 3 model holds its RoPE scaling as rope_freqs, a period per frequency (the
 * loader's form of llama.cpp's divisors), where config.json gives the parameters mlx-lm computes
 * them from: those are written in their place, or the conversion refused when none give them.
 */
function ropeFreqsAsConfig(gguf: GGUFModel): void {
  const periods = gguf.tensors.get("rope_freqs")!;
  const values = mx.scope(() => mx.astype(periods, mx.Dtype.float32).toArray());
  const scaling = llama3RopeScaling(values, Number(gguf.config.head_dim), Number(gguf.config.rope_theta));
  if (!scaling)
    throw new Error(
      "this GGUF's precomputed rope frequencies (rope_freqs) are not Llama 3's scaling, the one config.json can express; run it as a .gguf instead",
    );
  gguf.config.rope_scaling = scaling;
  periods.free();
  gguf.tensors.delete("rope_freqs");
}

/** Llama 3's usual original context: its parameters are known only up to a common scale of it and both factors. */
const LLAMA3_CONTEXT = 8192;

/**
 * The rope_scaling (rope_type llama3) whose periods, as mlx-lm computes them, are `periods` for
 * a head of `dims` and rope base `base`; undefined when none is. Periods between the unscaled
 * and the fully scaled ones lie on a line (in the context over the wavelength) that gives the
 * two frequency factors; at least two are needed.
 */
export function llama3RopeScaling(periods: number[], dims: number, base: number): Record<string, unknown> | undefined {
  const unscaled = periods.map((_, i) => base ** ((2 * i) / dims));
  const divisors = periods.map((p, i) => p / unscaled[i]!);
  const factor = Math.max(...divisors);
  const close = (a: number, b: number) => Math.abs(a - b) <= 1e-3 * Math.abs(b);
  // Each blended divisor is 1 / ((1 − smooth) / factor + smooth), smooth = (context / wavelength − low) / (high − low).
  const blended = divisors
    .map((d, i) => ({ x: LLAMA3_CONTEXT / (2 * Math.PI * unscaled[i]!), d }))
    .filter(({ d }) => !close(d, 1) && !close(d, factor))
    .map(({ x, d }) => ({ x, smooth: (1 / d - 1 / factor) / (1 - 1 / factor) }));
  if (blended.length < 2) return undefined;
  const [first, last] = [blended[0]!, blended.at(-1)!];
  const slope = (last.smooth - first.smooth) / (last.x - first.x);
  const low = first.x - first.smooth / slope;
  // To six digits, as config.json writes them (the file's float32 periods give no more).
  const rounded = (value: number) => Number(value.toPrecision(6));
  const scaling = {
    rope_type: "llama3",
    factor: rounded(factor),
    low_freq_factor: rounded(low),
    high_freq_factor: rounded(low + 1 / slope),
    original_max_position_embeddings: LLAMA3_CONTEXT,
  };
  return llama3Periods(scaling, unscaled).every((p, i) => close(p, periods[i]!)) ? scaling : undefined;
}

/** mlx-lm's Llama 3 periods (rope_utils.Llama3RoPE), from the unscaled ones. */
function llama3Periods(
  s: { factor: number; low_freq_factor: number; high_freq_factor: number; original_max_position_embeddings: number },
  unscaled: number[],
): number[] {
  const [lowWavelength, highWavelength] = [
    s.original_max_position_embeddings / s.low_freq_factor,
    s.original_max_position_embeddings / s.high_freq_factor,
  ];
  return unscaled.map((period) => {
    const wavelength = 2 * Math.PI * period;
    if (wavelength < highWavelength) return period;
    if (wavelength > lowWavelength) return period * s.factor;
    const smooth =
      (s.original_max_position_embeddings / wavelength - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
    return period / ((1 - smooth) / s.factor + smooth);
  });
}

/**
 * Quantizes the matrices MLX had to dequantize (their GGUF type is one it cannot keep), and those
 * held at 8 bits wider than their 5-bit codes, so the directory is about as small as the GGUF and
 * runs on quantized matmuls. Layers the GGUF kept quantized at their own width (Q8_0, Q4_0, Q4_1,
 * Q4_K, MXFP4) stay as they are.
 */
/** GGUF tensor types that hold plain floats. */
const FLOAT_TYPES = new Set(["F16", "BF16", "F32"]);

async function requantize(
  gguf: GGUFModel,
  header: GGUFHeader,
  q: { bits: number; groupSize: number; floats: boolean },
) {
  const arch = String(gguf.metadata["general.architecture"]);
  const groupSizes = new Map<string, number>();
  for (const info of header.tensors) {
    // Matrices, and the experts' stacks of them; float ones when asked.
    const float = FLOAT_TYPES.has(info.type);
    const ownWidth = keptQuantizedTypes.has(info.type) && !widenedTypes.has(info.type) && !(float && q.floats);
    if (ownWidth || info.dims.length < 2 || info.dims.length > 3) continue;
    const name = hfTensorName(info.name, arch);
    const stored = name && gguf.tensors.get(name);
    if (!name || !stored || !name.endsWith(".weight")) continue;
    const prefix = name.slice(0, -".weight".length);
    const [scales, biases] = [gguf.tensors.get(`${prefix}.scales`), gguf.tensors.get(`${prefix}.biases`)];
    // A widened layer's inputs: its groups of 32.
    const inputs = scales ? scales.shape.at(-1)! * 32 : stored.shape.at(-1)!;
    const groupSize = inputs % q.groupSize === 0 ? q.groupSize : inputs % 32 === 0 ? 32 : undefined;
    if (!groupSize) continue; // no group size fits: the layer stays as it was read
    // A widened layer is 8-bit in groups of 32 already, exactly: quantizing it so again would only round it.
    if (scales && q.bits === 8 && groupSize === 32) continue;
    const weight =
      scales && biases
        ? mx.dequantize(stored, scales, biases, { groupSize: 32, bits: 8, mode: "affine" }, mx.Dtype.float16)
        : stored;
    const quantized = mx.quantize(weight, { groupSize, bits: q.bits, mode: "affine" });
    mx.evaluate(quantized.weight, quantized.scales, quantized.biases!);
    gguf.tensors.set(name, mx.keep(quantized.weight));
    gguf.tensors.set(`${prefix}.scales`, mx.keep(quantized.scales));
    gguf.tensors.set(`${prefix}.biases`, mx.keep(quantized.biases!));
    for (const t of [stored, scales, biases]) t?.free();
    if (weight !== stored) weight.free();
    groupSizes.set(prefix, groupSize);
    await nextTurn();
  }
  if (groupSizes.size > 0) Object.assign(gguf.config, quantizationOf(gguf.tensors, groupSizes));
}
