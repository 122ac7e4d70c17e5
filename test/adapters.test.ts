// Adapters as users reach them: `mlx run --adapter`, a models.toml alias of a base plus an
// adapter, clear errors for a bad adapter, and `mlx serve` answering the base and two adapters
// of one loaded model at once, each request exactly as it is answered alone.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Ollama } from "ollama";
import OpenAI from "openai";
import { load } from "../src/index";
import { loadModel } from "../src/models/load";
import { loadAdapter } from "../src/models/lora";
import { resolveModelPath } from "../src/store/resolve";
import * as mx from "../src/mlx";
import type { MxArray } from "../src/mlx";
import type { RunningServer } from "../src/server/app";
import { cliRunner, mainScript } from "./helpers/cli";
import { lastLayers, writeRandomAdapter } from "./helpers/random-adapter";
import { eventually, post, serve, tinyModel } from "./helpers/serve";
import { tinyDims, tinyMoE, writeTinyModel } from "./helpers/tiny-model";

const { hidden, heads, kvHeads, headDim, intermediate } = tinyDims;
const projections: Record<string, [number, number]> = {
  "self_attn.q_proj": [hidden, heads * headDim],
  "self_attn.v_proj": [hidden, kvHeads * headDim],
  "mlp.down_proj": [intermediate, hidden],
};
const root = mkdtempSync(join(tmpdir(), "mlx-adapters-"));
const home = join(root, "home");
const adapterA = join(root, "adapter-a");
const adapterB = join(root, "adapter-b");
const adapterHalf = join(root, "adapter-half");
let model: string;

beforeAll(() => {
  model = tinyModel();
  writeRandomAdapter(adapterA, { layers: lastLayers(2, 2, projections), seed: 1, strength: 0.5 });
  writeRandomAdapter(adapterB, {
    layers: lastLayers(2, 1, projections),
    seed: 2,
    kind: "dora",
    rank: 8,
    strength: 0.5,
  });
  writeRandomAdapter(adapterHalf, { layers: lastLayers(2, 2, projections), seed: 3, strength: 0.5, dtype: "bfloat16" });
  mkdirSync(home, { recursive: true });
  writeFileSync(
    join(home, "models.toml"),
    `[models.tiny]\nsource = "${model}"\n\n[models.tiny-tuned]\nsource = "tiny"\nadapter = "${adapterA}"\n` +
      `\n[models.tiny-tuned-again]\nsource = "tiny-tuned"\n` +
      `\n[models.tiny-remote]\nprovider = "openai"\nbase_url = "http://127.0.0.1:9/v1"\nmodel = "tiny"\n`,
  );
});
afterAll(() => rmSync(root, { recursive: true, force: true }));

const maxDifference = (a: number[], b: number[]) => Math.max(...a.map((x, i) => Math.abs(x - b[i]!)));

