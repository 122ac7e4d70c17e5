// `mlx run "prompt"`: one answer, streamed to stdout, composable in shell pipelines.
import { defineCommand } from "citty";
import { soloScheduler, streamCompletion, type CompletionResult } from "../engine/generate";
import { settleSampling } from "../engine/model-settings";
import type { LoadedModel } from "../models/load";
import { fail, setVerbose } from "./log";
import { openModel } from "./open-model";
import {
  adapterArg,
  adapterFrom,
  formatArgs,
  formatFrom,
  distributedArgs,
  kvCacheArgs,
  kvQuantizationFrom,
  maxKvSizeFrom,
  list,
  maxTokensFrom,
  modelArg,
  type OutputFormat,
  pipelineFrom,
  positiveInteger,
  readStdin,
  refuseLocalModelFlags,
  samplingArgs,
  samplingFrom,
  speculationArgs,
  speculationFrom,
} from "./options";
import { formatStats } from "./stats";
import { remoteModel, remoteSampling, streamRemoteCompletion } from "../providers";
import { checkThinking, pieceWriter, thinkingArgs, thinkingFrom } from "./thinking";
import { documentTokens, openPromptCache as openPromptCacheFile } from "../engine/prompt-cache-file";
import { PrefixCache } from "../engine/prefix-cache";
import { promptTokens } from "../engine/prompt";
import type { ThinkingRequest } from "../engine/reasoning";
import { repeatable, variadic } from "./strict-flags";

