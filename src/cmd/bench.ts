// `mlx bench`: speed figures of one or more models (llama-bench style), a prompt suite with
// pass/fail expectations, or a load test of any OpenAI-compatible server. Progress goes to
// stderr; a table (or --json / --csv) to stdout; --plot writes an SVG chart.
import { defineCommand } from "citty";
import { accessSync, constants, existsSync, statSync, writeFileSync } from "node:fs";
import { basename, dirname, resolve } from "node:path";
import { writeErrorReason } from "../format";
import { clearMemoryCache } from "../engine/device";
import type { LoadedModel } from "../models/load";
import { loadAliases } from "../store/aliases";
import { readManifest } from "../store/manifest";
import { isRemoteSource } from "../store/pull";
import { benchLoadedModel, type ModelBenchResult } from "../bench/model";
import { benchRemoteModel } from "../bench/remote";
import { remoteModel, shownUrl, type RemoteModel } from "../providers";
import { barChart, lineChart } from "../bench/plot";
import {
  json,
  modelCsv,
  modelJson,
  modelTable,
  serverCsv,
  serverJson,
  serverTable,
  suiteCsv,
  suiteJson,
  suiteTables,
  succeeded,
  type ModelTests,
  type Outcome,
} from "../bench/report";
import { benchServer, endpointPath, type ServerBenchResult } from "../bench/server";
import {
  compileRegex,
  parsePromptFile,
  readSchemaFile,
  runRemoteSuite,
  runSuite,
  type Expectation,
  type SuiteModelResult,
  type SuitePrompt,
} from "../bench/suite";
import { fail, log, setVerbose } from "./log";
import {
  adapterArg,
  adapterFrom,
  distributedArgs,
  givenFlags,
  kvCacheArgs,
  kvQuantizationFlags,
  kvQuantizationFrom,
  list,
  LOCAL_MODEL_FLAGS,
  maxKvSizeFrom,
  numberFlag,
  pipelineFrom,
  positiveInteger,
  refuseLocalModelFlags,
  speculationArgs,
  speculationFlags,
  speculationFrom,
} from "./options";
import { openModel } from "./open-model";
import { repeatable } from "./strict-flags";