describe("mlx run with adapters", () => {
  const mlx = cliRunner(home);
  const ids = async (args: string[]) => {
    const r = await mlx(["run", "--raw", "--max-tokens", "12", "--json", ...args, "Once upon a time"]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    return JSON.parse(r.stdout).token_ids as number[];
  };

  test("--adapter changes the answer; the alias of base + adapter gives the same as --adapter", async () => {
    const base = await ids(["-m", "tiny"]);
    const adapted = await ids(["-m", "tiny", "--adapter", adapterA]);
    expect(adapted).not.toEqual(base);
    expect(await ids(["-m", "tiny-tuned"])).toEqual(adapted);
  }, 60_000);

  test("an alias whose source is a base-plus-adapter alias keeps that adapter; two adapters in a chain are refused", async () => {
    expect(await ids(["-m", "tiny-tuned-again"])).toEqual(await ids(["-m", "tiny", "--adapter", adapterA]));
    // Two adapters in one chain: models.toml is refused, as a chain that loops is.
    const twiceHome = join(root, "twice-home");
    mkdirSync(twiceHome, { recursive: true });
    const toml = join(twiceHome, "models.toml");
    writeFileSync(
      toml,
      `${readFileSync(join(home, "models.toml"), "utf8")}\n[models.tiny-tuned-twice]\nsource = "tiny-tuned"\nadapter = "${adapterB}"\n`,
    );
    const twice = await cliRunner(twiceHome)(["run", "-m", "tiny", "hi"]);
    expect(twice.code).toBe(1);
    expect(twice.stderr).toMatch(
      new RegExp(
        `^error: ${toml}:\\d+: model 'tiny-tuned-twice': 'tiny-tuned-twice' and its source 'tiny-tuned' both have an adapter \\(one at a time\\)\n$`,
      ),
    );
    // An adapter on a remote provider's model: it was 'model not found: <models.toml's directory>/tiny-remote'.
    writeFileSync(
      toml,
      `${readFileSync(join(home, "models.toml"), "utf8")}\n[models.remote-tuned]\nsource = "tiny-remote"\nadapter = "${adapterB}"\n`,
    );
    const remote = await cliRunner(twiceHome)(["run", "-m", "remote-tuned", "hi"]);
    expect(remote.code).toBe(1);
    expect(remote.stderr).toMatch(
      new RegExp(
        `^error: ${toml}:\\d+: model 'remote-tuned': its source 'tiny-remote' is a remote model, which has no weights to load \\(a source is a pull source, a path or a local alias\\)\n$`,
      ),
    );
  }, 60_000);

  test("mlx cache-prompt refuses an alias with an adapter, whose keys and values it would not compute", async () => {
    const file = join(root, "tuned.cache");
    const r = await mlx(["cache-prompt", "-m", "tiny-tuned", file], "A document to cache.");
    expect(r).toMatchObject({
      code: 1,
      stderr: `error: model 'tiny-tuned' applies an adapter (${adapterA}), but a prompt cache holds the base model's keys and values: give its base model\n`,
    });
    expect(existsSync(file)).toBe(false);
  }, 60_000);

  test("mlx fuse stores the merged model, which answers as the base with the adapter", async () => {
    const fused = await mlx(["fuse", "tiny", "--adapter", adapterA, "tiny-fused"]);
    expect(fused.code).toBe(0);
    expect(fused.stdout.trim()).toBe(join(home, "models", "tiny-fused"));
    expect(await ids(["-m", "tiny-fused"])).toEqual(await ids(["-m", "tiny", "--adapter", adapterA]));
    // The alias knows its adapter; the same inputs again are a lookup.
    const again = await mlx(["fuse", "tiny-tuned", "tiny-fused"]);
    expect(again.code).toBe(0);
    expect(again.stdout).toBe(fused.stdout);
    // Under another name, the earlier fuse is the answer: the name asked for is said not to exist.
    const renamed = await mlx(["fuse", "tiny", "--adapter", adapterA, "tiny-fused-again"]);
    expect(renamed.stdout).toBe(fused.stdout);
    expect(renamed.stderr).toContain(
      "the same base and adapter were fused before, as tiny-fused: use that name (tiny-fused-again was not stored)",
    );
    // Pulled by name, it is there (it was an error, with a repair command of placeholders).
    expect(await mlx(["pull", "tiny-fused"])).toMatchObject({ code: 0, stdout: fused.stdout });
    // Damaged, the command that makes it again is named with its own base and adapter, and repairs it.
    const manifest = JSON.parse(readFileSync(join(home, "manifests", "tiny-fused.json"), "utf8"));
    const config = manifest.files.find((f: { name: string }) => f.name === "config.json");
    writeFileSync(join(home, "blobs", `sha256-${config.sha256}`), "short");
    const command = `mlx fuse tiny --adapter ${adapterA} tiny-fused`;
    expect(await mlx(["pull", "tiny-fused"])).toMatchObject({
      code: 1,
      stderr: `error: 'tiny-fused' was made here, not pulled; run \`${command}\` to make it again\n`,
    });
    expect((await mlx(command.split(" ").slice(1))).code).toBe(0);
    expect(await ids(["-m", "tiny-fused"])).toEqual(await ids(["-m", "tiny", "--adapter", adapterA]));
  }, 60_000);

  test("mlx embed of a base-plus-adapter alias, or with --adapter, embeds with the adapter: the fused model's vectors", async () => {
    const vectors = async (model: string | string[]) => {
      const r = await mlx(["embed", "-m", ...[model].flat(), "Once upon a time"]);
      expect(r).toMatchObject({ code: 0, stderr: "" });
      return JSON.parse(r.stdout) as number[];
    };
    const fused = await mlx(["fuse", "tiny", "--adapter", adapterA, "tiny-fused"]);
    expect(fused.code).toBe(0);
    const tuned = await vectors("tiny-tuned");
    // Before, the adapter was left out: the base model's vector.
    expect(maxDifference(tuned, await vectors("tiny"))).toBeGreaterThan(0.1);
    expect(maxDifference(tuned, await vectors(fused.stdout.trim()))).toBeLessThan(1e-4);
    // --adapter on the base, as run's (it was an unknown flag).
    expect(await vectors(["tiny", "--adapter", adapterA])).toEqual(tuned);
  }, 60_000);

  test("the library's load() of a base-plus-adapter alias answers and embeds with the adapter, as mlx run does", async () => {
    const answer = await ids(["-m", "tiny-tuned"]);
    const embedded = await mlx(["embed", "-m", "tiny-tuned", "Once upon a time"]);
    const storeBefore = process.env.MLX_HOME;
    process.env.MLX_HOME = home;
    try {
      const tuned = await load("tiny-tuned");
      try {
        const r = await tuned.generate("Once upon a time", { raw: true, maxTokens: 12, temperature: 0 });
        // Before, the alias's adapter was left out: the base model's answer and vector.
        expect(r.tokenIds).toEqual(answer);
        const [vector] = await tuned.embed(["Once upon a time"]);
        expect(maxDifference(vector!, JSON.parse(embedded.stdout))).toBeLessThan(1e-6);
      } finally {
        tuned.close();
      }
    } finally {
      process.env.MLX_HOME = storeBefore;
    }
  }, 60_000);

  test("a bad adapter is one line and a non-zero exit", async () => {
    const missing = await mlx(["run", "-m", "tiny", "--adapter", join(root, "nope"), "hi"]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr.trim()).toBe(`error: adapter directory not found: ${join(root, "nope")}`);
    const unfused = await mlx(["fuse", "tiny", "--adapter", join(root, "nope"), "never"]);
    expect(unfused).toMatchObject({ code: 1, stderr: `error: adapter directory not found: ${join(root, "nope")}\n` });
    // The adapter's file given for its directory (as PEFT's tools take it) is said to be one, not "not found".
    const weightsFile = join(adapterA, "adapters.safetensors");
    const fileError = `error: ${weightsFile} is a file, not an adapter directory: give the directory that holds adapter_config.json and adapters.safetensors\n`;
    expect(await mlx(["run", "-m", "tiny", "--adapter", weightsFile, "hi"])).toMatchObject({
      code: 1,
      stderr: fileError,
    });
    expect(await mlx(["fuse", "tiny", "--adapter", weightsFile, "never"])).toMatchObject({
      code: 1,
      stderr: fileError,
    });
    // An adapter for other shapes: the layer and both shapes are named.
    const wrong = join(root, "wrong");
    writeRandomAdapter(wrong, { layers: { "model.layers.0.self_attn.q_proj": [32, 64] }, modelLayers: 2 });
    const r = await mlx(["run", "-m", "tiny", "--adapter", wrong, "hi"]);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toContain("'model.layers.0.self_attn.q_proj' has lora_a [32,4]");
    expect(r.stderr.trim().split("\n")).toHaveLength(1);
    // Integer tensors (a botched conversion) would round the update to nothing.
    const integers = join(root, "integers");
    writeRandomAdapter(integers, { layers: { "model.layers.1.self_attn.q_proj": projections["self_attn.q_proj"]! } });
    const file = join(integers, "adapters.safetensors");
    const { tensors } = mx.loadSafetensors(file);
    const asIntegers = new Map([...tensors].map(([name, t]) => [name, mx.astype(t, mx.Dtype.int32)]));
    mx.saveSafetensors(file, asIntegers, { format: "mlx" });
    for (const t of [...tensors.values(), ...asIntegers.values()]) t.free();
    const rounded = await mlx(["run", "-m", "tiny", "--adapter", integers, "hi"]);
    expect(rounded.code).toBe(1);
    expect(rounded.stderr).toMatch(
      /^error: \S+integers\/adapters\.safetensors: 'model\.layers\.1\.self_attn\.q_proj\.lora_[ab]' holds int32 values, but an adapter's are floating point\n$/,
    );
    // mlx-lm's default keys on a mixture-of-experts model adapt its experts too (refused by name, before any shape).
    const moe = join(root, "tiny-moe");
    writeTinyModel(moe, { modelType: "qwen3_moe" });
    const experts = join(root, "experts");
    writeRandomAdapter(experts, {
      layers: { "model.layers.1.mlp.switch_mlp.gate_proj": [hidden, tinyMoE.intermediate] },
    });
    const expertsRun = await mlx(["run", "-m", moe, "--adapter", experts, "hi"]);
    expect(expertsRun.code).toBe(1);
    expect(expertsRun.stderr).toMatch(
      /^error: \S+experts\/adapters\.safetensors: 'model\.layers\.1\.mlp\.switch_mlp\.gate_proj\.lora_[ab]' adapts a mixture-of-experts layer's experts \(mlx-lm's LoRASwitchLinear\), which is not supported yet: train it with lora_parameters\.keys leaving the experts out\n$/,
    );
    // A Hugging Face PEFT adapter is named as one, not as an mlx-lm config without lora_parameters.scale.
    const peft = join(root, "peft");
    mkdirSync(peft, { recursive: true });
    cpSync(join(adapterA, "adapters.safetensors"), join(peft, "adapter_model.safetensors"));
    writeFileSync(
      join(peft, "adapter_config.json"),
      JSON.stringify({ peft_type: "LORA", r: 4, lora_alpha: 8, target_modules: ["q_proj", "v_proj"] }),
    );
    expect(await mlx(["run", "-m", "tiny", "--adapter", peft, "hi"])).toMatchObject({
      code: 1,
      stderr: `error: ${join(peft, "adapter_config.json")} is a Hugging Face PEFT adapter (peft_type "LORA"); adapters here are mlx-lm's (mlx_lm.lora's output): merge it into its base with PEFT's merge_and_unload and load the result as a model\n`,
    });
    const both = await mlx(["run", "-m", "tiny-tuned", "--adapter", adapterB, "hi"]);
    expect(both.stderr).toContain("already has an adapter");
    const notObject = join(root, "not-object");
    writeRandomAdapter(notObject, { layers: lastLayers(2, 1, projections) });
    writeFileSync(join(notObject, "adapter_config.json"), "null");
    // A tensor without its layer's name was said to name a layer 'lora_'.
    const bare = join(root, "bare");
    writeRandomAdapter(bare, { layers: lastLayers(2, 1, projections) });
    const bareFile = join(bare, "adapters.safetensors");
    const loaded = mx.loadSafetensors(bareFile).tensors;
    loaded.set("lora_a", mx.zeros([hidden, 4], mx.Dtype.float32));
    mx.saveSafetensors(bareFile, loaded, { format: "mlx" });
    for (const t of loaded.values()) t.free();
    expect(await mlx(["run", "-m", "tiny", "--adapter", bare, "hi"])).toMatchObject({
      code: 1,
      stderr: `error: ${bareFile}: 'lora_a' names no layer (an adapter's tensors are <layer>.lora_a and <layer>.lora_b)\n`,
    });
    const nulled = await mlx(["run", "-m", "tiny", "--adapter", notObject, "hi"]);
    expect(nulled).toMatchObject({
      code: 1,
      stderr: `error: ${join(notObject, "adapter_config.json")} is not a JSON object (expected mlx-lm's adapter_config.json)\n`,
    });
    // A download or copy cut short: one line naming the file once (it was 'cannot read FILE: cannot load safetensors FILE: ...').
    const truncated = join(root, "truncated");
    writeRandomAdapter(truncated, { layers: lastLayers(2, 2, projections) });
    const truncatedFile = join(truncated, "adapters.safetensors");
    truncateSync(truncatedFile, statSync(truncatedFile).size - 100);
    const cut = await mlx(["run", "-m", "tiny", "--adapter", truncated, "hi"]);
    expect(cut.code).toBe(1);
    expect(cut.stderr).toStartWith(`error: cannot load safetensors ${truncatedFile}: `);
    expect(cut.stderr.split(truncatedFile)).toHaveLength(2);
    expect(cut.stderr.trim().split("\n")).toHaveLength(1);
  }, 60_000);

  test("an adapter's tensors outside its config's num_layers and keys are refused, as mlx-lm refuses them; a config without them limits nothing", async () => {
    const config = (dir: string) => join(dir, "adapter_config.json");
    const edit = (dir: string, change: (c: Record<string, any>) => void) => {
      const c = JSON.parse(readFileSync(config(dir), "utf8"));
      change(c);
      writeFileSync(config(dir), JSON.stringify(c));
    };
    // Both layers' q_proj, but a config that adapts the last layer alone (num_layers 1).
    const layers = join(root, "outside-layers");
    writeRandomAdapter(layers, { layers: lastLayers(2, 2, { "self_attn.q_proj": projections["self_attn.q_proj"]! }) });
    edit(layers, (c) => {
      c.num_layers = 1;
    });
    const byLayer = await mlx(["run", "-m", "tiny", "--adapter", layers, "--max-tokens", "1", "hi"]);
    expect(byLayer.code).toBe(1);
    expect(byLayer.stderr).toMatch(
      new RegExp(
        `^error: ${join(layers, "adapters.safetensors")}: 'model\\.layers\\.0\\.self_attn\\.q_proj\\.lora_[ab]' adapts a layer that adapter_config\\.json leaves out \\(num_layers 1: layer 1; keys self_attn\\.q_proj\\), as mlx-lm refuses it\n$`,
      ),
    );
    // The last layer's q_proj, v_proj and down_proj, but keys naming q_proj alone.
    const keys = join(root, "outside-keys");
    writeRandomAdapter(keys, { layers: lastLayers(2, 1, projections) });
    edit(keys, (c) => {
      c.lora_parameters.keys = ["self_attn.q_proj"];
    });
    const byKey = await mlx(["run", "-m", "tiny", "--adapter", keys, "--max-tokens", "1", "hi"]);
    expect(byKey.code).toBe(1);
    expect(byKey.stderr).toMatch(
      /^error: \S+: 'model\.layers\.1\.(mlp\.down_proj|self_attn\.v_proj)\.lora_[ab]' adapts a layer that adapter_config\.json leaves out \(num_layers 1: layer 1; keys self_attn\.q_proj\)/,
    );
    expect(byKey.stderr.trim().split("\n")).toHaveLength(1);
    // A config without num_layers and keys (hand-written, or older) adapts whatever the file holds, as before.
    for (const dir of [layers, keys])
      edit(dir, (c) => {
        delete c.num_layers;
        delete c.lora_parameters.keys;
      });
    for (const dir of [layers, keys])
      expect((await mlx(["run", "-m", "tiny", "--adapter", dir, "--max-tokens", "1", "hi"])).code).toBe(0);
  }, 60_000);

  test("an adapter whose matrices hold NaN or infinities (a training that diverged) is a one-line error naming the tensor", async () => {
    for (const [name, value] of [
      ["nan", Number.NaN],
      ["infinite", Number.POSITIVE_INFINITY],
    ] as const) {
      const dir = join(root, `diverged-${name}`);
      writeRandomAdapter(dir, { layers: lastLayers(2, 1, projections) });
      const file = join(dir, "adapters.safetensors");
      const { tensors } = mx.loadSafetensors(file);
      const b = "model.layers.1.mlp.down_proj.lora_b";
      tensors.get(b)!.free();
      tensors.set(b, mx.full([4, hidden], value, mx.Dtype.float32));
      mx.saveSafetensors(file, tensors, { format: "mlx" });
      for (const t of tensors.values()) t.free();
      // Before, it loaded and every answer was noise.
      expect(await mlx(["run", "-m", "tiny", "--adapter", dir, "hi"])).toMatchObject({
        code: 1,
        stderr: `error: ${file}: '${b}' holds NaN or infinite values (did its training diverge?)\n`,
      });
    }
  }, 60_000);

  test("a DoRA adapter from mlx-lm 0.18 and older (use_dora, lora_layers) is DoRA, as that mlx-lm read it", async () => {
    const older = join(root, "older-dora");
    cpSync(adapterB, older, { recursive: true });
    const configPath = join(older, "adapter_config.json");
    const { fine_tune_type: _, num_layers, ...config } = JSON.parse(readFileSync(configPath, "utf8"));
    writeFileSync(configPath, JSON.stringify({ ...config, lora_layers: num_layers, use_dora: true }));
    expect(await ids(["-m", "tiny", "--adapter", older])).toEqual(await ids(["-m", "tiny", "--adapter", adapterB]));
  }, 60_000);

  test("mlx fuse never stores over a model that was pulled or converted, nor under an alias's name", async () => {
    const plain = join(root, "plain");
    cpSync(model, plain, { recursive: true });
    expect((await mlx(["pull", plain])).code).toBe(0);
    const manifest = () => readFileSync(join(home, "manifests", "plain.json"), "utf8");
    const before = manifest();
    const taken = await mlx(["fuse", "tiny", "--adapter", adapterA, "plain"]);
    expect(taken).toMatchObject({
      code: 1,
      stderr: `error: 'plain' is already a stored model (${plain}); give the fused model another name, or remove that one first (mlx rm plain)\n`,
    });
    expect(manifest()).toBe(before);
    const alias = await mlx(["fuse", "plain", "--adapter", adapterA, "tiny-tuned"]);
    expect(alias).toMatchObject({
      code: 1,
      stderr: "error: 'tiny-tuned' is an alias in models.toml; give the fused model another name\n",
    });
  }, 60_000);
});

