// LoRA and DoRA adapters as mlx-lm trains them (`mlx_lm.lora`): a directory with
// adapter_config.json and adapters.safetensors, whose tensors `<layer>.lora_a` [in, r],
// `<layer>.lora_b` [r, out] (and DoRA's magnitude `<layer>.m` [out]) adapt the model's linear
// layers. The base weights are never changed: each adapted layer adds the low-rank product
// y + scale·(x·A)·B (mlx-lm's LoRALinear), scaled per output by m/‖W + scale·Bᵀ·Aᵀ‖ for DoRA.
// Many adapters can serve one base at once: a forward pass names each batch row's adapter, and
// the rows' products run as one gathered matmul over the adapters' stacked matrices.
import { existsSync, readFileSync, statSync } from "node:fs";
import { join } from "node:path";
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { AdapterError } from "../errors";
import type { ShardCut } from "./shard";
import { stageHolds, tensorPart, type Stage } from "./stage";

/** A linear layer adapters may adapt: its shape, and its weight as a dense matrix (for DoRA and fusing). */
export interface AdaptableLayer {
  inputs: number;
  outputs: number;
  /** The weight [out, in] in floating point (dequantized when stored quantized); call it inside mx.scope. */
  dense(): MxArray;
}

/** One layer's low-rank update. */
export interface LowRank {
  a: MxArray;
  b: MxArray;
  /** DoRA: m/‖W + scale·Bᵀ·Aᵀ‖ per output (float32), fixed at inference. */
  magnitude?: MxArray;
}

export type AdapterKind = "lora" | "dora";

let nextAdapterId = 1;

export class Adapter {
  readonly id = nextAdapterId++;

  constructor(
    readonly path: string,
    readonly kind: AdapterKind,
    readonly scale: number,
    readonly layers: Map<string, LowRank>,
    /** The base model's layers it was loaded for. */
    readonly base: LoraLayers,
  ) {}

  /** Bytes its matrices take (what one more adapter costs next to the shared base). */
  get bytes(): number {
    let n = 0;
    for (const l of this.layers.values()) n += l.a.nbytes + l.b.nbytes + (l.magnitude?.nbytes ?? 0);
    return n;
  }

  free(): void {
    this.base.mirror?.adapterFreed(this);
    this.base.forget(this);
    for (const l of this.layers.values()) for (const t of [l.a, l.b, l.magnitude]) t?.free();
    this.layers.clear();
  }
}

/** Per-combination stacks of the adapters' matrices for one layer, slot 0 being "no adapter". */
interface Stack {
  a: MxArray; // [n + 1, in, r]
  b: MxArray; // [n + 1, r, out]
  scales: MxArray; // [n + 1]
  magnitudes?: MxArray; // [n + 1, out]
}

type Selection =
  | { kind: "one"; adapter: Adapter }
  | { kind: "rows"; adapters: Adapter[]; slots: MxArray; key: string; rows: number; positionsApart: boolean };

/** Combinations of adapters whose stacks are kept (a server sees few distinct ones at a time). */
const KEPT_COMBINATIONS = 8;

/** The adaptable linear layers of one loaded model, and which adapters the running forward pass uses. */
/** The processes holding a split model's other layers: each loads its own layers' share of an adapter. */
export interface AdapterMirror {
  /** Whether every other process loaded its share (one whose share does not fit says no). */
  adapterLoaded(adapter: Adapter): boolean;
  adapterFreed(adapter: Adapter): void;
  /**
   * Tensor parallel: evaluates collectives every rank joins (DoRA's norms) as the split model's
   * messages are, under its watchdog, so a rank lost meanwhile cannot leave this one waiting.
   */
  evaluateTogether?(...sums: MxArray[]): void;
}

export class LoraLayers {
  readonly #layers = new Map<string, AdaptableLayer>();
  #selection?: Selection;
  /** The running forward pass's adapter per row, when it has any. */
  #rows?: (Adapter | undefined)[];
  /** The part of a split model this process holds: an adapter's tensors for other layers are left to their processes. */
  stage?: Stage;
  /** The whole model's decoder layers (with a stage): a tensor of a layer past the last is no process's. */
  layerCount?: number;
  mirror?: AdapterMirror;
  /** Under tensor parallel, what this rank holds of each projection: an adapter is cut alike. */
  cuts?: Map<string, ShardCut>;
  /** Stacks by combination (the adapters' ids in slot order), then by layer; oldest first. */
  readonly #stacks = new Map<string, Map<string, Stack>>();