export default defineCommand({
  meta: {
    name: "bench",
    description: "Benchmark models (tokens/s, first token, memory), a prompt suite, or an OpenAI-compatible server",
  },
  args: {
    ...kvCacheArgs,
    ...adapterArg,
    ...distributedArgs,
    ...speculationArgs,
    model: repeatable({
      type: "string",
      alias: "m",
      description: "Model to benchmark (repeatable: -m a -m b); in server mode, the model name sent to the server",
    }),
    // No `default:` on the flags of one mode: given to another, they are refused, not ignored.
    repetitions: { type: "string", alias: "n", description: "Runs of each test per model (default 5)" },
    "prompt-tokens": {
      type: "string",
      alias: "p",
      description: "Tokens of the synthetic prompt of the prompt-processing test (default 512; 0: skip it)",
    },
    "gen-tokens": {
      type: "string",
      alias: "g",
      description:
        "Tokens of the generation test, end-of-sequence ignored (default 128; 0: skip it); a remote model's provider that does not take ignore_eos may end it sooner, and its row says how many it counted",
    },
    depth: {
      type: "string",
      alias: "d",
      description:
        "Tokens of context the generation test decodes after, prefilled untimed (as llama-bench's -d): decode speed deep in a conversation (default 0)",
    },
    prompts: {
      type: "string",
      description: "Prompt suite: a file of prompts, plain lines or JSON lines {prompt, expect_regex?, expect_schema?}",
    },
    "expect-regex": {
      type: "string",
      description: "Prompt suite: answers must match this regular expression (unless a prompt gives its own)",
    },
    "expect-schema": {
      type: "string",
      description:
        "Prompt suite: answers must be JSON valid against this JSON-schema file (unless a prompt gives its own)",
    },
    "max-tokens": {
      type: "string",
      description:
        "Most tokens per answer, which may end sooner at its end-of-sequence (prompt suite: 256; server mode: 128)",
    },
    // Repeatable only to be refused: a second --url would otherwise replace the first, unsaid.
    url: repeatable({
      type: "string",
      description: "Server mode: base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8080",
    }),
    concurrency: {
      type: "string",
      description: "Server mode: concurrency levels, comma-separated (default 1,2,4,8,16)",
    },
    requests: { type: "string", description: "Server mode: requests per concurrency level (default 32)" },
    timeout: { type: "string", description: "Server mode: seconds one request may take (default 600)" },
    "api-key": {
      type: "string",
      description:
        "Server mode: the key of a server that requires one, sent as 'Authorization: Bearer <key>' (default: $MLX_API_KEY)",
    },
    json: { type: "boolean", description: "Print one JSON object instead of a table" },
    csv: { type: "boolean", description: "Print CSV instead of a table" },
    plot: { type: "string", description: "Also write an SVG chart to this file" },
    verbose: {
      type: "boolean",
      alias: "v",
      description: "Show progress even when stderr is not a terminal, and stack traces on errors",
    },
  },
  async run({ args }) {
    const verbose = Boolean(args.verbose);
    setVerbose(verbose);
    try {
      if (args.json && args.csv) throw new Error("choose one of --json and --csv");
      const output = args.json ? "json" : args.csv ? "csv" : "table";
      // `--plot ''` (or `--plot=`) is given, and refused below, not taken for no --plot.
      const plot = args.plot === undefined ? undefined : String(args.plot);
      if (plot !== undefined && !plot.trim()) throw new Error("--plot needs a file name");
      if (plot !== undefined) checkPlotFolder(plot);
      // The flags' combinations, checked before any model loads.
      speculationFlags(args);
      kvQuantizationFlags(args);
      let failed = false;
      if (args.url !== undefined) failed = await serverMode(args, output, plot);
      else if (args.prompts !== undefined) failed = await suiteMode(args, output, plot);
      else failed = await modelMode(args, output, plot);
      if (failed) process.exit(1);
    } catch (error) {
      fail(error, verbose);
    }
  },
});

type Args = Record<string, unknown>;
type Output = "json" | "csv" | "table";

const progress = (message: string) => log.info(message);

/** The models named with -m (or the default), each with a display name unique in the report. */
function modelSpecs(args: Args): { spec: string | undefined; name: string }[] {
  const given = list(args.model);
  const specs = given.length > 0 ? given : [undefined];
  const seen = new Map<string, number>();
  return specs.map((spec) => {
    let name = spec === undefined ? loadAliases().defaultModel : displayName(spec);
    const count = (seen.get(name) ?? 0) + 1;
    seen.set(name, count);
    if (count > 1) name = `${name} #${count}`;
    return { spec, name };
  });
}

/** A path by its last part; a source (hf:org/repo) or a stored name (org/repo, pulled from it) whole. */
function displayName(spec: string): string {
  const storedName = !existsSync(spec) && readManifest(spec) !== undefined;
  if (!/[\\/]/.test(spec) || isRemoteSource(spec) || storedName) return spec;
  return basename(spec.replace(/[\\/]+$/, "")) || spec;
}

/**
 * Loads and benchmarks each model in turn (one in memory at a time). A model that fails is
 * reported on stderr right away, and the others still run. Outcomes in command-line order.
 * Ctrl-C reports the models that finished (`report`), not the one in progress, and exits 130.
 */