/** `mlx serve` with `args`, which must exit at start: its exit code and stderr. */
async function serveRefused(args: string[], name = model): Promise<{ code: number; stderr: string }> {
  // Before these checks the server started: the timeout ends it, and the test fails.
  const proc = Bun.spawn([process.execPath, mainScript, "serve", "--port", "0", "-m", name, ...args], {
    stdout: "ignore",
    stderr: "pipe",
    env: { ...process.env, MLX_HOME: home, NO_COLOR: "1" },
    timeout: 60_000,
  });
  const stderr = await new Response(proc.stderr).text();
  return { code: await proc.exited, stderr };
}

test("mlx serve refuses at start an --adapter whose config no request could load", async () => {
  const full = join(root, "full-fine-tune");
  writeRandomAdapter(full, { layers: lastLayers(2, 1, projections) });
  const configPath = join(full, "adapter_config.json");
  writeFileSync(
    configPath,
    JSON.stringify({ ...JSON.parse(readFileSync(configPath, "utf8")), fine_tune_type: "full" }),
  );
  // Before this check every request for the name was answered with a 500.
  expect(await serveRefused(["--adapter", `x=${full}`])).toEqual({
    code: 1,
    stderr: `error: --adapter 'x=${full}': ${full} is a full fine-tune (fine_tune_type "full"): its adapters.safetensors replaces weights rather than adapting them; merge it with mlx_lm.fuse and load the result as a model\n`,
  });
}, 60_000);