  register(prefix: string, layer: AdaptableLayer): void {
    this.#layers.set(prefix, layer);
  }

  layer(prefix: string): AdaptableLayer | undefined {
    return this.#layers.get(prefix);
  }

  get prefixes(): string[] {
    return [...this.#layers.keys()];
  }

  /**
   * Runs `forward` (one forward pass over a batch) with row b adapted by `rows[b]`, or by
   * nothing where that is undefined. A batch of one row runs its products directly.
   * `positionsApart`: each position's products are computed on their own, as a decode step of
   * that one position computes them (a speculative step's positions then give the logits that
   * decoding them one at a time gives).
   */
  run<T>(rows: (Adapter | undefined)[], forward: () => T, o: { positionsApart?: boolean } = {}): T {
    const distinct = [...new Set(rows.filter((a) => a !== undefined))];
    if (distinct.length === 0) return forward();
    for (const a of distinct) if (a.base !== this) throw new AdapterError(`${a.path} was loaded for another model`);
    // Several rows (or positions apart) go through the stacks even when they share one adapter:
    // a product over several rows at once (one matrix product) rounds otherwise than one row's
    // (a vector product), and a greedy answer would change with the batch it is in.
    if (rows.length === 1 && !o.positionsApart) this.#selection = { kind: "one", adapter: distinct[0]! };
    else {
      const slots = mx.array(Int32Array.from(rows, (a) => (a ? distinct.indexOf(a) + 1 : 0)));
      this.#selection = {
        kind: "rows",
        adapters: distinct,
        slots,
        key: distinct.map((a) => a.id).join(","),
        rows: rows.length,
        positionsApart: o.positionsApart === true,
      };
    }
    this.#rows = rows;
    try {
      return forward();
    } finally {
      if (this.#selection?.kind === "rows") this.#selection.slots.free();
      this.#selection = this.#rows = undefined;
    }
  }

  /** Whether the running forward pass adapts any layer (fused ops that skip `apply` must not run). */
  get adapting(): boolean {
    return this.#selection !== undefined;
  }

  /** Each row's adapter id in the running forward pass (0: none); undefined when it uses none. */
  get selectedIds(): number[] | undefined {
    return this.#rows?.map((a) => a?.id ?? 0);
  }

  /** Whether the running forward pass adapts its positions each on its own (run's positionsApart). */
  get positionsApart(): boolean {
    return this.#selection?.kind === "rows" && this.#selection.positionsApart;
  }

  /** `project`, with the selected adapters' update of layer `prefix` added. */
  wrap(prefix: string, project: (x: MxArray) => MxArray): (x: MxArray) => MxArray {
    return (x) => this.apply(prefix, x, project(x));
  }

  /** y (the base layer's output for x, without its bias) plus the selected adapters' update. */
  apply(prefix: string, x: MxArray, y: MxArray): MxArray {
    const selection = this.#selection;
    if (!selection) return y;
    if (selection.kind === "one") {
      const { adapter } = selection;
      const layer = adapter.layers.get(prefix);
      if (!layer) return y;
      // As mlx-lm's LoRALinear: the product in the adapter's precision, cast back to x's. A
      // float32 adapter (any on the CPU) takes x as float32, as a batch's stacks take it.
      const input = layer.a.dtype === mx.Dtype.float32 ? asFloat32(x) : x;
      const z = mx.multiply(mx.matmul(mx.matmul(input, layer.a), layer.b), adapter.scale);
      const out = mx.add(y, mx.astype(z, y.dtype));
      return layer.magnitude ? mx.multiply(mx.astype(layer.magnitude, y.dtype), out) : out;
    }
    const stack = this.#stack(selection, prefix);
    if (!stack) return y;
    // Each row's products through its own adapter's matrices (slot 0: zeros, so y is unchanged).
    const { slots, rows } = selection;
    const [, positions, inputs] = x.shape as [number, number, number];
    // Positions apart: each its own one-position product, through its row's adapter.
    const apart = selection.positionsApart && positions > 1;
    const each = apart ? mx.repeat(slots, positions, 0) : slots;
    const lhs = apart ? mx.reshape(x, [rows * positions, 1, inputs]) : x;
    const h = mx.gatherMm(mx.astype(lhs, stack.a.dtype), stack.a, { rhsIndices: each });
    const z = mx.gatherMm(h, stack.b, { rhsIndices: each });
    const scaled = mx.multiply(z, mx.reshape(mx.take(stack.scales, each, 0), [-1, 1, 1]));
    const update = apart ? mx.reshape(scaled, [rows, positions, -1]) : scaled;
    const out = mx.add(y, mx.astype(update, y.dtype));
    if (!stack.magnitudes) return out;
    const magnitudes = mx.reshape(mx.take(stack.magnitudes, slots, 0), [rows, 1, -1]);
    return mx.multiply(mx.astype(magnitudes, y.dtype), out);
  }

  /** Drops what was kept for combinations with `adapter` (it is being unloaded). */
  forget(adapter: Adapter): void {
    for (const [key, stacks] of this.#stacks) {
      if (!key.split(",").includes(String(adapter.id))) continue;
      freeStacks(stacks);
      this.#stacks.delete(key);
    }
  }

  #stack(selection: Selection & { kind: "rows" }, prefix: string): Stack | undefined {
    let stacks = this.#stacks.get(selection.key);
    if (stacks) {
      // Most recently used last.
      this.#stacks.delete(selection.key);
      this.#stacks.set(selection.key, stacks);
    } else {
      if (this.#stacks.size >= KEPT_COMBINATIONS) {
        const [oldest, old] = this.#stacks.entries().next().value!;
        freeStacks(old);
        this.#stacks.delete(oldest);
      }
      stacks = new Map();
      this.#stacks.set(selection.key, stacks);
    }
    if (stacks.has(prefix)) return stacks.get(prefix);
    const stack = buildStack(selection.adapters, prefix, this.#layers.get(prefix)!);
    if (stack) stacks.set(prefix, stack);
    return stack;
  }
}

function freeStacks(stacks: Map<string, Stack>): void {
  for (const s of stacks.values()) for (const t of [s.a, s.b, s.scales, s.magnitudes]) t?.free();
}

/**
 * The matrices of `adapters` for one layer stacked behind a zero slot, their ranks padded with
 * zeros to the largest (zero rows and columns add nothing), in the widest of their dtypes; in
 * float32 on the CPU, whose gather_mm multiplies nothing else (a half-precision adapter batched
 * with another would fail the forward pass).
 */
function buildStack(adapters: Adapter[], prefix: string, layer: AdaptableLayer): Stack | undefined {
  const parts = adapters.map((a) => a.layers.get(prefix));
  if (parts.every((p) => p === undefined)) return undefined;
  const rank = Math.max(...parts.map((p) => p?.a.shape[1] ?? 0));
  const dtype =
    mx.defaultDeviceIsCpu() || parts.some((p) => p && p.a.dtype === mx.Dtype.float32)
      ? mx.Dtype.float32
      : parts.find(Boolean)!.a.dtype;
  const { inputs, outputs } = layer;
  const stack = mx.scope(() => {
    const padded = (m: MxArray | undefined, rows: number, cols: number, rankAxis: 0 | 1) => {
      if (!m) return mx.zeros([rows, cols], dtype);
      const missing = rank - m.shape[rankAxis]!;
      const cast = mx.astype(m, dtype);
      if (missing === 0) return cast;
      const fill = mx.zeros(rankAxis === 1 ? [rows, missing] : [missing, cols], dtype);
      return mx.concatenate([cast, fill], rankAxis);
    };
    const a = mx.stack([mx.zeros([inputs, rank], dtype), ...parts.map((p) => padded(p?.a, inputs, rank, 1))]);
    const b = mx.stack([mx.zeros([rank, outputs], dtype), ...parts.map((p) => padded(p?.b, rank, outputs, 0))]);
    const scales = mx.array([0, ...adapters.map((a) => a.scale)], [adapters.length + 1], mx.Dtype.float32);
    const ones = mx.ones([outputs], mx.Dtype.float32);
    const magnitudes = parts.some((p) => p?.magnitude)
      ? mx.stack([ones, ...parts.map((p) => p?.magnitude ?? ones)])
      : undefined;
    const kept = [a, b, scales, magnitudes].filter((t) => t !== undefined);
    mx.evaluate(...kept);
    for (const t of kept) mx.keep(t);
    return { a, b, scales, magnitudes };
  });
  return stack;
}

/**
 * What can be checked of an adapter directory without its model: that it is one, its
 * adapter_config.json, and that its adapters.safetensors is there (serve checks this at start).
 */
export function readAdapterDirectory(dir: string): AdapterConfig & { file: string } {
  if (!existsSync(dir)) throw new AdapterError(`adapter directory not found: ${dir}`);
  if (!statSync(dir).isDirectory())
    throw new AdapterError(
      `${dir} is a file, not an adapter directory: give the directory that holds adapter_config.json and adapters.safetensors`,
    );
  const config = readConfig(dir);
  const file = join(dir, "adapters.safetensors");
  if (!existsSync(file)) throw new AdapterError(`${dir} has no adapters.safetensors`);
  return { ...config, file };
}

/** What adapter_config.json says: the kind, the scale, and which layers mlx-lm adapts (see adapts). */
interface AdapterConfig {
  kind: AdapterKind;
  scale: number;
  /** num_layers: the last this many decoder layers (all of them when 0 or less). */
  numLayers?: number;
  /** lora_parameters.keys: the layers' paths inside a decoder layer ("self_attn.q_proj"), or in the model. */
  keys?: string[];
}

function readConfig(dir: string): AdapterConfig {
  const file = join(dir, "adapter_config.json");
  if (!existsSync(file))
    throw new AdapterError(`${dir} has no adapter_config.json (expected an mlx-lm adapter directory)`);
  let config: Record<string, unknown>;
  try {
    config = JSON.parse(readFileSync(file, "utf8"));
  } catch (error) {
    throw new AdapterError(`cannot read ${file}: ${(error as Error).message}`);
  }
  if (!config || typeof config !== "object" || Array.isArray(config))
    throw new AdapterError(`${file} is not a JSON object (expected mlx-lm's adapter_config.json)`);
  // Hugging Face PEFT's adapters (adapter_model.safetensors, lora_A/lora_B transposed, scale from
  // lora_alpha) are another format: named as such, not as an mlx-lm config lacking its scale.
  if (config.peft_type !== undefined)
    throw new AdapterError(
      `${file} is a Hugging Face PEFT adapter (peft_type ${JSON.stringify(config.peft_type)}); adapters here are mlx-lm's (mlx_lm.lora's output): merge it into its base with PEFT's merge_and_unload and load the result as a model`,
    );
  // mlx-lm before fine_tune_type (0.18 and older) wrote DoRA as use_dora: true.
  const type = config.fine_tune_type ?? (config.use_dora === true ? "dora" : "lora");
  // mlx-lm's full fine-tune saves the trained layers' whole weights there, not a model directory.
  if (type === "full")
    throw new AdapterError(
      `${dir} is a full fine-tune (fine_tune_type "full"): its adapters.safetensors replaces weights rather than adapting them; merge it with mlx_lm.fuse and load the result as a model`,
    );
  if (type !== "lora" && type !== "dora")
    throw new AdapterError(`${file}: fine_tune_type must be "lora" or "dora" (got ${JSON.stringify(type)})`);
  const parameters = (config.lora_parameters ?? {}) as Record<string, unknown>;
  const scale = parameters.scale;
  if (typeof scale !== "number" || !Number.isFinite(scale)) {
    const hint = "alpha" in parameters ? " (mlx-lm names it 'scale', not 'alpha')" : "";
    throw new AdapterError(`${file}: lora_parameters.scale must be a number${hint}`);
  }
  // mlx-lm before 0.19 named it lora_layers.
  const numLayers = config.num_layers ?? config.lora_layers;
  if (numLayers !== undefined && !Number.isInteger(numLayers))
    throw new AdapterError(`${file}: num_layers must be a whole number (got ${JSON.stringify(numLayers)})`);
  const keys = parameters.keys ?? undefined;
  if (keys !== undefined && !(Array.isArray(keys) && keys.every((k) => typeof k === "string")))
    throw new AdapterError(`${file}: lora_parameters.keys must be a list of layer names (got ${JSON.stringify(keys)})`);
  return { kind: type, scale, numLayers: numLayers as number | undefined, keys };
}

/**
 * Whether mlx-lm makes the layer `prefix` a LoRA layer under `config` (linear_to_lora_layers):
 * one of the last num_layers decoder layers whose path inside it is one of the keys, or a layer
 * of the model named in full by a key. A field the config lacks (an older or hand-written one)
 * limits nothing.
 */
function adapts(prefix: string, { numLayers, keys }: AdapterConfig, layerCount: number | undefined): boolean {
  if (keys?.includes(prefix)) return true;
  const layer = tensorPart(`${prefix}.`);
  if (typeof layer !== "number") return keys === undefined;
  // model.layers[-max(num_layers, 0):]: every layer for 0 or less.
  if (numLayers !== undefined && numLayers > 0 && layerCount !== undefined && layer < layerCount - numLayers)
    return false;
  return keys === undefined || keys.includes(prefix.replace(/^(?:model\.layers|blk)\.\d+\./, ""));
}

/** The layers a config adapts, in its own words. */
function configScope({ numLayers, keys }: AdapterConfig, layerCount: number | undefined): string {
  const first = layerCount !== undefined && numLayers !== undefined && numLayers > 0 ? layerCount - numLayers : 0;
  const last = (layerCount ?? 0) - 1;
  const layers =
    first <= 0 ? [] : [`num_layers ${numLayers}: layer${first === last ? ` ${last}` : `s ${first}-${last}`}`];
  return [...layers, ...(keys ? [`keys ${keys.join(", ")}`] : [])].join("; ");
}

/** The stacked experts of a mixture-of-experts layer, as mlx-lm names them (SwitchGLU). */
const EXPERTS = /\.(switch_mlp|experts)\.[^.]+$/;

/**
 * Loads the adapter in `dir` for the model whose adaptable layers are `base`: every tensor must
 * name one of its linear layers with the right shape, or the load fails naming it.
 */
export function loadAdapter(dir: string, base: LoraLayers): Adapter {
  const { file, ...config } = readAdapterDirectory(dir);
  const { kind, scale } = config;
  let tensors: Map<string, MxArray>;
  try {
    tensors = mx.loadSafetensors(file).tensors;
  } catch (error) {
    // Its message names the file already ("cannot load safetensors FILE: ...").
    throw new AdapterError((error as Error).message);
  }
  const layers = new Map<string, Partial<Record<"lora_a" | "lora_b" | "m", MxArray>>>();
  const lowRanks = new Map<string, LowRank>();
  /** DoRA's trained magnitudes (this rank's share), until the factors are computed. */
  const trained = new Map<string, MxArray | undefined>();
  try {
    if (tensors.size === 0) throw new AdapterError(`${file} holds no adapter tensors`);
    for (const [name, t] of tensors) {
      if (base.stage && !stageHolds(base.stage, name) && !pastLastLayer(base, name)) {
        tensors.delete(name);
        t.free();
        continue;
      }
      const dot = name.lastIndexOf(".");
      // A bare 'lora_a' names no layer: said so, rather than as a layer named 'lora_'.
      if (dot < 0)
        throw new AdapterError(
          `${file}: '${name}' names no layer (an adapter's tensors are <layer>.lora_a and <layer>.lora_b)`,
        );
      const prefix = name.slice(0, dot);
      const leaf = name.slice(dot + 1);
      if (leaf !== "lora_a" && leaf !== "lora_b" && !(leaf === "m" && kind === "dora"))
        throw new AdapterError(`${file}: '${name}' is not a ${kind === "dora" ? "DoRA" : "LoRA"} tensor`);
      if (!base.layer(prefix) && EXPERTS.test(prefix))
        throw new AdapterError(
          `${file}: '${name}' adapts a mixture-of-experts layer's experts (mlx-lm's LoRASwitchLinear), which is not supported yet: train it with lora_parameters.keys leaving the experts out`,
        );
      if (!base.layer(prefix))
        throw new AdapterError(`${file}: '${name}' names no linear layer this model can adapt ('${prefix}')`);
      // mlx-lm refuses it too ("not an adapter parameter in the model"): it makes LoRA layers of
      // those alone, and a tensor of another was not trained with them (a config edited since, a
      // file of another training); applying it would change the model beyond what was trained.
      if (!adapts(prefix, config, base.layerCount))
        throw new AdapterError(
          `${file}: '${name}' adapts a layer that adapter_config.json leaves out (${configScope(config, base.layerCount)}), as mlx-lm refuses it`,
        );
      // Integers would be multiplied as integers: an update rounded to nothing, without a word.
      if (!mx.isFloating(t.dtype))
        throw new AdapterError(`${file}: '${name}' holds ${t.dtypeName} values, but an adapter's are floating point`);
      const entry = layers.get(prefix) ?? {};
      entry[leaf] = t;
      layers.set(prefix, entry);
    }
    for (const [prefix, parts] of layers) {
      const layer = base.layer(prefix)!;
      const { lora_a: a, lora_b: b, m } = parts;
      if (!a || !b) throw new AdapterError(`${file}: '${prefix}' needs both lora_a and lora_b`);
      // Under tensor parallel, checked against the whole projection, then cut to this rank's share.
      const cut = base.cuts?.get(prefix);
      const inputs = cut?.side === "inputs" ? cut.of : layer.inputs;
      const outputs = cut?.side === "outputs" ? cut.of : layer.outputs;
      const rank = a.shape[1];
      const expected = `lora_a [${inputs}, r], lora_b [r, ${outputs}]`;
      if (a.ndim !== 2 || b.ndim !== 2 || a.shape[0] !== inputs || b.shape[0] !== rank || b.shape[1] !== outputs)
        throw new AdapterError(
          `${file}: '${prefix}' has lora_a [${a.shape}] and lora_b [${b.shape}], but this model needs ${expected}`,
        );
      if (m && (m.ndim !== 1 || m.shape[0] !== outputs))
        throw new AdapterError(`${file}: '${prefix}.m' has shape [${m.shape}], but this model needs [${outputs}]`);
      // A training that diverged (loss nan) still saves its matrices: every answer would be noise.
      for (const [leaf, t] of Object.entries(parts))
        if (!allFinite(t))
          throw new AdapterError(
            `${file}: '${prefix}.${leaf}' holds NaN or infinite values (did its training diverge?)`,
          );
      const share = cut ? shareOf({ a, b, m }, cut) : { a, b, m };
      // On the CPU a batch of adapters multiplies in float32 (gather_mm takes nothing else, see
      // buildStack): held so, a request alone gets the same bits as in a batch, where our CPU
      // kernels multiply float32 activations by half-precision matrices in another order.
      const uncast = { ...share };
      if (mx.defaultDeviceIsCpu()) for (const leaf of ["a", "b"] as const) share[leaf] = asFloat32(share[leaf]);
      mx.evaluate(share.a, share.b);
      // A share cut above is a copy of its own (the file's tensors are freed below).
      for (const leaf of ["a", "b"] as const)
        if (share[leaf] !== uncast[leaf] && uncast[leaf] !== parts[`lora_${leaf}`]) uncast[leaf].free();
      if (kind === "dora") trained.set(prefix, share.m);
      // Held for the adapter's life, even when loaded inside a scope (a rank of a split model).
      lowRanks.set(prefix, { a: mx.keep(share.a), b: mx.keep(share.b) });
    }
    // What was cut leaves only its share behind.
    const held = new Set([...[...lowRanks.values()].flatMap((l) => [l.a, l.b]), ...trained.values()]);
    for (const t of tensors.values()) if (!held.has(t)) t.free();
    tensors.clear();
    const adapter = new Adapter(dir, kind, scale, lowRanks, base);
    // The other ranks load their share now: under tensor parallel, DoRA's norms add up theirs.
    if (base.mirror && !base.mirror.adapterLoaded(adapter)) {
      adapter.free();
      throw new AdapterError(
        `${dir}: another rank of the split model could not load its layers' share (its log says why)`,
      );
    }
    if (kind === "dora") setDoraMagnitudes(adapter, trained);
    return adapter;
  } catch (error) {
    // With the shares cut so far (freeing twice is harmless).
    for (const t of tensors.values()) t.free();
    for (const l of lowRanks.values()) for (const t of [l.a, l.b]) t.free();
    for (const t of trained.values()) t?.free();
    throw error;
  }
}

/** Whether `name` is a tensor of a layer the split model does not have, which no process would check. */
function pastLastLayer(base: LoraLayers, name: string): boolean {
  const part = tensorPart(name);
  return typeof part === "number" && base.layerCount !== undefined && part >= base.layerCount;
}

/** `t` in float32 (itself when it is). */
const asFloat32 = (t: MxArray): MxArray => (t.dtype === mx.Dtype.float32 ? t : mx.astype(t, mx.Dtype.float32));

/** Whether every value of `t` is a finite number (NaN compares false). */
const allFinite = (t: MxArray): boolean => mx.scope(() => mx.all(mx.less(mx.abs(t), Infinity)).item() === 1);

/**
 * This rank's share of one layer's update under tensor parallel: for a projection cut by
 * outputs, B's (and DoRA's m's) outputs; for one cut by inputs, A's inputs (its partial
 * product then holds its share of the update before the sum over ranks). Evaluated copies.
 */
function shareOf(t: { a: MxArray; b: MxArray; m?: MxArray }, cut: ShardCut): { a: MxArray; b: MxArray; m?: MxArray } {
  const part = (x: MxArray, axis: number) =>
    mx.scope(() => {
      const from = x.shape.map((_, i) => (i === axis ? cut.start : 0));
      const to = x.shape.map((n, i) => (i === axis ? cut.end : n));
      return mx.keep(mx.multiply(mx.slice(x, from, to), mx.full([], 1, x.dtype)));
    });
  const share =
    cut.side === "outputs" ? { a: t.a, b: part(t.b, 1), m: t.m && part(t.m, 0) } : { a: part(t.a, 0), b: t.b, m: t.m };
  mx.evaluate(...[share.a, share.b, share.m].filter((x) => x !== undefined));
  return share;
}

/**
 * DoRA's per-output factor m/‖W + scale·Bᵀ·Aᵀ‖ (mlx-lm's DoRALinear), constant once trained;
 * without a trained m, m is the base weight's own row norms (mlx-lm's starting value). Under
 * tensor parallel a projection cut by inputs holds part of each row: its rows' squared norms
 * are added up over the ranks (one all_sum for all such layers), so every rank scales its
 * partial product by the whole row's factor, as one process would.
 */
function setDoraMagnitudes(adapter: Adapter, trained: Map<string, MxArray | undefined>): void {
  const { base, scale } = adapter;
  // Per layer, [2, out]: the squared row norms of the adapted weight and of the base weight.
  const squares = new Map<string, MxArray>();
  for (const [prefix, update] of adapter.layers) {
    const squared = mx.scope(() => {
      const w = base.layer(prefix)!.dense();
      const delta = mx.matmul(mx.multiply(mx.transpose(update.b), scale), mx.transpose(update.a));
      const rows = (t: MxArray) => mx.sum(mx.square(mx.astype(t, mx.Dtype.float32)), 1);
      return mx.keep(mx.stack([rows(mx.add(w, delta)), rows(w)]));
    });
    squares.set(prefix, squared);
  }
  const spread = [...squares.keys()].filter((p) => base.cuts?.get(p)?.side === "inputs").sort();
  if (spread.length > 0) {
    const summed = mx.scope(() => {
      const flat = spread.map((p) => mx.reshape(squares.get(p)!, [-1]));
      return mx.keep(mx.distributed.allSum(mx.concatenate(flat, 0)));
    });
    // Rank 0 under its watchdog; another rank loads inside a message, under its own.
    if (base.mirror?.evaluateTogether) base.mirror.evaluateTogether(summed);
    else mx.evaluate(summed);
    let at = 0;
    for (const p of spread) {
      const n = squares.get(p)!.size;
      const whole = mx.scope(() => mx.keep(mx.reshape(mx.slice(summed, [at], [at + n]), squares.get(p)!.shape)));
      squares.get(p)!.free();
      squares.set(p, whole);
      at += n;
    }
    summed.free();
  }
  for (const [prefix, squared] of squares) {
    const m = trained.get(prefix);
    const factor = mx.scope(() => {
      const norms = mx.sqrt(squared);
      const row = (i: number) => mx.reshape(mx.slice(norms, [i, 0], [i + 1, norms.shape[1]!]), [-1]);
      const magnitude = m ? mx.astype(m, mx.Dtype.float32) : row(1);
      return mx.keep(mx.divide(magnitude, row(0)));
    });
    mx.evaluate(factor);
    squared.free();
    m?.free();
    adapter.layers.get(prefix)!.magnitude = factor;
  }
}

/**
 * The layer's weight with the adapter merged in (mlx-lm's fuse): W + scale·Bᵀ·Aᵀ in W's dtype,
 * scaled per output row by DoRA's factor. The caller frees the result.
 */
export function fusedWeight(layer: AdaptableLayer, adapter: Adapter, update: LowRank): MxArray {
  return mx.scope(() => {
    const w = layer.dense();
    const delta = mx.matmul(mx.multiply(mx.transpose(update.b), adapter.scale), mx.transpose(update.a));
    const merged = mx.add(w, mx.astype(delta, w.dtype));
    const fused = update.magnitude
      ? mx.multiply(mx.astype(mx.reshape(update.magnitude, [-1, 1]), w.dtype), merged)
      : merged;
    return mx.keep(fused);
  });
}