async function eachModel<T extends object>(
  args: Args,
  bench: (lm: LoadedModel, name: string) => T | Promise<T>,
  benchRemote: (remote: RemoteModel, name: string) => Promise<T>,
  report: (outcomes: Outcome<T>[]) => void,
): Promise<Outcome<T>[]> {
  const outcomes: Outcome<T>[] = [];
  let current = "";
  const stop = () => {
    if (outcomes.length > 0) report(outcomes);
    return `while measuring '${current}': ${outcomes.length > 0 ? "the models that finished are reported" : "no model finished"}`;
  };
  const models = modelSpecs(args).map((m) => ({ ...m, remote: remoteModel(m.spec) }));
  refuseServerUrls(models);
  tellLocalModelFlags(args, models);
  const pipeline = pipelineFrom(args);
  if (pipeline && models.length > 1)
    throw new Error("a model split across processes is benchmarked alone: give one -m");
  await reportingOnInterrupt(stop, async () => {
    for (const { spec, name, remote } of models) {
      current = name;
      let lm: LoadedModel | undefined;
      try {
        if (remote) {
          outcomes.push(await benchRemote(remote, name));
          continue;
        }
        progress(`${name}: loading`);
        lm = await openModel(spec, {
          kvQuantization: kvQuantizationFrom(args, spec),
          maxKvSize: maxKvSizeFrom(args, spec),
          adapter: adapterFrom(args, spec),
          speculation: speculationFrom(args, spec),
          pipeline,
        });
        outcomes.push(await bench(lm, name));
      } catch (error) {
        const message = (error instanceof Error ? error.message : String(error)).split("\n")[0]!;
        outcomes.push({ model: name, error: message });
        process.stderr.write(`error: model '${spec ?? name}' failed: ${message}\n`);
        if (args.verbose && error instanceof Error && error.stack) process.stderr.write(`${error.stack}\n`);
      } finally {
        lm?.free();
        clearMemoryCache();
      }
    }
  });
  return outcomes;
}

/**
 * A server's URL given as -m (to put a server beside models) is no model to load: refused before
 * any model runs, with the two ways bench measures a server, not "model not found" after others ran.
 */