test("mlx serve reads an --adapter directory whose path holds '=' as that directory, and refuses an empty NAME or DIR", async () => {
  // A training sweep's run directory (lr=1e-4), here one no request could load, so that the error names what was read.
  const sweep = join(root, "runs", "lr=1e-4");
  writeRandomAdapter(sweep, { layers: lastLayers(2, 1, projections) });
  const configPath = join(sweep, "adapter_config.json");
  writeFileSync(
    configPath,
    JSON.stringify({ ...JSON.parse(readFileSync(configPath, "utf8")), fine_tune_type: "bogus" }),
  );
  // Before, it was split at '=' into the name '…/runs/lr' and the directory '1e-4', "not found".
  expect(await serveRefused(["--adapter", sweep])).toEqual({
    code: 1,
    stderr: `error: --adapter '${sweep}': ${configPath}: fine_tune_type must be "lora" or "dora" (got "bogus")\n`,
  });
  // '=DIR' was a directory named '=DIR' and 'NAME=' the working directory.
  expect(await serveRefused(["--adapter", `=${adapterA}`])).toEqual({
    code: 1,
    stderr: `error: --adapter '=${adapterA}': the name '' is empty or given twice\n`,
  });
  expect(await serveRefused(["--adapter", "tuned="])).toEqual({
    code: 1,
    stderr: "error: --adapter 'tuned=': no adapter directory after '=' (NAME=DIR)\n",
  });
}, 120_000);

