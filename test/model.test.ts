// The model code on tiny random weights: the KV cache must give the same logits as running
// the whole sequence at once, for every architecture, plain and quantized; and a llama GGUF's
// permuted q/k rows must come back in Hugging Face order.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import * as mx from "../src/mlx";
import { buildModel, forward, makeCaches, parseConfig, Weights, freeCaches, type KVCache } from "../src/models";
import { SlidingKVCache } from "../src/models/sliding-cache";
import { ggufModel, hfTensorName } from "../src/models/gguf";
import { llama3RopeScaling } from "../src/models/convert";
import type { MetaValue } from "../src/mlx";
import { cpSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { loadModel } from "../src/models/load";
import { modelBytes, readLayout } from "../src/models/layout";
import { neededOf } from "../src/store/model-files";
import { tinyLlamaGGUF, writeGGUF } from "./helpers/gguf-writer";
import {
  smolVocabSize,
  tinyConfig,
  tinyDims,
  tinyMoE,
  tinyWeights,
  writeTinyModel,
  type TinyOptions,
} from "./helpers/tiny-model";

// The cache's mechanics are checked to 1e-4, so in float32: a float16 cache (the default for a
// float32 model on our kernels) rounds keys that a prefill and a decode step compute a few ulps
// apart to different halves now and then, which these tiny random models amplify past that.
beforeAll(() => {
  process.env.MLX_KV_DTYPE = "float32";
});
afterAll(() => {
  delete process.env.MLX_KV_DTYPE;
});

function tinyModel(o: TinyOptions) {
  const weights = tinyWeights(o);
  return buildModel(new Weights(weights, parseConfig(tinyConfig(o))));
}

const ids = (values: number[]) => mx.array(Int32Array.from(values), [1, values.length]);
const sequence = [5, 17, 200, 3, 99, 42, 7, 150, 8, 1];

const variants: [string, TinyOptions][] = [
  ["llama", { modelType: "llama" }],
  ["llama, 4-bit", { modelType: "llama", quantize: { groupSize: 32, bits: 4 } }],
  ["llama, 8-bit, untied head", { modelType: "llama", quantize: { groupSize: 32, bits: 8 }, tied: false }],
  ["mistral", { modelType: "mistral", tied: false }],
  ["qwen2 (q/k/v bias)", { modelType: "qwen2" }],
  ["qwen3 (q/k norm)", { modelType: "qwen3" }],
  ["gemma3 (sliding window of 6, a global layer every 2)", { modelType: "gemma3_text", layers: 4 }],
  ["gemma3, 4-bit", { modelType: "gemma3_text", layers: 4, quantize: { groupSize: 32, bits: 4 } }],
  ["qwen3_moe (experts one matrix each)", { modelType: "qwen3_moe", layers: 3 }],
  ["qwen3_moe, 4-bit (experts stacked)", { modelType: "qwen3_moe", layers: 3, quantize: { groupSize: 32, bits: 4 } }],
  ["mixtral", { modelType: "mixtral", tied: false }],
  ["mixtral, 4-bit", { modelType: "mixtral", tied: false, quantize: { groupSize: 32, bits: 4 } }],
  ["phi3 (fused projections, LongRoPE)", { modelType: "phi3", tied: false }],
  [
    "gpt_oss (sinks, window of 6 every other layer, YaRN, biased experts)",
    { modelType: "gpt_oss", layers: 4, tied: false },
  ],
  ["gpt_oss, 4-bit", { modelType: "gpt_oss", layers: 4, tied: false, quantize: { groupSize: 32, bits: 4 } }],
  [
    "gpt_oss, MX FP4 experts",
    { modelType: "gpt_oss", layers: 4, tied: false, quantize: { groupSize: 32, bits: 4, mode: "mxfp4" } },
  ],
];

describe("KV cache", () => {
  for (const [name, options] of variants) {
    test(`${name}: prefill + one token at a time equals the whole sequence at once`, () => {
      const model = tinyModel(options);
      const whole = mx.scope(() => {
        const caches = makeCaches(model);
        const out = forward(model, ids(sequence), caches);
        freeCaches(caches);
        return out;
      });
      const caches = makeCaches(model);
      const rows: mx.MxArray[] = [];
      rows.push(mx.scope(() => forward(model, ids(sequence.slice(0, 4)), caches)));
      for (const t of sequence.slice(4)) rows.push(mx.scope(() => forward(model, ids([t]), caches)));
      expect(caches[0]!.offset).toBe(sequence.length);
      const stepwise = mx.scope(() => mx.concatenate(rows, 1));
      const diff = mx.scope(() => mx.max(mx.abs(mx.subtract(whole, stepwise))).item());
      // Quantized products of up to 8 rows (the steps, not the whole sequence) round their
      // activations to int16 on AVX-512 VNNI CPUs, ~1/65534 of a block's largest (README): the
      // outputs (|logit| <= ~5) then differ by up to ~2e-4, ~1.5e-3 on gemma3 (1e-5 with
      // MLX_CPU_EXACT=1). A cache that mixes up positions differs by far more.
      expect(diff).toBeLessThan(options.quantize ? 5e-3 : 1e-4);
      freeCaches(caches);
    });
  }

  test("the cache grows in steps of 256 positions and keeps earlier entries", () => {
    const model = tinyModel({});
    const caches = makeCaches(model);
    mx.scope(() => forward(model, ids(Array.from({ length: 250 }, (_, i) => i % 300)), caches));
    expect(caches[0]!.keys![0]!.shape[2]).toBe(256);
    const before = mx.scope(() => mx.slice(caches[0]!.keys![0]!, [0, 0, 0], [1, tinyDims.kvHeads, 250]).toArray());
    mx.scope(() => forward(model, ids(Array.from({ length: 10 }, (_, i) => i)), caches));
    expect(caches[0]!.keys![0]!.shape[2]).toBe(250 + 256); // trimmed to what is used, then one more step, as mlx-lm does
    expect(caches[0]!.offset).toBe(260);
    const after = mx.scope(() => mx.slice(caches[0]!.keys![0]!, [0, 0, 0], [1, tinyDims.kvHeads, 250]).toArray());
    expect(after).toEqual(before);
    freeCaches(caches);
  });

  test("a forward pass can run on a range of layers", () => {
    const model = tinyModel({ layers: 4 });
    const caches = makeCaches(model);
    const split = mx.scope(() => {
      const h = model.layers(model.embed(ids(sequence)), caches, 0, 2);
      return model.head(model.layers(h, caches, 2, 4));
    });
    const other = makeCaches(model);
    const whole = mx.scope(() => forward(model, ids(sequence), other));
    expect(mx.scope(() => mx.max(mx.abs(mx.subtract(split, whole))).item())).toBe(0);
  });
});

describe("sliding-window layers (gemma3, window 6)", () => {
  const options: TinyOptions = { modelType: "gemma3_text", layers: 4 };
  const tokens = Array.from({ length: 40 }, (_, i) => (i * 37 + 11) % 300);
  // Prefill 5 tokens, then one at a time: the logits of every position.
  const run = (model: ReturnType<typeof tinyModel>, caches: KVCache[]) => {
    const rows = [mx.scope(() => forward(model, ids(tokens.slice(0, 5)), caches))];
    for (const t of tokens.slice(5)) rows.push(mx.scope(() => forward(model, ids([t]), caches)));
    return mx.scope(() => mx.concatenate(rows, 1));
  };

  test("a cache that keeps only the window (compacted every 4 tokens) gives the logits of full caches", () => {
    const model = tinyModel(options);
    const full = run(model, makeCaches(model, { windowed: false }));
    const windowed = model.makeCaches!().map((c) =>
      c instanceof SlidingKVCache ? new SlidingKVCache(c.window, 4) : c,
    );
    const sliding = run(model, windowed);
    expect(mx.scope(() => mx.max(mx.abs(mx.subtract(full, sliding))).item())).toBeLessThan(1e-4);
    const local = windowed[0] as SlidingKVCache;
    expect(local.offset).toBe(40);
    expect(local.keys![0]!.shape[2]).toBeLessThanOrEqual(6 - 1 + 4);
    expect(local.held).toBeLessThanOrEqual(6 - 1 + 4);
    expect(windowed[1]!.keys![0]!.shape[2]).toBeGreaterThanOrEqual(40); // the global layer keeps everything
    freeCaches(windowed);
  });

  test("the window matters: a model without it answers differently past 6 tokens", () => {
    const model = tinyModel(options);
    const wide = tinyModel({ ...options, window: 64 });
    const a = run(model, makeCaches(model));
    const b = run(wide, makeCaches(wide));
    const diff = (from: number, to: number) =>
      mx.scope(() =>
        mx
          .max(mx.abs(mx.subtract(mx.slice(a, [0, from, 0], [1, to, 300]), mx.slice(b, [0, from, 0], [1, to, 300]))))
          .item(),
      );
    expect(diff(0, 6)).toBeLessThan(1e-5);
    expect(diff(6, 40)).toBeGreaterThan(1e-3);
  });

  test("taking back tokens works while the window before them is held, and says so otherwise", () => {
    const cache = new SlidingKVCache(6, 4);
    const kv = () => mx.keep(mx.zeros([1, 2, 1, 16]));
    for (let i = 0; i < 20; i++) mx.scope(() => cache.updateAndFetch(kv(), kv()));
    expect(cache.canTrim(18)).toBe(true);
    expect(cache.canTrim(10)).toBe(false);
    expect(() => cache.trim(10)).toThrow(/cannot go back to position 10/);
    cache.trim(18);
    expect(cache.offset).toBe(18);
    cache.free();
  });
});

describe("a loaded model's memory", () => {
  for (const [name, options] of [
    ["plain", {}],
    ["4-bit, untied head", { quantize: { groupSize: 32, bits: 4 }, tied: false }],
  ] as [string, TinyOptions][]) {
    test(`${name}: free() gives back everything the model took, arrays made from the weights included`, () => {
      const dir = join(mkdtempSync(join(tmpdir(), "mlx-free-")), "tiny");
      writeTinyModel(dir, options);
      const before = mx.memory.activeMemory();
      const lm = loadModel(dir);
      const caches = makeCaches(lm.model);
      mx.scope(() => mx.evaluate(forward(lm.model, ids([1, 2, 3]), caches)));
      freeCaches(caches);
      expect(mx.memory.activeMemory() - before).toBeGreaterThan(lm.weightBytes * 0.9);
      lm.free();
      expect(mx.memory.activeMemory() - before).toBeLessThan(lm.weightBytes * 0.01);
    });
  }
});

test("a GGUF that fails to load gives back the weights it read (MLX reads them at once)", () => {
  const dir = mkdtempSync(join(tmpdir(), "mlx-failed-load-"));
  try {
    const { metadata, tensors } = tinyLlamaGGUF({ hidden: 64, heads: 4, kvHeads: 2, ffn: 128, layers: 2, type: "F16" });
    const [wrongLayers, wrongArchitecture] = [join(dir, "layers.gguf"), join(dir, "architecture.gguf")];
    writeGGUF(wrongLayers, { ...metadata, "llama.block_count": 3 }, tensors);
    writeGGUF(wrongArchitecture, { ...metadata, "general.architecture": "phi3" }, tensors);
    for (const [path, error] of [
      [wrongLayers, "missing tensor model.layers.2."],
      [wrongArchitecture, "unsupported GGUF architecture 'phi3'"],
    ]) {
      mx.memory.clearCache();
      const before = mx.memory.activeMemory();
      expect(() => loadModel(path!)).toThrow(error);
      // Not left to the garbage collector, which a server's small heap may not run for long.
      expect(mx.memory.activeMemory() - before).toBeLessThan(100_000); // the weights are 6 MB
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

/** The GGUF metadata of a tiny mixture-of-experts model of llama.cpp's architecture `arch`, plus its own `keys`. */
function tinyMoEMetadata(arch: string, layers: number, keys: Record<string, MetaValue>): Record<string, MetaValue> {
  const common = {
    "attention.head_count": tinyDims.heads,
    "attention.head_count_kv": tinyDims.kvHeads,
    "attention.key_length": tinyDims.headDim,
    "attention.layer_norm_rms_epsilon": 1e-5,
    embedding_length: tinyDims.hidden,
    block_count: layers,
    expert_count: tinyMoE.experts,
    expert_used_count: 2,
    expert_feed_forward_length: tinyMoE.intermediate,
    context_length: 512,
    vocab_size: 300,
  };
  const prefixed = Object.entries({ ...common, ...keys }).map(([key, value]) => [`${arch}.${key}`, value]);
  return { "general.architecture": arch, ...Object.fromEntries(prefixed) };
}

describe("GGUF layout", () => {
  test("tensor names map to Hugging Face names", () => {
    expect(hfTensorName("blk.3.attn_q.scales")).toBe("model.layers.3.self_attn.q_proj.scales");
    expect(hfTensorName("blk.0.ffn_down.weight")).toBe("model.layers.0.mlp.down_proj.weight");
    expect(hfTensorName("token_embd.biases")).toBe("model.embed_tokens.biases");
    expect(hfTensorName("output_norm.weight")).toBe("model.norm.weight");
    expect(hfTensorName("output.weight")).toBe("lm_head.weight");
    expect(hfTensorName("blk.0.attn_q_norm.weight")).toBe("model.layers.0.self_attn.q_norm.weight");
    expect(hfTensorName("something.else")).toBeUndefined();
  });

  test("a qwen3moe GGUF: router and stacked experts by llama.cpp's names, dense layers found, the same model", () => {
    const o: TinyOptions = { modelType: "qwen3_moe", layers: 3, quantize: { groupSize: 32, bits: 4 } };
    const hf = tinyWeights(o);
    const toGGUF: Record<string, string> = {
      input_layernorm: "attn_norm",
      post_attention_layernorm: "ffn_norm",
      "self_attn.q_proj": "attn_q",
      "self_attn.k_proj": "attn_k",
      "self_attn.v_proj": "attn_v",
      "self_attn.o_proj": "attn_output",
      "self_attn.q_norm": "attn_q_norm",
      "self_attn.k_norm": "attn_k_norm",
      "mlp.gate_proj": "ffn_gate",
      "mlp.up_proj": "ffn_up",
      "mlp.down_proj": "ffn_down",
      "mlp.gate": "ffn_gate_inp",
      "mlp.switch_mlp.gate_proj": "ffn_gate_exps",
      "mlp.switch_mlp.up_proj": "ffn_up_exps",
      "mlp.switch_mlp.down_proj": "ffn_down_exps",
    };
    const tensors = new Map<string, mx.MxArray>();
    for (const [name, t] of hf) {
      const layer = /^model\.layers\.(\d+)\.(.+)\.(weight|scales|biases)$/.exec(name);
      const ggufName = layer
        ? `blk.${layer[1]}.${toGGUF[layer[2]!]}.${layer[3]}`
        : name.replace("model.embed_tokens", "token_embd").replace("model.norm", "output_norm");
      expect(hfTensorName(ggufName, "qwen3moe")).toBe(name);
      tensors.set(ggufName, mx.keep(mx.scope(() => mx.copy(t))));
    }
    const metadata = tinyMoEMetadata("qwen3moe", 3, {
      feed_forward_length: tinyDims.intermediate,
      "rope.freq_base": 10000,
    });
    const g = ggufModel({ tensors, metadata });
    expect(g.config).toMatchObject({
      model_type: "qwen3_moe",
      num_experts: 4,
      num_experts_per_tok: 2,
      mlp_only_layers: [0],
      quantization: { group_size: 32, bits: 4 },
    });
    const fromGGUF = buildModel(new Weights(g.tensors, parseConfig(g.config)));
    const reference = tinyModel(o);
    const logits = (m: ReturnType<typeof tinyModel>) =>
      mx.scope(() => forward(m, ids(sequence), makeCaches(m)).toArray());
    expect(logits(fromGGUF)).toEqual(logits(reference));
  });

  test("a gpt-oss GGUF: llama.cpp's names (sinks, router, biased experts in MXFP4), its config keys, the same model", () => {
    const o: TinyOptions = { modelType: "gpt_oss", layers: 4, tied: false };
    const hf = tinyWeights(o);
    // The experts as llama.cpp's MXFP4 tensors come out of our reader: MLX's mxfp4 words and scale bytes.
    for (let i = 0; i < 4; i++)
      for (const proj of ["gate_proj", "up_proj", "down_proj"]) {
        const name = `model.layers.${i}.mlp.experts.${proj}`;
        const q = mx.quantize(hf.get(`${name}.weight`)!, { groupSize: 32, bits: 4, mode: "mxfp4" });
        hf.get(`${name}.weight`)!.free();
        hf.set(`${name}.weight`, mx.keep(q.weight));
        hf.set(`${name}.scales`, mx.keep(q.scales));
      }
    const toGGUF: [RegExp, string][] = [
      [/^model\.embed_tokens\./, "token_embd."],
      [/^model\.norm\./, "output_norm."],
      [/^lm_head\./, "output."],
      [/^model\.layers\.(\d+)\.input_layernorm\./, "blk.$1.attn_norm."],
      [/^model\.layers\.(\d+)\.post_attention_layernorm\./, "blk.$1.post_attention_norm."],
      [/^model\.layers\.(\d+)\.self_attn\.sinks$/, "blk.$1.attn_sinks.weight"],
      [/^model\.layers\.(\d+)\.self_attn\.q_proj\./, "blk.$1.attn_q."],
      [/^model\.layers\.(\d+)\.self_attn\.k_proj\./, "blk.$1.attn_k."],
      [/^model\.layers\.(\d+)\.self_attn\.v_proj\./, "blk.$1.attn_v."],
      [/^model\.layers\.(\d+)\.self_attn\.o_proj\./, "blk.$1.attn_output."],
      [/^model\.layers\.(\d+)\.mlp\.router\./, "blk.$1.ffn_gate_inp."],
      [/^model\.layers\.(\d+)\.mlp\.experts\.gate_proj\./, "blk.$1.ffn_gate_exps."],
      [/^model\.layers\.(\d+)\.mlp\.experts\.up_proj\./, "blk.$1.ffn_up_exps."],
      [/^model\.layers\.(\d+)\.mlp\.experts\.down_proj\./, "blk.$1.ffn_down_exps."],
    ];
    const tensors = new Map<string, mx.MxArray>();
    for (const [name, t] of hf) {
      const rule = toGGUF.find(([pattern]) => pattern.test(name));
      expect(rule, name).toBeDefined();
      const ggufName = name.replace(rule![0], rule![1]);
      expect(hfTensorName(ggufName, "gpt-oss")).toBe(name);
      tensors.set(ggufName, mx.keep(mx.scope(() => mx.copy(t))));
    }
    const metadata = tinyMoEMetadata("gpt-oss", 4, {
      feed_forward_length: tinyMoE.intermediate,
      "attention.sliding_window": 6,
      "rope.freq_base": 150000,
      "rope.scaling.type": "yarn",
      "rope.scaling.factor": 32,
      "rope.scaling.original_context_length": 4096,
    });
    const g = ggufModel({ tensors, metadata });
    expect(g.config).toMatchObject({
      model_type: "gpt_oss",
      num_local_experts: tinyMoE.experts,
      intermediate_size: tinyMoE.intermediate,
      layer_types: ["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
      quantization: { group_size: 32, bits: 4, mode: "mxfp4" },
      tie_word_embeddings: false,
    });
    const fromGGUF = buildModel(new Weights(g.tensors, parseConfig(g.config)));
    const config = { ...tinyConfig(o), quantization: { group_size: 32, bits: 4, mode: "mxfp4" } };
    const reference = buildModel(new Weights(hf, parseConfig(config)));
    const logits = (m: ReturnType<typeof tinyModel>) =>
      mx.scope(() => forward(m, ids(sequence), makeCaches(m)).toArray());
    expect(logits(fromGGUF)).toEqual(logits(reference));
  });

  test("llama q/k rows permuted as llama.cpp's converter does come back in HF order, and the model matches", () => {
    const hf = tinyWeights({ modelType: "llama" });
    // llama.cpp's permutation: within each head, row (i, j) → (j, i) for i in {0,1}, j < dim/2.
    const permute = (t: mx.MxArray, heads: number) =>
      mx.keep(
        mx.scope(() => {
          const [rows, cols] = t.shape as [number, number];
          return mx.reshape(mx.transpose(mx.reshape(t, [heads, 2, rows / heads / 2, cols]), [0, 2, 1, 3]), [
            rows,
            cols,
          ]);
        }),
      );
    const toGGUF: [string, string][] = [
      ["model.embed_tokens", "token_embd"],
      ["model.norm", "output_norm"],
    ];
    for (let i = 0; i < 2; i++) {
      const p = `model.layers.${i}`;
      toGGUF.push(
        [`${p}.input_layernorm`, `blk.${i}.attn_norm`],
        [`${p}.post_attention_layernorm`, `blk.${i}.ffn_norm`],
      );
      toGGUF.push([`${p}.self_attn.q_proj`, `blk.${i}.attn_q`], [`${p}.self_attn.k_proj`, `blk.${i}.attn_k`]);
      toGGUF.push([`${p}.self_attn.v_proj`, `blk.${i}.attn_v`], [`${p}.self_attn.o_proj`, `blk.${i}.attn_output`]);
      toGGUF.push(
        [`${p}.mlp.gate_proj`, `blk.${i}.ffn_gate`],
        [`${p}.mlp.up_proj`, `blk.${i}.ffn_up`],
        [`${p}.mlp.down_proj`, `blk.${i}.ffn_down`],
      );
    }
    const tensors = new Map<string, mx.MxArray>();
    for (const [hfName, ggufName] of toGGUF) {
      let t = hf.get(`${hfName}.weight`)!;
      if (hfName.endsWith("q_proj")) t = permute(t, tinyDims.heads);
      else if (hfName.endsWith("k_proj")) t = permute(t, tinyDims.kvHeads);
      else t = mx.keep(mx.scope(() => mx.copy(t)));
      tensors.set(`${ggufName}.weight`, t);
    }
    const metadata = {
      "general.architecture": "llama",
      "llama.attention.head_count": tinyDims.heads,
      "llama.attention.head_count_kv": tinyDims.kvHeads,
      "llama.embedding_length": tinyDims.hidden,
      "llama.block_count": 2,
      "llama.feed_forward_length": tinyDims.intermediate,
      "llama.attention.layer_norm_rms_epsilon": 1e-5,
      "llama.rope.freq_base": 10000,
      "llama.context_length": 512,
      "llama.vocab_size": 300,
      "tokenizer.ggml.eos_token_id": 2,
      "general.file_type": 0,
    };
    const g = ggufModel({ tensors, metadata });
    expect(g.config.model_type).toBe("llama");
    expect(g.config.tie_word_embeddings).toBe(true);
    for (const name of ["model.layers.1.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight"]) {
      expect(mx.scope(() => mx.max(mx.abs(mx.subtract(g.tensors.get(name)!, hf.get(name)!))).item())).toBe(0);
    }
    const fromGGUF = buildModel(new Weights(g.tensors, parseConfig(g.config)));
    const fromHF = buildModel(new Weights(hf, parseConfig(tinyConfig({}))));
    const a = mx.scope(() => forward(fromGGUF, ids(sequence), makeCaches(fromGGUF)));
    const b = mx.scope(() => forward(fromHF, ids(sequence), makeCaches(fromHF)));
    expect(mx.scope(() => mx.max(mx.abs(mx.subtract(a, b))).item())).toBeLessThan(1e-5);
  });

  test("a GGUF's RoPE scaling (linear, YaRN, the older scale_linear) becomes config.json's rope_scaling", () => {
    const metadata = (extra: Record<string, MetaValue>) => ({
      "general.architecture": "qwen2",
      "qwen2.attention.head_count": tinyDims.heads,
      "qwen2.embedding_length": tinyDims.hidden,
      "qwen2.block_count": 2,
      "qwen2.feed_forward_length": tinyDims.intermediate,
      "qwen2.vocab_size": 300,
      ...extra,
    });
    const scaling = (extra: Record<string, MetaValue>) =>
      parseConfig(ggufModel({ tensors: new Map(), metadata: metadata(extra) }).config).ropeScaling;
    expect(scaling({})).toBeUndefined();
    expect(scaling({ "qwen2.rope.scaling.type": "none", "qwen2.rope.scaling.factor": 4 })).toBeUndefined();
    expect(scaling({ "qwen2.rope.scaling.type": "linear", "qwen2.rope.scaling.factor": 4 })).toMatchObject({
      type: "linear",
      factor: 4,
    });
    expect(scaling({ "qwen2.rope.scale_linear": 2 })).toMatchObject({ type: "linear", factor: 2 });
    expect(
      scaling({
        "qwen2.rope.scaling.type": "yarn",
        "qwen2.rope.scaling.factor": 4,
        "qwen2.rope.scaling.original_context_length": 32768,
        "qwen2.rope.scaling.yarn_beta_fast": 16,
      }),
    ).toMatchObject({
      type: "yarn",
      factor: 4,
      originalMaxPositionEmbeddings: 32768,
      betaFast: 16,
      betaSlow: undefined,
    });
  });

  test("a Llama 3 GGUF's rope_freqs become the llama3 rope_scaling mlx-lm computes them from (mlx convert)", () => {
    // As llama.cpp's convert_hf_to_gguf writes rope_freqs: a divisor per frequency.
    const ropeFreqs = (dims: number, base: number, s: typeof llama31) =>
      Float32Array.from({ length: dims / 2 }, (_, i) => {
        const wavelength = 2 * Math.PI * base ** ((2 * i) / dims);
        const [low, high] = [
          s.original_max_position_embeddings / s.low_freq_factor,
          s.original_max_position_embeddings / s.high_freq_factor,
        ];
        if (wavelength < high) return 1;
        if (wavelength > low) return s.factor;
        const smooth =
          (s.original_max_position_embeddings / wavelength - s.low_freq_factor) /
          (s.high_freq_factor - s.low_freq_factor);
        return 1 / ((1 - smooth) / s.factor + smooth);
      });
    const llama31 = {
      rope_type: "llama3",
      factor: 8,
      low_freq_factor: 1,
      high_freq_factor: 4,
      original_max_position_embeddings: 8192,
    };
    const llama32 = { ...llama31, factor: 32 };
    const derived = (dims: number, base: number, divisors: Float32Array) => {
      const metadata = {
        "general.architecture": "llama",
        "llama.attention.head_count": 4,
        "llama.embedding_length": 4 * dims,
        "llama.attention.key_length": dims,
        "llama.rope.freq_base": base,
        "llama.block_count": 1,
        "llama.feed_forward_length": 8 * dims,
        "llama.vocab_size": 300,
      };
      const tensors = new Map([["rope_freqs.weight", mx.array(divisors)]]);
      // ggufModel holds them as MLX's rope wants them: periods.
      const periods = ggufModel({ tensors, metadata }).tensors.get("rope_freqs")!;
      return llama3RopeScaling(
        mx.scope(() => periods.toArray()),
        dims,
        base,
      );
    };
    expect(derived(128, 500_000, ropeFreqs(128, 500_000, llama31))).toEqual(llama31); // Llama 3.1 8B
    expect(derived(64, 500_000, ropeFreqs(64, 500_000, llama32))).toEqual(llama32); // Llama 3.2 1B
    // Divisors no llama3 parameters give are not passed off as some.
    const other = ropeFreqs(128, 500_000, llama31).map((d, i) => (i % 3 === 0 ? d * 1.5 : d));
    expect(derived(128, 500_000, other)).toBeUndefined();
  });

  test("an unsupported architecture names the supported ones", () => {
    expect(() => ggufModel({ tensors: new Map(), metadata: { "general.architecture": "gpt2" } })).toThrow(
      /unsupported GGUF architecture 'gpt2' \(supported: llama/,
    );
  });

  test("a LoRA adapter or vision projector GGUF is told as one, not by a key it lacks", () => {
    const file = (type: string) => ({
      tensors: new Map(),
      metadata: { "general.architecture": "llama", "general.type": type },
    });
    expect(() => ggufModel(file("adapter"))).toThrow(
      "the file is a GGUF adapter (general.type), not a model; --adapter takes mlx-lm's adapter directories",
    );
    expect(() => ggufModel(file("mmproj"))).toThrow(/^the file is a GGUF mmproj \(general\.type\), not a model$/);
  });

  /** The metadata of a tiny llama GGUF, without its tokenizer. */
  const llamaMetadata = {
    "general.architecture": "llama",
    "llama.attention.head_count": 4,
    "llama.embedding_length": 64,
    "llama.block_count": 1,
    "llama.feed_forward_length": 128,
  };

  test("a GGUF without a tokenizer is told so, not that its vocab_size is missing", () => {
    expect(() => ggufModel({ tensors: new Map(), metadata: llamaMetadata })).toThrow(
      "GGUF metadata has no tokenizer.ggml.tokens: the file carries no tokenizer",
    );
  });

  test("a GGUF's sizes and counts are whole numbers of at least 1, of a number type, or it is told which is not", () => {
    const metadata = { ...llamaMetadata, "tokenizer.ggml.tokens": ["a", "b"] };
    for (const [key, value, message] of [
      ["llama.context_length", -5, "must be a whole number of at least 1, not -5"],
      ["llama.attention.head_count", 0, "must be a whole number of at least 1, not 0"],
      ["llama.attention.key_length", 2.5, "must be a whole number of at least 1, not 2.5"],
      ["llama.block_count", "3", 'must be a number, not "3"'],
      ["llama.rope.freq_base", [1, 2], "must be a number, not a list"],
    ] as const)
      expect(() => ggufModel({ tensors: new Map(), metadata: { ...metadata, [key]: value } })).toThrow(
        `GGUF metadata '${key}' ${message}`,
      );
    expect(ggufModel({ tensors: new Map(), metadata }).config.max_position_embeddings).toBe(4096);
  });

  test("an unsupported model_type names the supported ones", () => {
    expect(() => buildModel(new Weights(new Map(), parseConfig({ ...tinyConfig({}), model_type: "falcon" })))).toThrow(
      /unsupported model_type 'falcon' \(supported: gemma3_text, gpt_oss, llama, mistral, mixtral, phi3, qwen2, qwen3, qwen3_moe\)/,
    );
  });
});

/** The logits of `sequence` from the model directory `dir`. */
const logits = (dir: string) => {
  const lm = loadModel(dir);
  try {
    return mx.scope(() => forward(lm.model, ids(sequence), makeCaches(lm.model)).toArray());
  } finally {
    lm.free();
  }
};

describe("a config.json without tie_word_embeddings", () => {
  // mlx-lm's defaults: tied for llama, mistral and qwen2; an output layer of its own for phi3,
  // mixtral, qwen3_moe and gpt-oss (and qwen3, where mlx-lm needs the key and transformers unties).
  for (const modelType of ["phi3", "mixtral", "qwen3", "qwen3_moe", "gpt_oss"] as const)
    test(`${modelType}: its lm_head is used, as with tie_word_embeddings false`, () => {
      const dir = mkdtempSync(join(tmpdir(), "mlx-untied-"));
      try {
        writeTinyModel(dir, { modelType, tied: false, layers: 2 });
        const explicit = logits(dir);
        const configPath = join(dir, "config.json");
        const { tie_word_embeddings: _, ...config } = JSON.parse(readFileSync(configPath, "utf8"));
        writeFileSync(configPath, JSON.stringify(config));
        expect(logits(dir)).toEqual(explicit);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });

  // mlx-lm's gemma3_text ties exactly when the weights have no lm_head, whatever config.json says.
  test("gemma3_text: an lm_head in the weights is used, tie_word_embeddings true or missing", () => {
    const dir = mkdtempSync(join(tmpdir(), "mlx-untied-"));
    try {
      writeTinyModel(dir, { modelType: "gemma3_text", tied: false, layers: 2 });
      const untied = logits(dir);
      const configPath = join(dir, "config.json");
      const { tie_word_embeddings: _, ...config } = JSON.parse(readFileSync(configPath, "utf8"));
      writeFileSync(configPath, JSON.stringify({ ...config, tie_word_embeddings: true }));
      expect(logits(dir)).toEqual(untied);
      writeFileSync(configPath, JSON.stringify(config));
      expect(logits(dir)).toEqual(untied);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("llama, mistral and qwen2 tie it, as mlx-lm does", () => {
    for (const modelType of ["llama", "mistral", "qwen2"] as const) {
      const { tie_word_embeddings: _, ...config } = tinyConfig({ modelType, tied: false });
      expect(parseConfig(config).tieWordEmbeddings).toBe(true);
    }
  });
});

describe("a config.json without rope_theta, rms_norm_eps or max_position_embeddings", () => {
  // mlx-lm's ModelArgs defaults per architecture: a checkpoint that leaves them out means these.
  const expected = {
    llama: [10000, 1e-6, 4096],
    qwen2: [1_000_000, 1e-6, 32768],
    mixtral: [1_000_000, 1e-5, 4096],
    gemma3_text: [1_000_000, 1e-6, 32768],
    gpt_oss: [150_000, 1e-5, 4096],
    phi3: [10000, 1e-6, 131072],
  } as const;
  for (const [modelType, [theta, eps, context]] of Object.entries(expected))
    test(`${modelType}: ${theta}, ${eps}, ${context}, as mlx-lm takes them`, () => {
      const {
        rope_theta: _t,
        rms_norm_eps: _e,
        max_position_embeddings: _m,
        ...config
      } = tinyConfig({
        modelType: modelType as keyof typeof expected,
      });
      const parsed = parseConfig(config);
      expect([parsed.ropeTheta, parsed.rmsNormEps, parsed.maxPositionEmbeddings]).toEqual([theta, eps, context]);
    });
});

describe("a config.json's rope_scaling without a usable factor", () => {
  // Read as factor 1, the model ran unscaled without a word (mlx-lm stops on each of these).
  const cases: [Record<string, unknown>, string][] = [
    [{ type: "linear", factor: "4" }, `config.json: 'rope_scaling.factor' is not a number ("4")`],
    [
      { rope_type: "llama3", factor: 8, low_freq_factor: "1" },
      `config.json: 'rope_scaling.low_freq_factor' is not a number ("1")`,
    ],
    [{ type: "linear" }, "config.json: rope_scaling of type 'linear' needs a 'factor'"],
    [
      { rope_type: "llama3", low_freq_factor: 1, high_freq_factor: 4 },
      "config.json: rope_scaling of type 'llama3' needs a 'factor'",
    ],
    [
      { rope_type: "yarn", original_max_position_embeddings: 4096 },
      "config.json: rope_scaling of type 'yarn' needs a 'factor'",
    ],
  ];
  for (const [scaling, message] of cases)
    test(`${JSON.stringify(scaling)}: refused, naming the key`, () => {
      expect(() => parseConfig({ ...tinyConfig({}), rope_scaling: scaling })).toThrow(message);
    });

  test("a scaling that needs none (longrope), or none at all, still reads", () => {
    expect(parseConfig(tinyConfig({ modelType: "phi3" })).ropeScaling?.type).toBe("longrope");
    expect(parseConfig({ ...tinyConfig({}), rope_scaling: { rope_type: "default" } }).ropeScaling).toBeUndefined();
  });
});

describe("a config.json written by transformers 5 (rope_theta and rope_scaling in rope_parameters)", () => {
  const rewritten = (dir: string, change: (config: Record<string, unknown>) => Record<string, unknown>) => {
    const configPath = join(dir, "config.json");
    writeFileSync(configPath, JSON.stringify(change(JSON.parse(readFileSync(configPath, "utf8")))));
    return logits(dir);
  };
  const yarn = { rope_type: "yarn", factor: 4, original_max_position_embeddings: 4 };
  for (const [name, scaling] of [
    ["no scaling", undefined],
    ["YaRN", yarn],
  ] as const)
    test(`${name}: the same model as with them at the top level`, () => {
      const dir = mkdtempSync(join(tmpdir(), "mlx-rope-parameters-"));
      try {
        writeTinyModel(dir, { modelType: "qwen3", tied: false });
        const { rope_theta: _, rope_scaling: __, ...rest } = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
        const topLevel = rewritten(dir, () => ({ ...rest, rope_theta: 1_000_000, rope_scaling: scaling }));
        const nested = rewritten(dir, () => ({
          ...rest,
          rope_parameters: { rope_theta: 1_000_000, ...(scaling ?? { rope_type: "default" }) },
        }));
        expect(nested).toEqual(topLevel);
        // The base matters here: the default one answers otherwise.
        expect(rewritten(dir, () => ({ ...rest, rope_scaling: scaling }))).not.toEqual(topLevel);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
});

test("transformers 5's Gemma 3: rope_parameters per kind of layer (full_attention, sliding_attention)", () => {
  const dir = mkdtempSync(join(tmpdir(), "mlx-rope-parameters-"));
  try {
    writeTinyModel(dir, { modelType: "gemma3_text", layers: 6 });
    const configPath = join(dir, "config.json");
    const {
      rope_theta: _,
      rope_scaling: __,
      rope_local_base_freq: ___,
      ...rest
    } = JSON.parse(readFileSync(configPath, "utf8"));
    const rewritten = (config: object) => {
      writeFileSync(configPath, JSON.stringify(config));
      return logits(dir);
    };
    const scaling = { rope_type: "linear", factor: 8 };
    const topLevel = rewritten({ ...rest, rope_theta: 1_000_000, rope_scaling: scaling, rope_local_base_freq: 500 });
    const perKind = rewritten({
      ...rest,
      rope_parameters: {
        full_attention: { rope_theta: 1_000_000, ...scaling },
        sliding_attention: { rope_type: "default", rope_theta: 500 },
      },
    });
    expect(perKind).toEqual(topLevel);
    // Each value matters: the defaults answer otherwise.
    expect(rewritten({ ...rest, rope_theta: 1_000_000, rope_scaling: scaling })).not.toEqual(topLevel);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

describe("a config.json that does not describe the weights", () => {
  // tinyDims: 2 layers, hidden 64, 4 heads of 16, 2 key-value heads.
  const cases: [string, unknown, string | RegExp, TinyOptions?][] = [
    ["null as the whole file", null, "config.json is not a JSON object"],
    [
      "a vocab_size the embedding does not have",
      { vocab_size: 1000 },
      "does not match the weights: tensor model.embed_tokens.weight has shape [49152,64], but vocab_size is 1000",
    ],
    [
      "bits the quantized weights do not have",
      { quantization: { group_size: 32, bits: 8 } },
      /does not match the weights: '[\w.]+' has weight \[\d+,\d+\] and scales \[\d+,2\], which do not fit 8-bit quantization in groups of 32$/,
      { quantize: { groupSize: 32, bits: 4 } },
    ],
    [
      "a group size the quantized weights do not have",
      { quantization: { group_size: 64, bits: 4, "model.embed_tokens": { group_size: 32, bits: 4 } } },
      /does not match the weights: 'model\.(?!embed)[\w.]+' has weight \[\d+,\d+\] and scales \[\d+,\d+\], which do not fit 4-bit quantization in groups of 64$/,
      { quantize: { groupSize: 32, bits: 4 } },
    ],
    [
      "a quantization mode MLX does not have",
      { quantization: { group_size: 32, bits: 4, mode: "fp3" } },
      /: '[\w.]+' is quantized in mode 'fp3', which MLX does not have \(affine, mxfp4, nvfp4, mxfp8\)$/,
      { quantize: { groupSize: 32, bits: 4 } },
    ],
    [
      "weights packed by a Hugging Face scheme we do not read (GPTQ)",
      { quantization: undefined, quantization_config: { quant_method: "gptq", bits: 4, group_size: 32 } },
      /: quant_method 'gptq' is not a quantization we read \(MLX's own and mxfp4 are; its tensor [\w.]+ is uint32\); use an MLX-quantized or GGUF version of this model$/,
      { quantize: { groupSize: 32, bits: 4 } },
    ],
    [
      "tie_word_embeddings false, but no lm_head in the weights",
      { tie_word_embeddings: false },
      "does not match the weights: missing tensor lm_head.weight (tie_word_embeddings is false)",
    ],
    [
      "an architecture untied by default (qwen3), but no lm_head in the weights",
      { tie_word_embeddings: undefined },
      "does not match the weights: missing tensor lm_head.weight (qwen3 does not tie it unless tie_word_embeddings is true)",
      { modelType: "qwen3" },
    ],
    [
      "more layers than the weights hold",
      { num_hidden_layers: 3 },
      "does not match the weights: missing tensor model.layers.2.input_layernorm.weight (num_hidden_layers is 3)",
    ],
    [
      "fewer layers than the weights hold",
      { num_hidden_layers: 1 },
      "does not match the weights: tensor model.layers.1.input_layernorm.weight is not used (num_hidden_layers is 1)",
    ],
    [
      "a hidden size the weights do not have",
      { hidden_size: 48 },
      "does not match the weights: tensor model.norm.weight has shape [64], but hidden_size is 48",
    ],
    [
      "heads the weights do not have",
      { num_attention_heads: 2 },
      "does not match the weights: tensor model.layers.0.self_attn.q_proj.weight has shape [64,64], but num_attention_heads × head_dim (2 × 16) is 32",
    ],
    [
      "an MLP width the weights do not have",
      { intermediate_size: 96 },
      /does not match the weights: tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \[\d+,64\], but intermediate_size is 96$/,
    ],
    [
      "an MLP width the quantized weights do not have",
      { intermediate_size: 96 },
      /does not match the weights: tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \[\d+,\d+\], but intermediate_size is 96$/,
      { quantize: { groupSize: 32, bits: 4 } },
    ],
    // A bias the weights lack was left out of the product without a word: the model answered otherwise.
    [
      "attention_bias true, but no biases in the weights",
      { attention_bias: true },
      "does not match the weights: missing tensor model.layers.0.self_attn.q_proj.bias (attention_bias is true)",
    ],
    [
      "mlp_bias true, but no biases in the weights",
      { mlp_bias: true },
      "does not match the weights: missing tensor model.layers.0.mlp.gate_proj.bias (mlp_bias is true)",
    ],
    // Read as a llama its q/k norms were left aside without a word: the model answered garbage (mlx-lm refuses them).
    [
      "a qwen3's weights under model_type llama",
      { model_type: "llama" },
      "does not match the weights: tensor model.layers.0.self_attn.k_norm.weight (and 3 more) is not part of a llama model",
      { modelType: "qwen3", tied: true },
    ],
    [
      "a qwen2 without its q, k and v biases",
      { model_type: "qwen2" },
      "does not match the weights: missing tensor model.layers.0.self_attn.q_proj.bias (qwen2's q, k and v projections have biases)",
    ],
  ];
  for (const [name, change, message, options] of cases) {
    test(`${name}: one line naming the file and the problem`, () => {
      const dir = join(mkdtempSync(join(tmpdir(), "mlx-config-")), "tiny");
      writeTinyModel(dir, options);
      const configPath = join(dir, "config.json");
      const config = change && { ...JSON.parse(readFileSync(configPath, "utf8")), ...change };
      writeFileSync(configPath, JSON.stringify(config));
      const error = (() => {
        try {
          loadModel(dir).free();
        } catch (error) {
          return error as Error;
        }
      })();
      if (typeof message === "string") expect(error?.message).toContain(message);
      else expect(error?.message).toMatch(message);
      expect(error?.message).toContain(change ? configPath : dir);
      expect(error?.message.split("\n")).toHaveLength(1);
    });
  }
});

describe("weights that do not fit config.json", () => {
  // Each failed at the first token in MLX's words (matmul, rms_norm), naming neither the file nor the
  // tensor; a bias dropped from one layer was left out of its product without a word.
  const cases: [string, TinyOptions, (tensors: Map<string, mx.MxArray>) => void, string][] = [
    [
      "v_proj with too few rows",
      {},
      reshaped("model.layers.0.self_attn.v_proj.weight", [16, 64]),
      "tensor model.layers.0.self_attn.v_proj.weight has shape [16,64], but num_key_value_heads × head_dim (2 × 16) is 32",
    ],
    [
      "k_proj with too few inputs",
      {},
      reshaped("model.layers.1.self_attn.k_proj.weight", [32, 48]),
      "tensor model.layers.1.self_attn.k_proj.weight has shape [32,48] (48 inputs), but hidden_size is 64",
    ],
    [
      "a post-attention norm of another width",
      {},
      reshaped("model.layers.0.post_attention_layernorm.weight", [32]),
      "tensor model.layers.0.post_attention_layernorm.weight has shape [32], but hidden_size is 64",
    ],
    [
      "a query norm of another width",
      { modelType: "qwen3", tied: false },
      reshaped("model.layers.0.self_attn.q_norm.weight", [8]),
      "tensor model.layers.0.self_attn.q_norm.weight has shape [8], but head_dim is 16",
    ],
    [
      "an embedding of another width",
      {},
      reshaped("model.embed_tokens.weight", [smolVocabSize, 32]),
      `tensor model.embed_tokens.weight has shape [${smolVocabSize},32] (32 inputs), but hidden_size is 64`,
    ],
    [
      "an output layer of another width",
      { tied: false },
      reshaped("lm_head.weight", [smolVocabSize, 32]),
      `tensor lm_head.weight has shape [${smolVocabSize},32] (32 inputs), but hidden_size is 64`,
    ],
    [
      "an affine-quantized layer without its biases",
      { quantize: { groupSize: 32, bits: 4 } },
      (tensors) => tensors.delete("model.layers.0.mlp.up_proj.biases"),
      "missing tensor model.layers.0.mlp.up_proj.biases (an affine-quantized layer has biases beside its scales)",
    ],
    [
      "a norm weight of two dimensions",
      {},
      reshaped("model.layers.1.input_layernorm.weight", [64, 1]),
      "tensor model.layers.1.input_layernorm.weight has shape [64,1], but hidden_size is 64",
    ],
    [
      "a bias of another length than its layer's outputs",
      { modelType: "qwen2" },
      reshaped("model.layers.0.self_attn.q_proj.bias", [32]),
      "tensor model.layers.0.self_attn.q_proj.bias has shape [32], but its weight has shape [64,64]",
    ],
    [
      "a qwen2 lacking one layer's key bias",
      { modelType: "qwen2" },
      (tensors) => tensors.delete("model.layers.1.self_attn.k_proj.bias"),
      "missing tensor model.layers.1.self_attn.k_proj.bias (qwen2's q, k and v projections have biases)",
    ],
  ];
  for (const [name, options, change, message] of cases) {
    test(`${name}: one line naming config.json and the tensor`, () => {
      const root = mkdtempSync(join(tmpdir(), "mlx-weights-"));
      try {
        const dir = join(root, "tiny");
        writeTinyModel(dir, options);
        const file = join(dir, "model.safetensors");
        const { tensors } = mx.loadSafetensors(file);
        change(tensors);
        mx.evaluate(...tensors.values());
        mx.saveSafetensors(file, tensors, { format: "mlx" });
        for (const t of tensors.values()) t.free();
        expect(() => loadModel(dir).free()).toThrow(
          `${join(dir, "config.json")} does not match the weights: ${message}`,
        );
      } finally {
        rmSync(root, { recursive: true, force: true });
      }
    });
  }

  /** Replaces the tensor `name` with random values of `shape`. */
  function reshaped(name: string, shape: number[]) {
    return (tensors: Map<string, mx.MxArray>) => {
      tensors.get(name)!.free();
      tensors.set(name, mx.keep(mx.scope(() => mx.random.normal(shape, mx.Dtype.float32))));
    };
  }
});

describe("a multimodal Gemma 3 checkpoint (google/gemma-3-*-it, mlx-community's conversions)", () => {
  test("loads as its language model: text_config over Gemma 3's defaults, language_model.* weights, no vision tower", () => {
    const root = mkdtempSync(join(tmpdir(), "mlx-gemma3-vlm-"));
    try {
      const text = join(root, "text");
      writeTinyModel(text, { modelType: "gemma3_text", layers: 2, chatTemplate: "{{ messages[0]['content'] }}" });
      // The same model as the multimodal checkpoint holds it: its text settings in text_config
      // (without those that are Gemma 3's defaults), a vision tower and projector beside it, the
      // chat template in the processor's chat_template.json.
      const multimodal = join(root, "multimodal");
      mkdirSync(multimodal);
      const config = JSON.parse(readFileSync(join(text, "config.json"), "utf8"));
      const { rms_norm_eps: _, rope_local_base_freq: __, ...textConfig } = config;
      writeFileSync(
        join(multimodal, "config.json"),
        JSON.stringify({
          model_type: "gemma3",
          architectures: ["Gemma3ForConditionalGeneration"],
          text_config: { ...textConfig, model_type: "gemma3_text" },
          vision_config: { model_type: "siglip_vision_model", hidden_size: 8 },
          eos_token_id: [1, 106],
        }),
      );
      const { tensors } = mx.loadSafetensors(join(text, "model.safetensors"));
      const prefixed = new Map([...tensors].map(([name, t]) => [`language_model.${name}`, t]));
      prefixed.set("vision_tower.vision_model.embeddings.patch_embedding.weight", mx.zeros([8, 3, 2, 2]));
      prefixed.set("multi_modal_projector.mm_input_projection_weight", mx.zeros([8, 64]));
      mx.saveSafetensors(join(multimodal, "model.safetensors"), prefixed, { format: "mlx" });
      for (const t of prefixed.values()) t.free();
      cpSync(join(text, "tokenizer.json"), join(multimodal, "tokenizer.json"));
      const { chat_template, ...tokenizerConfig } = JSON.parse(
        readFileSync(join(text, "tokenizer_config.json"), "utf8"),
      );
      writeFileSync(join(multimodal, "tokenizer_config.json"), JSON.stringify(tokenizerConfig));
      writeFileSync(join(multimodal, "chat_template.json"), JSON.stringify({ chat_template }));
      const lm = loadModel(multimodal);
      try {
        expect(lm.config.modelType).toBe("gemma3_text");
        expect(lm.config.eosTokenIds).toEqual([1, 106]);
        expect(lm.tokenizer.chatTemplate).toBe(chat_template);
        expect([...lm.weights.tensors.keys()].filter((name) => !name.startsWith("model."))).toEqual([]);
      } finally {
        lm.free();
      }
      expect(logits(multimodal)).toEqual(logits(text));
    } finally {
      rmSync(root, { recursive: true, force: true });
    }
  });
});

test("a pipe given as the model is refused as one, not read (it failed with ESPIPE, or waited for a writer)", () => {
  const dir = mkdtempSync(join(tmpdir(), "mlx-pipe-"));
  try {
    const fifo = join(dir, "model.gguf");
    expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
    // As `-m <(cat model.gguf)` gives it: a writer sending GGUF's magic and more.
    const writer = Bun.spawn(["sh", "-c", `printf 'GGUF\\003\\0\\0\\0' > ${fifo}`]);
    try {
      expect(() => loadModel(fifo)).toThrow(
        `${fifo} is not a file on disk (a pipe or a device): a model is read at offsets, give its file`,
      );
    } finally {
      writer.kill();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}, 10_000);

describe("a model directory's weight files", () => {
  test("an index naming no file, or one outside the directory, is refused by name", () => {
    const dir = mkdtempSync(join(tmpdir(), "mlx-weight-index-"));
    try {
      const model = join(dir, "tiny");
      writeTinyModel(model);
      const index = join(model, "model.safetensors.index.json");
      const refusal = (weightMap: Record<string, string>) => {
        writeFileSync(index, JSON.stringify({ weight_map: weightMap }));
        return () => loadModel(model).free();
      };
      expect(refusal({})).toThrow(`${index} names no weight files`);
      // Another model's weights, beside this one.
      writeTinyModel(join(dir, "other"));
      expect(refusal({ "model.norm.weight": "../other/model.safetensors" })).toThrow(
        `${model}: model.safetensors.index.json names '../other/model.safetensors', which is not a file beside it`,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test("without an index, only model*.safetensors are read, planned and pulled: a consolidated copy beside them is not loaded too", () => {
    const dir = mkdtempSync(join(tmpdir(), "mlx-weight-files-"));
    try {
      writeTinyModel(dir);
      const alone = loadModel(dir);
      const [names, bytes] = [[...alone.weights.tensors.keys()].sort(), alone.weightBytes];
      alone.free();
      // As Mistral's repositories ship it: the same weights again, under its own names.
      const model = mx.loadSafetensors(join(dir, "model.safetensors"));
      const consolidated = new Map([...model.tensors].map(([name, t]) => [name.replace(/^model\./, ""), t]));
      mx.saveSafetensors(join(dir, "consolidated.safetensors"), consolidated);
      for (const t of model.tensors.values()) t.free();
      const beside = loadModel(dir);
      try {
        expect([[...beside.weights.tensors.keys()].sort(), beside.weightBytes]).toEqual([names, bytes]);
      } finally {
        beside.free();
      }
      // The split plan counts the same files, and a pull would fetch only those.
      expect(modelBytes(readLayout(dir))).toBe(bytes);
      expect(neededOf(readdirSync(dir))).toEqual([
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
      ]);
      expect(neededOf(["config.json", "weights.safetensors", "adapters.safetensors"])).toEqual([
        "config.json",
        "adapters.safetensors",
        "weights.safetensors",
      ]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