export default defineCommand({
  meta: { name: "run", description: "Answer one prompt and exit (piped stdin is added to the prompt)" },
  args: {
    prompt: variadic({
      type: "positional",
      required: false,
      description: "The prompt (several words are joined, as Ollama's run does); text piped on stdin is appended to it",
    }),
    ...modelArg,
    ...adapterArg,
    system: { type: "string", description: "System prompt" },
    "max-tokens": {
      type: "string",
      description: "Most tokens to generate (default: the model's num_predict in models.toml, else 512)",
    },
    ...samplingArgs,
    ...kvCacheArgs,
    ...speculationArgs,
    stop: repeatable({ type: "string", description: "Stop when the answer contains this text (repeatable)" }),
    "prompt-cache": {
      type: "string",
      description:
        "Start from a document's KV cache saved by mlx cache-prompt (the document comes first in the prompt)",
    },
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
    ...thinkingArgs,
    ...distributedArgs,
  },
  async run({ args }) {
    const verbose = Boolean(args.verbose);
    setVerbose(verbose);
    try {
      const sampling = samplingFrom(args);
      const maxTokensFlag =
        args["max-tokens"] === undefined ? undefined : positiveInteger("max-tokens", args["max-tokens"]);
      const thinking = thinkingFrom(args);
      checkRawThinking(thinking, Boolean(args.raw));
      const output = await formatFrom(args); // before loading the model: a bad schema fails fast
      const stop = stopStrings(args.stop, output);
      const remote = remoteModel(args.model);
      if (remote) refuseLocalModelFlags(args, args.model);
      const adapter = remote ? undefined : adapterFrom(args, args.model);
      checkPromptCache(args["prompt-cache"], { remote: remote !== undefined, adapter, model: args.model });
      const pipeline = pipelineFrom(args);
      const lm = remote
        ? undefined
        : await openModel(args.model, {
            kvQuantization: kvQuantizationFrom(args, args.model),
            maxKvSize: maxKvSizeFrom(args, args.model),
            adapter,
            speculation: speculationFrom(args, args.model),
            pipeline,
          });
      if (lm) checkThinking(lm, thinking);
      const maxTokens = maxTokensFrom(maxTokensFlag, lm, 512);
      checkSystemPrompt(args.system, {
        raw: Boolean(args.raw),
        template: lm ? Boolean(lm.tokenizer.chatTemplate) : true,
      });
      const cached =
        lm && args["prompt-cache"] !== undefined
          ? openPromptCache(lm, args["prompt-cache"], { system: args.system ?? lm.prompt?.system, raw: args.raw })
          : undefined;
      // Ranks after the first hold layers only: the prompt (and stdin) is rank 0's.
      const text = pipeline?.rank ? "" : await readPrompt(args._.map(String).join(" "), cached?.document);
      const controller = new AbortController();
      process.once("SIGINT", () => controller.abort());
      const spec = {
        prompt: { kind: "text", text, template: !args.raw, system: args.system } as const,
        maxTokens,
        stop,
        format: output && { format: output.format, param: "--schema" },
      };
      // A batch of one through the scheduler that serves `mlx serve`, or the remote provider.
      const scheduler = lm && soloScheduler(lm, cached?.prefixCache);
      const stream = scheduler
        ? streamCompletion(scheduler, {
            ...spec,
            // The flags' values, else the alias's (models.toml, a Modelfile's PARAMETERs), else greedy.
            sampling: settleSampling(sampling, {}, lm!.sampling ?? {}),
            thinking,
            signal: controller.signal,
            maxTokensParam: "--max-tokens", // a budget too small is named as the command line names it
          })
        : streamRemoteCompletion(
            remote!,
            { ...spec, sampling: remoteSampling(settleSampling(sampling, {}, {})), thinking },
            controller.signal,
          );
      const writer = pieceWriter({ hide: Boolean(args["hide-thinking"]), terminal: Boolean(process.stdout.isTTY) });
      let step = await stream.next();
      while (!step.done) {
        if (!args.json) process.stdout.write(writer.show(step.value));
        step = await stream.next();
      }
      const result: CompletionResult = step.value;
      scheduler?.dispose();
      if (args.json) process.stdout.write(`${JSON.stringify(jsonResult(result, Boolean(args["hide-thinking"])))}\n`);
      else process.stdout.write(`${writer.end()}\n`);
      if (result.closedEarly && !args.json)
        process.stderr.write(`note: --max-tokens ran out, so the JSON was closed early (it is valid but cut short)\n`);
      // A local model's answer cut short before --max-tokens: the context is full, else it would
      // end mid-sentence without a word (--json says so in finish_reason; a remote provider's limits are not known here).
      else if (
        lm &&
        !args.json &&
        result.finishReason === "length" &&
        result.stats.generatedTokens < (maxTokens ?? Infinity)
      )
        process.stderr.write(
          `note: the context is full (${lm.config.maxPositionEmbeddings} tokens): the answer was cut short\n`,
        );
      if (verbose) process.stderr.write(`${formatStats(result.stats)}\n`);
      if (result.finishReason === "cancelled") process.exit(130);
    } catch (error) {
      fail(error, verbose);
    }
  },
});

/** `text` without its blank lines before and whitespace after: a first line's indentation (code) is kept. */
const withoutBlankEdges = (text: string) => text.replace(/^\s*\n/, "").trimEnd();

/** The prompt's words and piped stdin, after the cached document if there is one. */
async function readPrompt(argument: string, document?: string): Promise<string> {
  const piped = process.stdin.isTTY ? "" : withoutBlankEdges(await readStdin());
  const prompt = [document, withoutBlankEdges(argument), piped].filter((part) => part?.trim()).join("\n\n");
  if (!prompt) throw new Error('no prompt: give one as an argument (mlx run "...") or pipe it on stdin');
  return prompt;
}

function jsonResult(r: CompletionResult, hideThinking: boolean) {
  return {
    text: r.text,
    ...(r.reasoning && !hideThinking ? { reasoning: r.reasoning } : {}),
    finish_reason: r.finishReason,
    closed_early: r.closedEarly,
    prompt_token_ids: r.promptTokenIds,
    token_ids: r.tokenIds,
    stats: {
      prompt_tokens: r.stats.promptTokens,
      cached_tokens: r.stats.cachedTokens,
      prompt_tokens_per_second: r.stats.promptTokensPerSecond,
      generated_tokens: r.stats.generatedTokens,
      generation_tokens_per_second: r.stats.generationTokensPerSecond,
      time_to_first_token_seconds: r.stats.timeToFirstTokenSeconds,
      peak_memory_bytes: r.stats.peakMemoryBytes,
      // Speculative decoding's counts, where it drafted (--prompt-lookup, --draft-model).
      ...(r.stats.draftedTokens > 0
        ? { drafted_tokens: r.stats.draftedTokens, accepted_tokens: r.stats.acceptedTokens }
        : {}),
    },
  };
}