test("mlx serve refuses --adapter on an alias that has an adapter, as mlx run does: it would be dropped, not chained", async () => {
  // Before, 'b' answered as the alias's base plus adapterB, without adapterA and without a word.
  expect(await serveRefused(["--adapter", `b=${adapterB}`], "tiny-tuned")).toEqual({
    code: 1,
    stderr: `error: model 'tiny-tuned' already has an adapter in models.toml (${adapterA}); serve its base model to serve adapters with --adapter\n`,
  });
}, 60_000);

test("a half-precision adapter's product in a decode step is the same bits alone as batched with the base or another adapter", () => {
  const lm = loadModel(model);
  const lora = lm.weights.lora;
  const half = loadAdapter(adapterHalf, lora);
  const other = loadAdapter(adapterA, lora);
  try {
    for (const [name, [inputs, outputs]] of Object.entries(projections)) {
      const prefix = `model.layers.1.${name}`;
      const differences = mx.scope(() => {
        const x = mx.random.normal([1, 1, inputs], mx.Dtype.float32, mx.random.key(7));
        const y = mx.random.normal([1, 1, outputs], mx.Dtype.float32, mx.random.key(8));
        const alone = lora.run([half], () => lora.apply(prefix, x, y));
        // Alone, its product multiplied float32 activations by bfloat16 matrices; batched, by the stacks' float32.
        return [undefined, other].map((second) => {
          const rows = lora.run([half, second], () =>
            lora.apply(prefix, mx.concatenate([x, x], 0), mx.concatenate([y, y], 0)),
          );
          const first = mx.slice(rows, [0, 0, 0], [1, 1, outputs]);
          return mx.max(mx.abs(mx.subtract(first, alone))).item();
        });
      });
      expect({ prefix, differences }).toEqual({ prefix, differences: [0, 0] });
    }
  } finally {
    half.free();
    other.free();
    lm.free();
  }
});

test("a row's adapter product is the same bits alone as batched with other rows of that adapter, decoding or prefilling", () => {
  const lm = loadModel(model);
  const lora = lm.weights.lora;
  const lowRank = loadAdapter(adapterA, lora);
  const dora = loadAdapter(adapterB, lora);
  try {
    for (const adapter of [lowRank, dora])
      for (const [name, [inputs, outputs]] of Object.entries(projections)) {
        const prefix = `model.layers.1.${name}`;
        // A decode step (one position per row) and a prefill of several positions.
        for (const positions of [1, 5]) {
          const differences = mx.scope(() => {
            const x = mx.random.normal([1, positions, inputs], mx.Dtype.float32, mx.random.key(7));
            const other = mx.random.normal([1, positions, inputs], mx.Dtype.float32, mx.random.key(9));
            const y = mx.random.normal([1, positions, outputs], mx.Dtype.float32, mx.random.key(8));
            const alone = lora.run([adapter], () => lora.apply(prefix, x, y));
            return [2, 4].map((rows) => {
              const batched = lora.run(Array(rows).fill(adapter), () =>
                lora.apply(
                  prefix,
                  mx.concatenate([x, ...Array(rows - 1).fill(other)], 0),
                  mx.concatenate(Array(rows).fill(y), 0),
                ),
              );
              const first = mx.slice(batched, [0, 0, 0], [1, positions, outputs]);
              return mx.max(mx.abs(mx.subtract(first, alone))).item();
            });
          });
          // Before, the rows of one adapter were multiplied at once, which rounds otherwise than one row.
          expect({ prefix, positions, differences }).toEqual({ prefix, positions, differences: [0, 0] });
        }
      }
  } finally {
    lowRank.free();
    dora.free();
    lm.free();
  }
});