function refuseServerUrls(models: { spec: string | undefined; remote?: RemoteModel }[]): void {
  for (const { spec, remote } of models) {
    if (remote || spec === undefined || !/^https?:\/\//i.test(spec)) continue;
    let shown = spec;
    try {
      shown = shownUrl(new URL(spec));
    } catch {
      // not a URL after all: named as given
    }
    throw new Error(
      `-m ${shown}: a server's URL, not a model; measure the server with --url, or beside models as a models.toml provider (provider = "openai", base_url = ...) named with -m`,
    );
  }
}

/**
 * Runs `work`; a Ctrl-C meanwhile reports what had finished (`stop`, which says what was in
 * progress), says that the run was stopped, and exits 130: the user keeps what was measured.
 */
async function reportingOnInterrupt<R>(stop: () => string, work: () => Promise<R>): Promise<R> {
  const interrupted = () => {
    try {
      process.stderr.write(`stopped (Ctrl-C) ${stop()}\n`);
    } catch (error) {
      // The report itself failed (a plot that cannot be written): said, and the run still stops.
      process.stderr.write(`error: ${error instanceof Error ? error.message : String(error)}\nstopped (Ctrl-C)\n`);
    }
    process.exit(130);
  };
  process.on("SIGINT", interrupted);
  try {
    return await work();
  } finally {
    process.off("SIGINT", interrupted);
  }
}

/**
 * The flags of a model loaded here (--kv-bits, --adapter, --draft-model, ...), which a remote
 * model does not take: refused when every model is remote, as run and chat refuse them; in a
 * comparison with local models they apply to those, and one line says which they skip.
 */
function tellLocalModelFlags(args: Args, models: { spec: string | undefined; name: string; remote?: RemoteModel }[]) {
  const flags = givenFlags(args, LOCAL_MODEL_FLAGS);
  const remotes = models.filter((m) => m.remote);
  if (flags.length === 0 || remotes.length === 0) return;
  if (remotes.length === models.length) refuseLocalModelFlags(args, remotes[0]!.name);
  const names = remotes.map((m) => `'${m.name}'`).join(", ");
  process.stderr.write(
    `warning: ${flags.join(", ")} ${flags.length === 1 ? "applies" : "apply"} to the models loaded here, not to ${names} (served by a remote provider)\n`,
  );
}

function emit(output: Output, asJson: () => unknown, asCsv: () => string, asTable: () => string): void {
  const text = output === "json" ? json(asJson()) : output === "csv" ? asCsv() : asTable();
  process.stdout.write(`${text}\n`);
}

const cannotWritePlot = (file: string, reason: string) => new Error(`cannot write the plot to ${file}: ${reason}`);

/**
 * Before the measurements (minutes, maybe), not after them: the plot's folder is a folder that
 * can be written, and the plot's name is not a folder's (write access alone passes both).
 */
function checkPlotFolder(file: string): void {
  const path = resolve(file);
  let reason: string | undefined;
  try {
    if (!statSync(dirname(path)).isDirectory()) reason = "a folder on its path is a file";
    else if (statSync(path, { throwIfNoEntry: false })?.isDirectory()) reason = "it is a directory";
    else accessSync(dirname(path), constants.W_OK);
  } catch (error) {
    reason = writeErrorReason(error);
  }
  if (reason) throw cannotWritePlot(file, reason);
}

function writePlot(file: string, svgText: string): void {
  try {
    writeFileSync(file, svgText);
  } catch (error) {
    throw cannotWritePlot(file, writeErrorReason(error));
  }
  progress(`wrote ${file}`);
}

const modelTestFlags = ["repetitions", "prompt-tokens", "gen-tokens", "depth"];
const serverFlags = ["concurrency", "requests", "timeout", "api-key"];
const expectationFlags = ["expect-regex", "expect-schema"];

/** Flags of another mode are refused: this mode would silently leave them unused. */
function refuseFlags(args: Args, names: string[], mode: string): void {
  const given = givenFlags(args, names);
  if (given.length > 0) throw new Error(`${given.join(", ")}: not used by ${mode}`);
}

async function modelMode(args: Args, output: Output, plot: string | undefined): Promise<boolean> {
  refuseFlags(args, [...serverFlags, ...expectationFlags, "max-tokens"], "model mode (without --url or --prompts)");
  const repetitions = positiveInteger("repetitions", args.repetitions ?? "5");
  const promptTokens = numberFlag("prompt-tokens", args["prompt-tokens"] ?? "512", { whole: true, zero: true });
  const genTokens = numberFlag("gen-tokens", args["gen-tokens"] ?? "128", { whole: true, zero: true });
  if (promptTokens === 0 && genTokens === 0) throw new Error("-p and -g are both 0: nothing to measure");
  const depth = numberFlag("depth", args.depth ?? "0", { whole: true, zero: true });
  if (depth > 0 && genTokens === 0) throw new Error("--depth sets the generation test's context: give -g too");
  const options = { repetitions, promptTokens, genTokens, depth, onProgress: progress };
  const report = (outcomes: Outcome<ModelBenchResult>[]) => {
    emit(
      output,
      () => modelJson(outcomes),
      () => modelCsv(outcomes),
      () => modelTable(outcomes, options),
    );
    const results = succeeded(outcomes);
    if (plot && results.length > 0) writePlot(plot, modelPlot(results, options));
  };
  const outcomes = await eachModel(
    args,
    (lm, name) => benchLoadedModel(lm, name, options),
    (remote, name) => benchRemoteModel(remote, name, options),
    report,
  );
  if (outcomes.length > 0) report(outcomes);
  return succeeded(outcomes).length < outcomes.length;
}

/** The panels of the tests asked for (`t`), as the table's headers: a remote row's counts are its provider's. */
function modelPlot(results: ModelBenchResult[], t: ModelTests): string {
  const panels = [];
  if (t.promptTokens > 0)
    panels.push({
      title: `Prompt processing (${t.promptTokens}-token prompt)`,
      yLabel: "tokens/s",
      bars: results.map((r) => ({
        label: r.model,
        mean: r.promptTokensPerSecond.mean,
        sd: r.promptTokensPerSecond.sd,
      })),
    });
  if (t.genTokens > 0)
    panels.push({
      title: `Generation (${t.genTokens} tokens${t.depth > 0 ? ` after ${t.depth} of context` : ""})`,
      yLabel: "tokens/s",
      bars: results.map((r) => ({
        label: r.model,
        mean: r.generationTokensPerSecond.mean,
        sd: r.generationTokensPerSecond.sd,
      })),
    });
  return barChart(
    "mlx bench: tokens per second",
    `mean ± standard deviation of ${t.repetitions} runs · higher is better · ${new Date().toISOString().slice(0, 10)}`,
    panels,
  );
}

async function suiteMode(args: Args, output: Output, plot: string | undefined): Promise<boolean> {
  refuseFlags(args, [...modelTestFlags, ...serverFlags], "the prompt suite (--prompts without --url)");
  const maxTokens = positiveInteger("max-tokens", args["max-tokens"] ?? "256");
  const defaults: Expectation = {};
  if (args["expect-regex"] !== undefined) {
    const source = String(args["expect-regex"]);
    defaults.regex = { source, test: compileRegex(source, "--expect-regex") };
  }
  if (args["expect-schema"] !== undefined) defaults.schema = readSchemaFile(String(args["expect-schema"]));
  const prompts = parsePromptFile(String(args.prompts), defaults);
  const options = { maxTokens, onProgress: progress };
  const report = (outcomes: Outcome<SuiteModelResult>[]) => {
    emit(
      output,
      () => suiteJson(outcomes, prompts),
      () => suiteCsv(outcomes, prompts),
      () => suiteTables(outcomes, prompts),
    );
    const results = succeeded(outcomes);
    if (plot && results.length > 0) writePlot(plot, suitePlot(results, prompts));
  };
  const outcomes = await eachModel(
    args,
    (lm, name) => runSuite(lm, name, prompts, options),
    (remote, name) => runRemoteSuite(remote, name, prompts, options),
    report,
  );
  if (outcomes.length > 0) report(outcomes);
  return succeeded(outcomes).length < outcomes.length;
}

function suitePlot(results: SuiteModelResult[], prompts: SuitePrompt[]): string {
  const label = (r: SuiteModelResult) => (r.checked > 0 ? `${r.model} (${r.passed}/${r.checked} pass)` : r.model);
  return barChart(
    "mlx bench: prompt suite",
    `${prompts.length} prompts, greedy · mean ± standard deviation over the prompts · higher is better`,
    [
      {
        title: "Prompt processing",
        yLabel: "tokens/s",
        bars: results.map((r) => ({
          label: label(r),
          mean: r.promptTokensPerSecond.mean,
          sd: r.promptTokensPerSecond.sd,
        })),
      },
      {
        title: "Generation",
        yLabel: "tokens/s",
        bars: results.map((r) => ({
          label: label(r),
          mean: r.generationTokensPerSecond.mean,
          sd: r.generationTokensPerSecond.sd,
        })),
      },
    ],
  );
}

async function serverMode(args: Args, output: Output, plot: string | undefined): Promise<boolean> {
  const urls = list(args.url);
  if (urls.length > 1)
    throw new Error(
      `server mode measures one --url (got ${urls.length}); to compare servers side by side, name each in models.toml (provider = "openai", base_url = ...) and give -m a -m b`,
    );
  const models = list(args.model);
  if (models.length > 1) throw new Error("server mode takes one --model (the name the server knows it by)");
  refuseFlags(args, [...modelTestFlags, ...expectationFlags], "server mode (--url)");
  // A server's KV cache, adapter, speculation and split are those it was started with.
  refuseFlags(args, LOCAL_MODEL_FLAGS, "server mode (--url): a server runs its model as it was started");
  const concurrency = String(args.concurrency ?? "1,2,4,8,16")
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean)
    .map((s) => positiveInteger("concurrency", s));
  if (concurrency.length === 0) throw new Error("--concurrency needs at least one level, e.g. 1,2,4");
  const requests = positiveInteger("requests", args.requests ?? "32");
  // Workers beyond the requests of a level have none to send: such a level measures less concurrency than its label.
  const above = concurrency.filter((c) => c > requests);
  if (above.length > 0)
    process.stderr.write(
      `warning: --concurrency ${above.join(", ")}: more than --requests ${requests}, so ${above.length === 1 ? "that level runs" : "those levels run"} at most ${requests} request${requests === 1 ? "" : "s"} at once\n`,
    );
  const maxTokens = positiveInteger("max-tokens", args["max-tokens"] ?? "128");
  const timeoutSeconds = positiveInteger("timeout", args.timeout ?? "600");
  const prompts = args.prompts === undefined ? defaultServerPrompts : serverPrompts(String(args.prompts));
  const report = (result: ServerBenchResult) => {
    emit(
      output,
      () => serverJson(result),
      () => serverCsv(result),
      () => serverTable(result),
    );
    if (plot) writePlot(plot, serverPlot(result));
  };
  let finished: ServerBenchResult | undefined;
  let level = "the warm-up";
  const stop = () => {
    if (finished) report(finished);
    return `during ${level}: ${finished ? "the concurrency levels that finished are reported" : "no concurrency level finished"}`;
  };
  const result = await reportingOnInterrupt(stop, () =>
    benchServer({
      url: urls[0]!,
      concurrency,
      requests,
      model: models[0],
      maxTokens,
      prompts,
      timeoutSeconds,
      apiKey: args["api-key"] === undefined ? process.env.MLX_API_KEY : String(args["api-key"]),
      onProgress: progress,
      onLevel: (concurrency, sofar) => {
        level = `concurrency ${concurrency}`;
        finished = sofar;
      },
    }),
  );
  report(result);
  // The reasons are otherwise only in --json's errors: a level that completed nothing fails the run.
  for (const l of result.levels.filter((l) => l.failed > 0))
    process.stderr.write(
      `${l.completed === 0 ? "error" : "warning"}: concurrency ${l.concurrency}: ${l.failed} of ${l.requests} requests failed (${l.errors.join("; ")})\n`,
    );
  return result.levels.some((l) => l.completed === 0);
}