/**
 * --stop's strings, checked: each would change nothing, unsaid, where it is empty (--stop "$UNSET"
 * matches nothing) or the answer is JSON (the grammar ends it, and the engine drops stop strings
 * there, which would cut it into something invalid).
 */
function stopStrings(value: unknown, output: OutputFormat | undefined): string[] {
  const stops = list(value);
  if (stops.includes("")) throw new Error("--stop needs text");
  if (stops.length > 0 && output)
    throw new Error("--stop cannot end a JSON answer (--format, --schema): the grammar ends it; give one or the other");
  return stops;
}

/**
 * --prompt-cache, before the model loads: a file of mlx cache-prompt holds the base model's keys
 * and values, which a run under an adapter would never use (the whole document prefilled, unsaid).
 */
function checkPromptCache(file: string | undefined, o: { remote: boolean; adapter?: string; model?: string }): void {
  if (file === undefined) return;
  if (!file.trim()) throw new Error("--prompt-cache needs a file");
  if (o.remote) throw new Error(`--prompt-cache needs a local model; '${o.model}' is served by a remote provider`);
  if (o.adapter !== undefined)
    throw new Error(
      `--prompt-cache holds the base model's keys and values, which a run with an adapter (${o.adapter}) cannot use: give one or the other`,
    );
}

/**
 * --system goes into the chat template: with --raw, or a model without a template, the prompt is
 * sent as plain text and the system prompt would be dropped, unsaid.
 */
function checkSystemPrompt(system: string | undefined, o: { raw: boolean; template: boolean }): void {
  if (system === undefined) return;
  if (o.raw) throw new Error("--system needs the chat template, which --raw leaves out: give one or the other");
  if (!o.template)
    throw new Error("this model has no chat template to put --system in: write the system prompt into the prompt");
}

/**
 * --think/--no-think switch thinking in the chat template, and a budget bounds the reasoning the
 * template opens: with --raw there is none, and each would change nothing, unsaid.
 */
function checkRawThinking(thinking: ThinkingRequest | undefined, raw: boolean): void {
  if (raw && thinking)
    throw new Error(
      "--think, --no-think and --thinking-budget need the chat template, which --raw leaves out: give one or the other",
    );
}

/** A file of mlx cache-prompt, as the prefix cache a run starts from, and the document it holds. */
function openPromptCache(
  lm: LoadedModel,
  file: string,
  prompt: { system?: string; raw?: boolean },
): { prefixCache: PrefixCache; document?: string } {
  const prefixCache = new PrefixCache(Number.MAX_SAFE_INTEGER, 1);
  const entry = openPromptCacheFile(lm, file, prefixCache);
  // Under another system prompt or template the prompt starts with other tokens than the file
  // holds: every run would prefill the whole document again, the file of no use, unsaid.
  // Files of earlier builds hold the document's whole prompt, its end of turn included.
  const made = (text: string) => [documentTokens(lm.tokenizer, text, prompt), promptTokens(lm.tokenizer, text, prompt)];
  if (entry.text !== undefined && !made(entry.text).some((tokens) => sameTokens(tokens, entry.tokens)))
    throw new Error(
      `${file} holds the document under another system prompt or template: give mlx run the --system and --raw that mlx cache-prompt was given`,
    );
  return { prefixCache, document: entry.text };
}

const sameTokens = (a: number[], b: number[]) => a.length === b.length && a.every((token, i) => token === b[i]);