test("mlx serve, on the default model: requests of one adapter at once have each its solo log-probabilities", async () => {
  // The default model's quantized layers compute each row as alone, so only the adapter's product could part them.
  const smollm2 = await resolveModelPath(undefined);
  const dir = join(root, "adapter-smollm2");
  writeRandomAdapter(dir, {
    layers: lastLayers(30, 4, { "self_attn.q_proj": [576, 576], "self_attn.v_proj": [576, 192] }),
    seed: 3,
    strength: 0.5,
  });
  const server = serve({ defaultModel: smollm2, adapters: new Map([["smollm2-tuned", { base: smollm2, dir }]]) });
  try {
    const client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60_000 });
    const logprobs = async (prompt: string) => {
      const r = await client.chat.completions.create({
        model: "smollm2-tuned",
        messages: [{ role: "user", content: prompt }],
        max_tokens: 12,
        temperature: 0,
        logprobs: true,
      });
      return r.choices[0]!.logprobs!.content!.map((t) => [t.token, t.logprob]);
    };
    const prompts = ["Tell me about giraffes.", "Tell me about pandas.", "Name three fruits."];
    // Each prompt once first, so that the prefix cache holds it alone as at once (a prompt
    // prefilled whole rounds its first token otherwise than one whose prefix is cached).
    for (const p of prompts) await logprobs(p);
    const alone = [];
    for (const p of prompts) alone.push(await logprobs(p));
    // Before, rows of one adapter were multiplied at once, rounded otherwise than a row alone.
    expect(await Promise.all(prompts.map(logprobs))).toEqual(alone);
  } finally {
    server.stop();
  }
}, 120_000);

test("positions apart (a speculative step): each position's adapter product is the same bits as that position alone", () => {
  const lm = loadModel(model);
  const lora = lm.weights.lora;
  const lowRank = loadAdapter(adapterA, lora);
  const dora = loadAdapter(adapterB, lora);
  try {
    for (const rows of [[lowRank], [dora, undefined, lowRank]])
      for (const [name, [inputs, outputs]] of Object.entries(projections)) {
        const prefix = `model.layers.1.${name}`;
        const positions = 4;
        const differences = mx.scope(() => {
          const x = mx.random.normal([rows.length, positions, inputs], mx.Dtype.float32, mx.random.key(7));
          const y = mx.random.normal([rows.length, positions, outputs], mx.Dtype.float32, mx.random.key(8));
          const apart = lora.run(rows, () => lora.apply(prefix, x, y), { positionsApart: true });
          return rows.flatMap((adapter, row) =>
            Array.from({ length: positions }, (_, p) => {
              const at = (a: MxArray, width: number) => mx.slice(a, [row, p, 0], [row + 1, p + 1, width]);
              // A decode step of this one position: one row, one position.
              const alone = lora.run([adapter], () => lora.apply(prefix, at(x, inputs), at(y, outputs)));
              return mx.max(mx.abs(mx.subtract(at(apart, outputs), alone))).item();
            }),
          );
        });
        // Before, a speculative step multiplied its positions at once, which rounds otherwise than one.
        expect({ prefix, differences }).toEqual({ prefix, differences: differences.map(() => 0) });
      }
  } finally {
    lowRank.free();
    dora.free();
    lm.free();
  }
});

test("mlx serve --prompt-lookup, on the default model: an adapter's drafted tokens have the log-probabilities of decoding them alone", async () => {
  const smollm2 = await resolveModelPath(undefined);
  const dir = join(root, "adapter-smollm2-lookup");
  writeRandomAdapter(dir, {
    layers: lastLayers(30, 4, { "self_attn.q_proj": [576, 576], "self_attn.v_proj": [576, 192] }),
    seed: 3,
    strength: 0.5,
  });
  const adapters = new Map([["smollm2-tuned", { base: smollm2, dir }]]);
  const plain = serve({ defaultModel: smollm2, adapters });
  const speculating = serve({ defaultModel: smollm2, adapters, speculation: { numDraft: 3 } });
  try {
    const logprobs = async (url: string) => {
      const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 60_000 });
      const r = await client.chat.completions.create({
        model: "smollm2-tuned",
        messages: [{ role: "user", content: "Copy this code exactly:\ndef add(a, b):\n    return a + b\n" }],
        max_tokens: 24,
        temperature: 0,
        logprobs: true,
      });
      return r.choices[0]!.logprobs!.content!.map((t) => [t.token, t.logprob]);
    };
    // Twice on each, so that both answer from a cached prompt.
    await logprobs(plain.url);
    await logprobs(speculating.url);
    expect(await logprobs(speculating.url)).toEqual(await logprobs(plain.url));
    const stats = (await (await fetch(`${speculating.url}/stats`)).json()) as {
      models: { speculation: { accepted_tokens: number } }[];
    };
    expect(stats.models[0]!.speculation.accepted_tokens).toBeGreaterThan(0);
  } finally {
    await plain.stop();
    await speculating.stop();
  }
}, 120_000);

test("mlx serve loads its adapters with its model at start: one whose shapes do not fit is in the log without a request", async () => {
  const wrong = join(root, "wrong-at-start");
  writeRandomAdapter(wrong, { layers: { "model.layers.0.self_attn.q_proj": [32, 64] }, modelLayers: 2 });
  const logged: string[] = [];
  const server = serve({
    defaultModel: model,
    adapters: new Map([
      ["fits", { base: model, dir: adapterA }],
      ["misfit", { base: model, dir: wrong }],
    ]),
    logError: (error) => logged.push((error as Error).message),
  });
  try {
    // Before, nothing was said until a request for it got a 500.
    await eventually(async () => logged.length > 0, 60_000);
    expect(logged).toHaveLength(1);
    expect(logged[0]).toContain("'model.layers.0.self_attn.q_proj' has lora_a [32,4]");
    const r = await post(`${server.url}/v1/completions`, { model: "fits", prompt: "Hi", max_tokens: 2 });
    expect(r.status).toBe(200);
  } finally {
    await server.stop();
  }
}, 90_000);

test("mlx serve refuses --adapter on a -m served by a remote provider, as mlx run does", async () => {
  // It started, listed the adapter's name, and answered every request for it with a 400.
  expect(await serveRefused(["--adapter", `x=${adapterA}`], "tiny-remote")).toEqual({
    code: 1,
    stderr: "error: --adapter is for a model loaded here; 'tiny-remote' is served by a remote provider (models.toml)\n",
  });
}, 60_000);

test("mlx serve refuses an --adapter name that already names a model, which it would hide", async () => {
  for (const name of [model, "tiny-tuned"])
    expect(await serveRefused(["--adapter", `${name}=${adapterB}`])).toEqual({
      code: 1,
      stderr: `error: --adapter '${name}=${adapterB}': '${name}' already names a model, which requests could then no longer reach: name the adapter otherwise (NAME=DIR)\n`,
    });
}, 150_000);