/** A prompt file's prompts, sent as load: expectations in it are not checked here, and one line says so. */
function serverPrompts(file: string): string[] {
  const prompts = parsePromptFile(file);
  const judged = prompts.filter((p) => p.regex || p.schema).length;
  if (judged > 0)
    process.stderr.write(
      `warning: ${file}: the expectations of ${judged} prompt${judged === 1 ? "" : "s"} are not checked in server mode (--url), which measures load; the prompt suite (without --url) checks them\n`,
    );
  return prompts.map((p) => p.prompt);
}

const defaultServerPrompts = [
  "Write a short story about a lighthouse keeper and a storm.",
  "Explain how a refrigerator works to a ten-year-old.",
  "List five ideas for a weekend trip, with one sentence each.",
  "Summarize the plot of a heist movie you invent.",
];

function serverPlot(r: ServerBenchResult): string {
  const xs = r.levels.map((l) => l.concurrency);
  const pick = (f: (l: ServerBenchResult["levels"][number]) => number) => r.levels.map(f);
  return lineChart(
    `mlx bench: ${r.url}`,
    `model ${r.model} · up to ${r.maxTokens} tokens per answer · streaming ${endpointPath(r.endpoint)}`,
    "concurrent requests",
    xs,
    [
      {
        title: "Throughput (higher is better)",
        yLabel: "output tokens/s",
        series: [{ name: "output tokens/s", values: pick((l) => l.outputTokensPerSecond) }],
      },
      {
        title: "P99 latency (lower is better)",
        yLabel: "ms",
        series: [
          { name: "end-to-end latency P99", values: pick((l) => l.e2eMs.p99) },
          { name: "time to first token P99", values: pick((l) => l.ttftMs.p99) },
        ],
      },
      {
        title: "P99 per-token latency (lower is better)",
        yLabel: "ms",
        series: [
          { name: "time per output token P99", values: pick((l) => l.tpotMs.p99) },
          { name: "inter-token latency P99", values: pick((l) => l.itlMs.p99) },
        ],
      },
    ],
  );
}
