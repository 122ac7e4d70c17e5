// `mlx run "prompt"`: one answer, streamed to stdout, composable in shell pipelines.
import { defineCommand } from "citty";
import { soloScheduler, streamCompletion, type CompletionResult } from "../engine/generate";
import { fail, setVerbose } from "./log";
import { openModel } from "./open-model";
import {
  formatArgs,
  formatFrom,
  distributedArgs,
  kvCacheArgs,
  kvQuantizationFrom,
  list,
  modelArg,
  pipelineFrom,
  positiveInteger,
  samplingArgs,
  samplingFrom,
} from "./options";
import { BudgetError } from "../engine/budget/steering";
import { formatStats } from "./stats";

export default defineCommand({
  meta: { name: "run", description: "Answer one prompt and exit (piped stdin is added to the prompt)" },
  args: {
    prompt: { type: "positional", required: false, description: "The prompt; text piped on stdin is appended to it" },
    ...modelArg,
    system: { type: "string", description: "System prompt" },
    "max-tokens": { type: "string", description: "Most tokens to generate", default: "512" },
    ...samplingArgs,
    ...kvCacheArgs,
    stop: { type: "string", description: "Stop when the answer contains this text (repeatable)" },
    raw: { type: "boolean", description: "Send the prompt as it is, without the model's chat template" },
    verbose: {
      type: "boolean",
      alias: "v",
      description: "Print speed and memory figures to stderr, and stack traces on errors",
    },
    json: {
      type: "boolean",
      description: "Print one JSON object (text, token ids, finish reason, figures) instead of streaming",
    },
    ...formatArgs,
    ...distributedArgs,
  },
  async run({ args }) {
    const verbose = Boolean(args.verbose);
    setVerbose(verbose);
    try {
      const sampling = samplingFrom(args);
      const maxTokens = positiveInteger("max-tokens", args["max-tokens"]);
      const output = await formatFrom(args); // before loading the model: a bad schema fails fast
      const pipeline = pipelineFrom(args);
      // Ranks after the first hold layers only: the prompt (and stdin) is rank 0's.
      const text = pipeline?.rank ? "" : await readPrompt(args.prompt);
      const lm = await openModel(args.model, kvQuantizationFrom(args, args.model), pipeline);
      const controller = new AbortController();
      process.once("SIGINT", () => controller.abort());
      // A batch of one through the scheduler that serves `mlx serve`.
      const scheduler = soloScheduler(lm);
      const stream = streamCompletion(scheduler, {
        prompt: { kind: "text", text, template: !args.raw, system: args.system },
        sampling,
        maxTokens,
        stop: list(args.stop),
        format: output && { format: output.format, param: "--schema" },
        signal: controller.signal,
      });
      let step = await cliBudget(() => stream.next()); // the first step prepares the request
      while (!step.done) {
        if (!args.json) process.stdout.write(step.value);
        step = await stream.next();
      }
      const result: CompletionResult = step.value;
      scheduler.dispose();
      if (args.json) process.stdout.write(`${JSON.stringify(jsonResult(result))}\n`);
      else process.stdout.write("\n");
      if (result.closedEarly && !args.json)
        process.stderr.write(`note: --max-tokens ran out, so the JSON was closed early (it is valid but cut short)\n`);
      if (verbose) process.stderr.write(`${formatStats(result.stats)}\n`);
      if (result.finishReason === "cancelled") process.exit(130);
    } catch (error) {
      fail(error, verbose);
    }
  },
});

async function readPrompt(argument: string | undefined): Promise<string> {
  const piped = process.stdin.isTTY ? "" : (await Bun.stdin.text()).trim();
  const prompt = [argument?.trim(), piped].filter(Boolean).join("\n\n");
  if (!prompt) throw new Error('no prompt: give one as an argument (mlx run "...") or pipe it on stdin');
  return prompt;
}

/** A BudgetError in the words of the command line. */
async function cliBudget<T>(make: () => Promise<T>): Promise<T> {
  try {
    return await make();
  } catch (error) {
    if (error instanceof BudgetError) throw new BudgetError(error.maxTokens, error.minimum, "--max-tokens");
    throw error;
  }
}

function jsonResult(r: CompletionResult) {
  return {
    text: r.text,
    finish_reason: r.finishReason,
    closed_early: r.closedEarly,
    prompt_token_ids: r.promptTokenIds,
    token_ids: r.tokenIds,
    stats: {
      prompt_tokens: r.stats.promptTokens,
      prompt_tokens_per_second: r.stats.promptTokensPerSecond,
      generated_tokens: r.stats.generatedTokens,
      generation_tokens_per_second: r.stats.generationTokensPerSecond,
      time_to_first_token_seconds: r.stats.timeToFirstTokenSeconds,
      peak_memory_bytes: r.stats.peakMemoryBytes,
    },
  };
}