test("mlx serve: a models.toml alias whose adapter does not fit is a 500 naming it, and the base it loaded idles out", async () => {
  const misfit = join(root, "misfit-alias");
  writeRandomAdapter(misfit, { layers: { "model.layers.0.self_attn.q_proj": [32, 64] }, modelLayers: 2 });
  const aliasHome = join(root, "misfit-home");
  mkdirSync(aliasHome, { recursive: true });
  writeFileSync(join(aliasHome, "models.toml"), `[models.tiny-misfit]\nsource = "${model}"\nadapter = "${misfit}"\n`);
  const storeBefore = process.env.MLX_HOME;
  process.env.MLX_HOME = aliasHome;
  const server = serve({ keepAliveMs: 200 });
  try {
    const r = await post(`${server.url}/v1/completions`, { model: "tiny-misfit", prompt: "Hi", max_tokens: 2 });
    expect(r.status).toBe(500);
    expect(r.json.error.message).toContain("'model.layers.0.self_attn.q_proj' has lora_a [32,4]");
    // The same adapter fails the same way again: OpenAI's and Anthropic's clients retried it twice.
    expect(r.headers.get("x-should-retry")).toBe("false");
    // The base was loaded for the request before its adapter failed: it was held with no
    // keep-alive clock at all (in /api/ps for ever, its store files in use).
    await eventually(() => server.state.models.loaded.length === 0, 10_000);
    // And the server still answers the base.
    expect((await post(`${server.url}/v1/completions`, { model, prompt: "Hi", max_tokens: 2 })).status).toBe(200);
  } finally {
    await server.stop();
    process.env.MLX_HOME = storeBefore;
  }
}, 60_000);

test("mlx serve lists a base loaded for an adapter's name under the base's name (/api/ps, mlx stop)", async () => {
  const storeBefore = process.env.MLX_HOME;
  process.env.MLX_HOME = home;
  const server = serve({ adapters: new Map([["tuned-x", { base: "tiny", dir: adapterB }]]) });
  const loaded = async (): Promise<string[]> =>
    ((await (await fetch(`${server.url}/api/ps`)).json()) as { models: { name: string }[] }).models.map((m) => m.name);
  const complete = (name: string) => post(`${server.url}/v1/completions`, { model: name, prompt: "Hi", max_tokens: 2 });
  try {
    // It was listed as 'tuned-x' (an adapter's name, with no parent model): `mlx stop tiny` said
    // tiny was not loaded, and `mlx stop tuned-x` unloaded the base of every adapter.
    expect((await complete("tuned-x")).status).toBe(200);
    expect(await loaded()).toEqual(["tiny"]);
    expect((await post(`${server.url}/api/generate`, { model: "tiny", keep_alive: 0 })).status).toBe(200);
    await eventually(async () => (await loaded()).length === 0, 10_000);
    // A models.toml alias of the base plus an adapter loads the base's entry too.
    expect((await complete("tiny-tuned")).status).toBe(200);
    expect(await loaded()).toEqual(["tiny"]);
  } finally {
    await server.stop();
    process.env.MLX_HOME = storeBefore;
  }
}, 60_000);

test("mlx serve --adapter without -m: its base is models.toml's default model, listed and shown by that name", async () => {
  const defaultHome = join(root, "default-home");
  mkdirSync(defaultHome, { recursive: true });
  writeFileSync(
    join(defaultHome, "models.toml"),
    `default = "tiny"\n${readFileSync(join(home, "models.toml"), "utf8")}`,
  );
  const storeBefore = process.env.MLX_HOME;
  process.env.MLX_HOME = defaultHome;
  const server = serve({ adapters: new Map([["tuned-y", { base: undefined, dir: adapterB }]]) });
  try {
    const ollama = new Ollama({ host: server.url });
    const r = await post(`${server.url}/v1/completions`, { model: "tuned-y", prompt: "Hi", max_tokens: 2 });
    expect(r.status).toBe(200);
    // The base was listed as 'tuned-y', with no parent model.
    expect((await ollama.ps()).models.map((m) => m.name)).toEqual(["tiny"]);
    expect((await ollama.list()).models.find((m) => m.name === "tuned-y")?.details.parent_model).toBe("tiny");
    expect((await ollama.show({ model: "tuned-y" })).details.parent_model).toBe("tiny");
  } finally {
    await server.stop();
    process.env.MLX_HOME = storeBefore;
  }
}, 60_000);

test("mlx serve's /api/show of an adapter's name shows its ADAPTER and base, as /api/tags lists them", async () => {
  const storeBefore = process.env.MLX_HOME;
  process.env.MLX_HOME = home;
  const server = serve({ adapters: new Map([["tuned-x", { base: "tiny", dir: adapterB }]]) });
  try {
    const ollama = new Ollama({ host: server.url });
    // Both were shown as the base alone: FROM its files, no parent model.
    for (const [name, dir] of [
      ["tuned-x", adapterB],
      ["tiny-tuned", adapterA],
    ] as const) {
      const shown = await ollama.show({ model: name });
      expect(shown.modelfile).toStartWith(`FROM ${model}\nADAPTER ${dir}\n`);
      expect(shown.details.parent_model).toBe("tiny");
    }
    expect((await ollama.list()).models.find((m) => m.name === "tuned-x")!.details.parent_model).toBe("tiny");
    const base = await ollama.show({ model: "tiny" });
    expect(base.modelfile).not.toContain("ADAPTER");
    // An alias of the files, made from them as /api/tags lists it: no adapter's base.
    expect(base.details.parent_model).toBe(model);
    expect(base.details).toEqual((await ollama.list()).models.find((m) => m.name === "tiny")!.details);
  } finally {
    await server.stop();
    process.env.MLX_HOME = storeBefore;
  }
}, 60_000);

