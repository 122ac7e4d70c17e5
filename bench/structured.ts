// Structured output's cost: generation tokens/s on the same prompts without constraint, with a
// no-op logits processor (what feeding tokens from the host costs: no async pipelining), with
// a JSON Schema (the grammar mask on top), with the same schema told the budget (--max-tokens:
// the budget steering follows every step, and narrows only where the budget gets close), and
// with tools offered (tool_choice auto: free text in which a call must stay valid), in one
// process, interleaved. Also the host time
// of one mask step (xgrammar's bitmask → a boolean array → mx.where), and the schema's
// first compile. Prints a Markdown table.
//
//   node_modules/.bin/bun bench/structured.ts [--model tiny|default|DIR] [--runs 3] [--max-tokens 64] [--modes schema,budget]
import { parseArgs } from "node:util";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as mx from "../src/mlx";
import { loadModel, type LoadedModel } from "../src/models/load";
import { complete, soloScheduler, type CompletionResult } from "../src/engine/generate";
import { defaultSampling, type LogitsProcessor } from "../src/engine/sampling";
import { promptTokens } from "../src/engine/prompt";
import { createJsonConstraint, initGrammar, type GrammarConstraint } from "../src/engine/grammar";
import { createToolCallConstraint, toolCallFormats, type ToolSpec } from "../src/engine/tools";
import { resolveModelPath } from "../src/store/resolve";
import { writeTinyModel } from "../test/helpers/tiny-model";
import { median, ratio } from "./lib";

const { values } = parseArgs({
  options: {
    model: { type: "string", default: "tiny" },
    runs: { type: "string", default: "3" },
    "max-tokens": { type: "string", default: "64" },
    /** Which modes to run (comma-separated), e.g. schema,budget on a slow model. */
    modes: { type: "string", default: "none,identity,schema,budget,tools" },
  },
});
const runs = Number(values.runs);
const maxTokens = Number(values["max-tokens"]);

async function modelPath(spec: string): Promise<string> {
  if (spec === "tiny") {
    const dir = join(mkdtempSync(join(tmpdir(), "mlx-bench-structured-")), "tiny");
    writeTinyModel(dir, { contextLength: 2048 });
    return dir;
  }
  return resolveModelPath(spec === "default" ? undefined : spec);
}

const schema = {
  type: "object",
  properties: {
    name: { type: "string", maxLength: 24 },
    age: { type: "integer", minimum: 0, maximum: 120 },
    city: { type: "string", maxLength: 24 },
    hobbies: { type: "array", items: { type: "string", maxLength: 16 }, minItems: 1, maxItems: 3 },
  },
  required: ["name", "age", "city", "hobbies"],
};
const tools: ToolSpec[] = [
  {
    name: "lookup_person",
    parameters: { type: "object", properties: { name: { type: "string" } }, required: ["name"] },
  },
  { name: "save_record", parameters: schema },
];
const prompts = [
  "Describe a fictional person as JSON with name, age, city and hobbies.",
  "Invent a character for a novel and give their details as JSON.",
  "Return a JSON record for a customer of a bicycle shop.",
];

const lm: LoadedModel = loadModel(await modelPath(values.model!));
const scheduler = soloScheduler(lm);
let started = performance.now();
await initGrammar();
const initMs = performance.now() - started;
started = performance.now();
(await createJsonConstraint(lm.tokenizer, { schema })).dispose();
const firstCompileMs = performance.now() - started;
started = performance.now();
(await createJsonConstraint(lm.tokenizer, { schema })).dispose();
const cachedCreateMs = performance.now() - started;

type Mode = "none" | "identity" | "schema" | "budget" | "tools";
const processorMs: number[] = [];
async function constraintFor(mode: Mode): Promise<GrammarConstraint | undefined> {
  if (mode === "schema") return createJsonConstraint(lm.tokenizer, { schema });
  if (mode === "budget") return createJsonConstraint(lm.tokenizer, { schema }, { maxTokens });
  if (mode === "tools")
    return createToolCallConstraint(lm.tokenizer, toolCallFormats.hermes, tools, { required: false, parallel: true });
  return undefined;
}
async function generate(prompt: string, mode: Mode): Promise<CompletionResult & { closedEarly: boolean }> {
  const constraint = await constraintFor(mode);
  const identity: LogitsProcessor = (_history, logits) => logits;
  // The schema's processor, timed: its host work per step (matcher, bitmask, building the graph).
  const timed: LogitsProcessor = (history, logits) => {
    const t0 = performance.now();
    const out = constraint!.processor(history, logits);
    processorMs.push(performance.now() - t0);
    return out;
  };
  const processors =
    mode === "schema"
      ? [timed]
      : mode === "tools" || mode === "budget"
        ? [constraint!.processor]
        : mode === "identity"
          ? [identity]
          : undefined;
  try {
    const result = await complete(scheduler, {
      prompt: { kind: "ids", ids: promptTokens(lm.tokenizer, prompt) },
      sampling: { ...defaultSampling, temperature: 0 },
      maxTokens,
      processors,
    });
    return { ...result, closedEarly: constraint?.closedEarly() ?? false };
  } finally {
    constraint?.dispose();
  }
}

