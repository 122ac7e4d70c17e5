// What `mlx bench` prints: aligned Markdown tables for people, CSV and JSON for programs.
import { basename } from "node:path";
import { formatBytes } from "../format";
import type { ModelBenchResult, ModelInfo, SpeculationFigures } from "./model";
import { endpointPath, type LevelResult, type ServerBenchResult } from "./server";
import { meanSd, type Summary } from "./stats";
import type { SuiteModelResult, SuitePrompt } from "./suite";

export interface ModelFailure {
  model: string;
  error: string;
}

/** A model's result, or why it failed: the reports list them in the order the models were given. */
export type Outcome<T> = T | ModelFailure;

export const isFailure = <T extends object>(o: Outcome<T>): o is ModelFailure => "error" in o;
export const succeeded = <T extends object>(models: Outcome<T>[]): T[] => models.filter((o): o is T => !isFailure(o));
const failed = <T extends object>(models: Outcome<T>[]): ModelFailure[] => models.filter(isFailure);

/** A Markdown table with padded columns (right-aligned where `right[i]`); a `|` in a cell is escaped. */
export function table(header: string[], rows: string[][], right: boolean[] = []): string {
  const escape = (cells: string[]) => cells.map((c) => c.replaceAll("|", "\\|"));
  const [head, ...body] = [header, ...rows].map(escape);
  const widths = head!.map((h, i) => Math.max(h.length, ...body.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => (right[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(" | ")} |`;
  const rule = `|${widths.map((w, i) => (right[i] ? `${"-".repeat(w + 1)}:` : "-".repeat(w + 2))).join("|")}|`;
  return [line(head!), rule, ...body.map(line)].join("\n");
}

/** A table column: its header, alignment, the cell of a result, and the cell of a failed model. */
interface Column<T> {
  header: string;
  right?: boolean;
  cell: (r: T) => string;
  failed?: string;
}

/** One row per model, results and failures in the order the models were given. */
function outcomeTable<T extends object>(columns: Column<T>[], models: Outcome<T>[]): string {
  const rows = models.map((o) =>
    columns.map((c, i) => (!isFailure(o) ? c.cell(o) : i === 0 ? o.model : (c.failed ?? "-"))),
  );
  return table(
    columns.map((c) => c.header),
    rows,
    columns.map((c) => c.right ?? false),
  );
}

/** "a 512-token prompt", "an 8-token prompt", "an 11-token prompt": the article as the number is said. */
export function article(n: number): "a" | "an" {
  const lead = n.toLocaleString("en-US").split(",")[0]!; // "11" of 11,000: "eleven thousand"
  return lead.startsWith("8") || lead === "11" || lead === "18" ? "an" : "a";
}

/** Which memory the peak is: what MLX allocated (as mlx_lm.benchmark reports), not the process's resident set. */
const peakMemoryNote = "peak memory: MLX's (weights, KV cache, activations), not the whole process's";

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? "" : "s"}`;

const ms = (s: Summary, scale = 1000) => meanSd({ mean: s.mean * scale, sd: s.sd * scale }, 0);
// A remote model's weights and memory are the provider's, unseen from here: not zero bytes.
const unlessRemote = (r: { format: string }, cell: string) => (r.format === "remote" ? "-" : cell);
/** A summary as the JSON reports write it. */
const meanAndSd = (s: Summary) => ({ mean: s.mean, sd: s.sd });
const fixed = (v: number, digits = 2) => (Number.isFinite(v) ? v.toFixed(digits) : "-");
/** A CSV figure: a figure without samples (NaN) is an empty cell, as csv() writes it, not "-". */
const csvFixed = (v: number, digits: number) => (Number.isFinite(v) ? v.toFixed(digits) : undefined);

function csvCell(v: unknown): string {
  const s = v === undefined || v === null || (typeof v === "number" && !Number.isFinite(v)) ? "" : String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}
export function csv(header: string[], rows: unknown[][]): string {
  return [header, ...rows].map((r) => r.map(csvCell).join(",")).join("\n");
}

/** JSON with non-finite numbers as null. */
export function json(value: unknown): string {
  return JSON.stringify(value, (_k, v) => (typeof v === "number" && !Number.isFinite(v) ? null : v), 2);
}

// ---- model mode ------------------------------------------------------------------------

/** "412/500 (82%) prompt-lookup": accepted of drafted tokens, with the drafter. */
const draftsCell = (f?: SpeculationFigures) =>
  f ? `${f.accepted}/${f.drafted} (${(f.acceptance * 100).toFixed(0)}%) ${f.method}` : "-";

/** The drafts column, only when some model speculates (--draft-model, --prompt-lookup). */
function draftsColumns<T extends { speculation?: SpeculationFigures }>(results: T[]): Column<T>[] {
  return results.some((r) => r.speculation)
    ? [{ header: "drafts accepted", cell: (r) => draftsCell(r.speculation) }]
    : [];
}

/** "8-bit, group 64", "float, window 1024": the KV cache a model's tests ran with. */
function kvCacheCell(r: ModelInfo): string {
  const q = r.kvQuantization;
  const cache = q ? `${q.bits}-bit, group ${q.groupSize}${q.start ? `, from position ${q.start}` : ""}` : "float";
  return r.maxKvSize === undefined ? cache : `${cache}, window ${r.maxKvSize}`;
}

/**
 * The KV cache and adapter columns, only when some model ran with them (--kv-bits,
 * --max-kv-size, --adapter, or its alias's): otherwise every row is the model as loaded.
 */
function settingsColumns<T extends ModelInfo>(results: T[]): Column<T>[] {
  const columns: Column<T>[] = [];
  if (results.some((r) => r.kvQuantization || r.maxKvSize !== undefined))
    columns.push({ header: "KV cache", cell: (r) => unlessRemote(r, kvCacheCell(r)) });
  if (results.some((r) => r.adapter))
    columns.push({ header: "adapter", cell: (r) => (r.adapter ? basename(r.adapter) : "-") });
  return columns;
}

/**
 * Models compared (two or more measured): each one's speed as a multiple of the first measured
 * model's ("1.25×": a quarter faster), as llama.cpp's compare script gives its speedup.
 */
function ratioColumn<T extends { model: string }>(results: T[], test: string, speed: (r: T) => Summary): Column<T>[] {
  const measured = results.filter((r) => Number.isFinite(speed(r).mean));
  if (measured.length < 2) return [];
  const base = measured[0]!;
  return [
    {
      header: `${test} vs ${base.model}`,
      right: true,
      cell: (r) => (Number.isFinite(speed(r).mean) ? `${(speed(r).mean / speed(base).mean).toFixed(2)}×` : "-"),
    },
  ];
}

/** The tests a model-mode run asked for (a test of 0 tokens did not run). */
export type ModelTests = Pick<ModelBenchResult, "repetitions" | "promptTokens" | "genTokens" | "depth">;

export function modelTable(models: Outcome<ModelBenchResult>[], t: ModelTests): string {
  const results = succeeded(models);
  // The headers name the tests asked for. A remote model's counts are its provider's (its
  // tokenizer, its chat template, an end-of-sequence): a row that ran other counts says so.
  const depth = (d: number) => (d ? ` @ d${d}` : "");
  const promptAsAsked = (r: ModelTests) => r.promptTokens === t.promptTokens;
  const generationAsAsked = (r: ModelTests) => r.genTokens === t.genTokens && r.depth === t.depth;
  const ppRatio = ratioColumn(results, "pp", (r) => r.promptTokensPerSecond);
  const tgRatio = ratioColumn(results, "tg", (r) => r.generationTokensPerSecond);
  const prompt: Column<ModelBenchResult>[] = [
    {
      header: `pp${t.promptTokens} tokens/s`,
      right: true,
      cell: (r) => `${meanSd(r.promptTokensPerSecond)}${promptAsAsked(r) ? "" : ` (pp${r.promptTokens})`}`,
      failed: "failed",
    },
    ...ppRatio,
  ];
  const generation: Column<ModelBenchResult>[] = [
    {
      header: `tg${t.genTokens}${depth(t.depth)} tokens/s`,
      right: true,
      cell: (r) =>
        `${meanSd(r.generationTokensPerSecond)}${generationAsAsked(r) ? "" : ` (tg${r.genTokens}${depth(r.depth)})`}`,
      failed: "failed",
    },
    ...tgRatio,
  ];
  // The first token is timed by the prompt test.
  const firstToken: Column<ModelBenchResult>[] = [
    { header: "first token (ms)", right: true, cell: (r) => ms(r.timeToFirstTokenSeconds) },
  ];
  const columns: Column<ModelBenchResult>[] = [
    { header: "model", cell: (r) => r.model },
    { header: "format", cell: (r) => r.format },
    { header: "quantization", cell: (r) => r.quantization },
    { header: "size", right: true, cell: (r) => unlessRemote(r, formatBytes(r.sizeBytes)) },
    ...settingsColumns(results),
    ...(t.promptTokens > 0 ? prompt : []),
    ...(t.genTokens > 0 ? generation : []),
    ...(t.promptTokens > 0 ? firstToken : []),
    { header: "peak memory", right: true, cell: (r) => unlessRemote(r, formatBytes(r.peakMemoryBytes)) },
    ...draftsColumns(results),
  ];
  if (results.length === 0) return outcomeTable(columns, models);
  const notes = [`${plural(t.repetitions, "run")} each, mean ± standard deviation`];
  if (t.promptTokens > 0)
    notes.push(`pp: ${article(t.promptTokens)} ${t.promptTokens}-token prompt, timed to its first token`);
  if (t.genTokens > 0)
    notes.push(
      `tg: ${plural(t.genTokens, "generated token")}${t.depth ? `, timed after ${article(t.depth)} ${t.depth}-token context` : ""}`,
    );
  const ratios = [...(t.promptTokens > 0 ? ppRatio : []), ...(t.genTokens > 0 ? tgRatio : [])];
  if (ratios.length > 0)
    notes.push(
      `${ratios.map((c) => c.header).join(", ")}: each mean tokens/s as a multiple of that model's (above 1: faster)`,
    );
  if (results.some((r) => r.format !== "remote")) notes.push(peakMemoryNote);
  if (results.some((r) => !promptAsAsked(r) || !generationAsAsked(r)))
    notes.push(
      "(ppN, tgN @ dN): the tokens a remote model's provider counted (pp: prefilled, not cached; tg: up to its end-of-sequence, where it does not take ignore_eos), where they differ",
    );
  const drafts = draftsColumns(results).length
    ? " Drafts accepted: draft tokens the model kept, of those drafted, over all tg runs."
    : "";
  return `${outcomeTable(columns, models)}\n\n${notes.join("; ")}.${drafts}`;
}

export function modelCsv(models: Outcome<ModelBenchResult>[]): string {
  const header = [
    "model",
    "path",
    "format",
    "architecture",
    "quantization",
    "size_bytes",
    "repetitions",
    "prompt_tokens",
    "gen_tokens",
    "depth",
    "prompt_tokens_per_second_mean",
    "prompt_tokens_per_second_sd",
    "generation_tokens_per_second_mean",
    "generation_tokens_per_second_sd",
    "time_to_first_token_ms_mean",
    "time_to_first_token_ms_sd",
    "peak_memory_bytes",
    "speculation",
    "drafted_tokens",
    "accepted_tokens",
    "kv_bits",
    "kv_group_size",
    "kv_quant_start",
    "max_kv_size",
    "adapter",
    "error",
  ];
  const rows: unknown[][] = models.map((r) =>
    isFailure(r)
      ? [r.model, ...header.slice(1, -1).map(() => ""), r.error]
      : [
          r.model,
          r.path,
          r.format,
          r.architecture,
          r.quantization,
          r.sizeBytes,
          r.repetitions,
          r.promptTokens,
          r.genTokens,
          r.depth,
          csvFixed(r.promptTokensPerSecond.mean, 4),
          csvFixed(r.promptTokensPerSecond.sd, 4),
          csvFixed(r.generationTokensPerSecond.mean, 4),
          csvFixed(r.generationTokensPerSecond.sd, 4),
          csvFixed(r.timeToFirstTokenSeconds.mean * 1000, 2),
          csvFixed(r.timeToFirstTokenSeconds.sd * 1000, 2),
          r.peakMemoryBytes,
          r.speculation?.method,
          r.speculation?.drafted,
          r.speculation?.accepted,
          r.kvQuantization?.bits,
          r.kvQuantization?.groupSize,
          r.kvQuantization && (r.kvQuantization.start ?? 0),
          r.maxKvSize,
          r.adapter,
          "",
        ],
  );
  return csv(header, rows);
}

/** What identifies a measured model in the JSON reports. */
function modelSummary(r: ModelInfo) {
  return {
    model: r.model,
    path: r.path,
    format: r.format,
    architecture: r.architecture,
    quantization: r.quantization,
    size_bytes: r.sizeBytes,
    // null where the model ran as loaded: the same keys for every model.
    kv_cache: r.kvQuantization
      ? { bits: r.kvQuantization.bits, group_size: r.kvQuantization.groupSize, start: r.kvQuantization.start ?? 0 }
      : null,
    max_kv_size: r.maxKvSize ?? null,
    adapter: r.adapter ?? null,
  };
}

const speculationJson = (f?: SpeculationFigures) =>
  f && {
    method: f.method,
    num_draft: f.numDraft,
    drafted_tokens: f.drafted,
    accepted_tokens: f.accepted,
    acceptance_rate: f.acceptance,
  };

export function modelJson(models: Outcome<ModelBenchResult>[]) {
  return {
    mode: "model",
    models: succeeded(models).map((r) => ({
      ...modelSummary(r),
      repetitions: r.repetitions,
      prompt_tokens: r.promptTokens,
      gen_tokens: r.genTokens,
      depth: r.depth,
      prompt_tokens_per_second: { ...meanAndSd(r.promptTokensPerSecond), samples: r.samples.promptTokensPerSecond },
      generation_tokens_per_second: {
        ...meanAndSd(r.generationTokensPerSecond),
        samples: r.samples.generationTokensPerSecond,
      },
      time_to_first_token_seconds: {
        ...meanAndSd(r.timeToFirstTokenSeconds),
        samples: r.samples.timeToFirstTokenSeconds,
      },
      peak_memory_bytes: r.peakMemoryBytes,
      prompt_peak_memory_bytes: r.promptPeakMemoryBytes,
      generation_peak_memory_bytes: r.generationPeakMemoryBytes,
      speculation: speculationJson(r.speculation),
    })),
    errors: failed(models),
  };
}

// ---- prompt-suite mode -----------------------------------------------------------------

const clip = (s: string, n: number) => {
  const one = s.replace(/\s+/g, " ").trim();
  return one.length > n ? `${one.slice(0, n - 1)}…` : one;
};
const expectationOf = (p: SuitePrompt) =>
  [p.regex ? `regex ${p.regex.source}` : "", p.schema ? `schema ${p.schema.source}` : ""].filter(Boolean).join(" + ") ||
  "-";

export function suiteTables(models: Outcome<SuiteModelResult>[], prompts: SuitePrompt[]): string {
  const results = succeeded(models);
  const table_ = outcomeTable<SuiteModelResult>(
    [
      { header: "model", cell: (r) => r.model },
      { header: "quantization", cell: (r) => r.quantization },
      { header: "size", right: true, cell: (r) => unlessRemote(r, formatBytes(r.sizeBytes)) },
      ...settingsColumns(results),
      { header: "prompt tokens/s", right: true, cell: (r) => meanSd(r.promptTokensPerSecond), failed: "failed" },
      {
        header: "generation tokens/s",
        right: true,
        cell: (r) => meanSd(r.generationTokensPerSecond),
        failed: "failed",
      },
      { header: "first token (ms)", right: true, cell: (r) => ms(r.timeToFirstTokenSeconds) },
      { header: "peak memory", right: true, cell: (r) => unlessRemote(r, formatBytes(r.peakMemoryBytes)) },
      { header: "passed", right: true, cell: (r) => (r.checked > 0 ? `${r.passed}/${r.checked}` : "-") },
      ...draftsColumns(results),
    ],
    models,
  );
  // No model answered: no figures to explain, no verdicts to list (as model mode shows its failures alone).
  if (results.length === 0) return table_;
  const perPrompt = table(
    ["line", "prompt", "expectation", ...results.map((r) => r.model)],
    prompts.map((p, i) => [
      String(p.line),
      clip(p.prompt, 40),
      clip(expectationOf(p), 40),
      ...results.map((r) => {
        const o = r.prompts[i]!;
        return o.passed === undefined ? "-" : o.passed ? "pass" : "FAIL";
      }),
    ]),
    [true],
  );
  const memory = results.some((r) => r.format !== "remote") ? `; ${peakMemoryNote}` : "";
  return `${table_}\n\nmean ± standard deviation over the ${prompts.length} prompts (greedy, chat template)${memory}.\n\n${perPrompt}`;
}

export function suiteCsv(models: Outcome<SuiteModelResult>[], prompts: SuitePrompt[]): string {
  const header = [
    "model",
    "line",
    "prompt",
    "expectation",
    "passed",
    "reasons",
    "prompt_tokens",
    "generated_tokens",
    "prompt_tokens_per_second",
    "generation_tokens_per_second",
    "time_to_first_token_ms",
    "answer",
    "error",
  ];
  const rows: unknown[][] = [];
  for (const r of models) {
    if (isFailure(r)) {
      rows.push([r.model, ...header.slice(1, -1).map(() => ""), r.error]);
      continue;
    }
    r.prompts.forEach((o, i) => {
      const p = prompts[i]!;
      rows.push([
        r.model,
        o.line,
        p.prompt,
        expectationOf(p),
        o.passed === undefined ? "" : o.passed,
        o.reasons.join("; "),
        o.promptTokens,
        o.generatedTokens,
        csvFixed(o.promptTokensPerSecond, 4),
        csvFixed(o.generationTokensPerSecond, 4),
        csvFixed(o.timeToFirstTokenSeconds * 1000, 2),
        o.text,
        "",
      ]);
    });
  }
  return csv(header, rows);
}

export function suiteJson(models: Outcome<SuiteModelResult>[], prompts: SuitePrompt[]) {
  const results = succeeded(models);
  return {
    mode: "prompts",
    models: results.map((r) => ({
      ...modelSummary(r),
      passed: r.passed,
      checked: r.checked,
      prompt_tokens_per_second: meanAndSd(r.promptTokensPerSecond),
      generation_tokens_per_second: meanAndSd(r.generationTokensPerSecond),
      time_to_first_token_seconds: meanAndSd(r.timeToFirstTokenSeconds),
      peak_memory_bytes: r.peakMemoryBytes,
      speculation: speculationJson(r.speculation),
    })),
    prompts: prompts.map((p, i) => ({
      line: p.line,
      prompt: p.prompt,
      expect_regex: p.regex?.source,
      expect_schema: p.schema?.source,
      results: Object.fromEntries(
        results.map((r) => {
          const o = r.prompts[i]!;
          return [
            r.model,
            {
              passed: o.passed ?? null,
              reasons: o.reasons,
              answer: o.text,
              prompt_tokens: o.promptTokens,
              generated_tokens: o.generatedTokens,
              prompt_tokens_per_second: o.promptTokensPerSecond,
              generation_tokens_per_second: o.generationTokensPerSecond,
              time_to_first_token_seconds: o.timeToFirstTokenSeconds,
            },
          ];
        }),
      ),
    })),
    errors: failed(models),
  };
}

// ---- server mode -----------------------------------------------------------------------

export function serverTable(r: ServerBenchResult): string {
  const header = ["", ...r.levels.map((l) => `c=${l.concurrency}`)];
  const row = (name: string, f: (l: LevelResult) => string) => [name, ...r.levels.map(f)];
  const lat = (name: string, pick: (l: LevelResult) => Summary) => [
    row(`${name} mean (ms)`, (l) => fixed(pick(l).mean, 1)),
    row(`${name} median (ms)`, (l) => fixed(pick(l).median, 1)),
    row(`${name} P99 (ms)`, (l) => fixed(pick(l).p99, 1)),
  ];
  const rows = [
    row("completed requests", (l) => String(l.completed)),
    row("failed requests", (l) => String(l.failed)),
    row("duration (s)", (l) => fixed(l.durationSeconds, 2)),
    row("request throughput (req/s)", (l) => fixed(l.requestsPerSecond, 2)),
    row("input tokens", (l) => fixed(l.inputTokens, 0)),
    row("output tokens", (l) => String(l.outputTokens)),
    row("output tokens/s", (l) => fixed(l.outputTokensPerSecond, 2)),
    ...lat("time to first token", (l) => l.ttftMs),
    ...lat("time per output token", (l) => l.tpotMs),
    ...lat("inter-token latency", (l) => l.itlMs),
    ...lat("end-to-end latency", (l) => l.e2eMs),
  ];
  return `${r.url} · model ${r.model} · up to ${r.maxTokens} tokens per answer · streaming ${endpointPath(r.endpoint)}\n\n${table(
    header,
    rows,
    header.map((_, i) => i > 0),
  )}\n\n${serverNotes}`;
}

/**
 * What each figure of the server table is, where peers define them differently (vLLM's
 * benchmark_serving, llama-bench, ollama --verbose): said under the table, as the model table says its own.
 */
const serverNotes = [
  "after one warm-up request (not counted); each prompt led by a fresh tag, so that no server's prefix cache answers it",
  "output tokens: as the server's usage counts them (else its streamed pieces); an answer ends at its end-of-sequence or the most tokens asked, whichever comes first (end-of-sequence is not ignored)",
  "output tokens/s and request throughput: all completed requests together over the level's duration",
  "time to first token: from sending the request (connection included) to the first streamed text",
  "time per output token: after the first token, (end-to-end latency − time to first token) / (output tokens − 1), per request",
  "inter-token latency: the gaps between streamed pieces (a piece may hold several tokens)",
  "end-to-end latency: from sending the request to the stream's end",
  "latencies are of the completed requests; failed ones are counted, not timed.",
].join("; ");

const latencyColumns = ["ttft", "tpot", "itl", "e2e"] as const;
const pickLatency = (l: LevelResult, k: (typeof latencyColumns)[number]) =>
  ({ ttft: l.ttftMs, tpot: l.tpotMs, itl: l.itlMs, e2e: l.e2eMs })[k];

export function serverCsv(r: ServerBenchResult): string {
  const header = [
    "concurrency",
    "requests",
    "completed",
    "failed",
    "duration_s",
    "requests_per_second",
    "input_tokens",
    "output_tokens",
    "output_tokens_per_second",
    ...latencyColumns.flatMap((k) => [`${k}_ms_mean`, `${k}_ms_median`, `${k}_ms_p99`]),
  ];
  return csv(
    header,
    r.levels.map((l) => [
      l.concurrency,
      l.requests,
      l.completed,
      l.failed,
      csvFixed(l.durationSeconds, 3),
      csvFixed(l.requestsPerSecond, 4),
      l.inputTokens,
      l.outputTokens,
      csvFixed(l.outputTokensPerSecond, 3),
      ...latencyColumns.flatMap((k) => {
        const s = pickLatency(l, k);
        return [csvFixed(s.mean, 2), csvFixed(s.median, 2), csvFixed(s.p99, 2)];
      }),
    ]),
  );
}

export function serverJson(r: ServerBenchResult) {
  return {
    mode: "server",
    url: r.url,
    model: r.model,
    endpoint: endpointPath(r.endpoint),
    max_tokens: r.maxTokens,
    levels: r.levels.map((l) => ({
      concurrency: l.concurrency,
      requests: l.requests,
      completed: l.completed,
      failed: l.failed,
      duration_seconds: l.durationSeconds,
      requests_per_second: l.requestsPerSecond,
      input_tokens: l.inputTokens,
      output_tokens: l.outputTokens,
      output_tokens_per_second: l.outputTokensPerSecond,
      ...Object.fromEntries(
        latencyColumns.map((k) => {
          const s = pickLatency(l, k);
          return [`${k}_ms`, { mean: s.mean, median: s.median, p99: s.p99 }];
        }),
      ),
      errors: l.errors,
    })),
  };
}