test("mlx serve: an alias's adapter edited in models.toml applies from the next request, as its other settings do", async () => {
  const editHome = join(root, "edit-home");
  mkdirSync(editHome, { recursive: true });
  const toml = join(editHome, "models.toml");
  const aliases = (dir: string) =>
    `[models.tiny]\nsource = "${model}"\n\n[models.swap]\nsource = "tiny"\nadapter = "${dir}"\n\n` +
    `[models.fixed-b]\nsource = "tiny"\nadapter = "${adapterB}"\n`;
  writeFileSync(toml, aliases(adapterA));
  const storeBefore = process.env.MLX_HOME;
  process.env.MLX_HOME = editHome;
  const server = serve();
  const answer = async (name: string) =>
    (
      await post(`${server.url}/v1/completions`, {
        model: name,
        prompt: "Once upon a time",
        max_tokens: 12,
        temperature: 0,
      })
    ).json.choices[0].text;
  try {
    const withA = await answer("swap");
    const withB = await answer("fixed-b");
    expect(withA).not.toBe(withB);
    writeFileSync(toml, aliases(adapterB));
    // The adapter was read once per name for the server's life: 'swap' kept adapter A.
    expect(await answer("swap")).toBe(withB);
  } finally {
    await server.stop();
    process.env.MLX_HOME = storeBefore;
  }
}, 60_000);

describe("mlx serve with adapters", () => {
  let server: RunningServer;
  let client: OpenAI;
  beforeAll(() => {
    server = serve({
      defaultModel: model,
      adapters: new Map([
        ["tuned-a", { base: model, dir: adapterA }],
        ["tuned-b", { base: model, dir: adapterB }],
        ["tuned-half", { base: model, dir: adapterHalf }],
      ]),
    });
    client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "unused", maxRetries: 0, timeout: 30_000 });
  });
  afterAll(() => server.stop());

  const ask = async (name: string, prompt: string) => {
    const r = await client.completions.create({ model: name, prompt, max_tokens: 16, temperature: 0 });
    return r.choices[0]!.text;
  };

  test("base and two adapters at once: each answer is its solo answer, one copy of the base", async () => {
    const names = [model, "tuned-a", "tuned-b"];
    const prompts = ["Once upon a time", "The weather today", "Once upon a time"];
    const alone = [];
    for (const name of names) for (const p of prompts) alone.push(await ask(name, p));
    // The adapters answer differently from the base and from each other.
    expect(new Set([alone[0], alone[3], alone[6]]).size).toBe(3);
    // Every name and prompt at once: rows of the base and of both adapters decode in one batch.
    const together = await Promise.all(names.flatMap((name) => prompts.map((p) => ask(name, p))));
    expect(together).toEqual(alone);
    expect(server.state.models.loaded).toHaveLength(1);
    const listed = await client.models.list();
    expect(listed.data.map((m) => m.id)).toEqual(expect.arrayContaining(["tuned-a", "tuned-b"]));
    // Each adapter once, on the one copy of the base (all that it serves: they load with it at start).
    expect([...server.state.models.loaded[0]!.adapters.keys()].sort()).toEqual(
      [adapterA, adapterB, adapterHalf].sort(),
    );
  }, 120_000);

  test("an Ollama client's 'name:latest' of an adapter's name is that adapter, not its base", async () => {
    const ollama = new Ollama({ host: server.url });
    const generate = async (name: string) =>
      (await ollama.generate({ model: name, prompt: "Once upon a time", options: { num_predict: 16, temperature: 0 } }))
        .response;
    const tuned = await generate("tuned-a");
    expect(tuned).not.toBe(await generate(model));
    expect(await generate("tuned-a:latest")).toBe(tuned);
  }, 120_000);

  test("embeddings of an adapter's name are the adapter's, on OpenAI's and Ollama's routes, as mlx embed gives them", async () => {
    const input = "Once upon a time";
    const openai = async (name: string) =>
      (await client.embeddings.create({ model: name, input, encoding_format: "float" })).data[0]!.embedding;
    const tuned = await openai("tuned-a");
    // Before, every adapter's name embedded as its base.
    expect(maxDifference(tuned, await openai(model))).toBeGreaterThan(0.1);
    expect(maxDifference(tuned, await openai("tuned-b"))).toBeGreaterThan(0.1);
    const ollama = new Ollama({ host: server.url });
    expect(maxDifference(tuned, (await ollama.embed({ model: "tuned-a", input })).embeddings[0]!)).toBeLessThan(1e-6);
    const cli = await cliRunner(home)(["embed", "-m", "tiny-tuned", input]);
    expect(cli.code).toBe(0);
    expect(maxDifference(tuned, JSON.parse(cli.stdout))).toBeLessThan(1e-6);
  }, 120_000);

  test("mlx_lm.server's per-request 'adapters' field is a 400 that says how an adapter is asked for here", async () => {
    for (const [route, body] of [
      ["chat/completions", { messages: [{ role: "user", content: "Hi" }] }],
      ["completions", { prompt: "Hi" }],
    ] as const) {
      const r = await post(`${server.url}/v1/${route}`, { model, adapters: adapterA, max_tokens: 2, ...body });
      expect(r.status).toBe(400);
      expect(r.json.error).toMatchObject({ param: "adapters", code: "unsupported_parameter" });
      expect(r.json.error.message).toContain("mlx serve --adapter NAME=DIR, then ask for NAME");
    }
  });

  test("a bfloat16 adapter batched with the base: each answer is its solo answer", async () => {
    // On the CPU, MLX's gather_mm multiplies only float32: a half-precision stack failed the batch.
    const names = ["tuned-half", model];
    const alone = [];
    for (const name of names) alone.push(await ask(name, "Once upon a time"));
    expect(alone[0]).not.toBe(alone[1]);
    const together = await Promise.all(names.map((name) => ask(name, "Once upon a time")));
    expect(together).toEqual(alone);
  }, 120_000);
});