const tps: Record<Mode, number[]> = { none: [], identity: [], schema: [], budget: [], tools: [] };
const tokens: Record<Mode, number[]> = { none: [], identity: [], schema: [], budget: [], tools: [] };
let closedEarly = 0;
let validJson = 0;
let schemaRuns = 0;
await generate(prompts[0]!, "schema"); // warm-up
for (let run = 0; run < runs; run++) {
  for (const prompt of prompts) {
    const all: Mode[] = ["none", "identity", "schema", "budget", "tools"];
    const chosen = all.filter((m) => values.modes!.split(",").includes(m));
    const order = run % 2 === 0 ? chosen : [...chosen].reverse();
    for (const mode of order) {
      const r = await generate(prompt, mode);
      tps[mode].push(r.stats.generationTokensPerSecond);
      process.stderr.write(
        `${mode}: ${r.stats.generatedTokens} tokens, ${r.stats.generationTokensPerSecond.toFixed(2)} tok/s${r.closedEarly ? ", closed early" : ""}\n`,
      );
      tokens[mode].push(r.stats.generatedTokens);
      if (r.closedEarly) closedEarly++;
      if (mode === "schema" || mode === "budget") {
        schemaRuns++;
        try {
          JSON.parse(r.text);
          validJson++;
        } catch {}
      }
    }
  }
}

// The host side of one constrained step, alone: bitmask, unpack, mx.where on a logits row.
const constraint = await createJsonConstraint(lm.tokenizer, { schema });
const vocab = lm.config.vocabSize;
const logits = mx.keep(mx.zeros([1, vocab]));
const history = [1, 2, 3];
const steps = 200;
started = performance.now();
for (let i = 0; i < steps; i++) {
  mx.scope(() => {
    const out = constraint.processor(history, logits);
    mx.evaluate(out);
  });
}
const maskMs = (performance.now() - started) / steps;
constraint.dispose();
logits.free();

const fmt = (v: number) => v.toFixed(2);
console.log(
  `model: ${lm.path} (${values.model}), vocab ${vocab}; greedy; ${runs} runs × ${prompts.length} prompts; max ${maxTokens} tokens`,
);
console.log();
console.log(
  "| measure | no constraint | no-op processor | JSON Schema | schema + budget | tools (auto) | schema / none | budget / schema | tools / none |",
);
console.log("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
console.log(
  `| generation tokens/s (median) | ${fmt(median(tps.none))} | ${fmt(median(tps.identity))} | ${fmt(median(tps.schema))} | ${fmt(median(tps.budget))} | ${fmt(median(tps.tools))} | ${ratio(median(tps.schema), median(tps.none))} | ${ratio(median(tps.budget), median(tps.schema))} | ${ratio(median(tps.tools), median(tps.none))} |`,
);
console.log(
  `| tokens generated (median) | ${median(tokens.none)} | ${median(tokens.identity)} | ${median(tokens.schema)} | ${median(tokens.budget)} | ${median(tokens.tools)} | | | |`,
);
console.log();
console.log(
  `schema outputs that parse as JSON: ${validJson}/${schemaRuns}; budget runs the steering narrowed (closed early): ${closedEarly}/${tps.budget.length}`,
);
console.log(
  `host time in the schema's processor per step during generation (matcher advance + bitmask + unpack + graph): median ${median(processorMs).toFixed(3)} ms, mean ${(processorMs.reduce((a, b) => a + b, 0) / processorMs.length).toFixed(3)} ms over ${processorMs.length} steps`,
);
console.log(
  `host time of one mask step at the start state (bitmask + unpack + where, evaluated): ${maskMs.toFixed(3)} ms`,
);
console.log(
  `xgrammar start: ${initMs.toFixed(0)} ms; first constraint (vocabulary + schema compile): ${firstCompileMs.toFixed(0)} ms; cached: ${cachedCreateMs.toFixed(2)} ms`,
);
