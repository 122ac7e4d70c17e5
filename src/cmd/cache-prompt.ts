// `mlx cache-prompt -m M FILE < document`, as mlx_lm.cache_prompt: prefill a long document once
// and save its keys and values, so that `mlx run --prompt-cache FILE "question"` starts from them.
import { defineCommand } from "citty";
import { accessSync, constants, existsSync, statSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { documentTokens, isPromptCacheFile, prefillPrompt, savePrefilled } from "../engine/prompt-cache-file";
import { writeErrorReason } from "../format";
import type { LoadedModel } from "../models/load";
import { fail, log, setVerbose } from "./log";
import { aliasAdapter } from "../store/aliases";
import { openModel } from "./open-model";
import {
  distributedArgs,
  kvCacheArgs,
  kvQuantizationFrom,
  maxKvSizeFrom,
  modelArg,
  pipelineFrom,
  readStdin,
} from "./options";

export default defineCommand({
  meta: {
    name: "cache-prompt",
    description: "Prefill a document read from stdin and save its KV cache to FILE (for mlx run --prompt-cache)",
  },
  args: {
    file: { type: "positional", required: true, description: "The prompt cache file to write" },
    ...modelArg,
    system: { type: "string", description: "System prompt (give the same to mlx run)" },
    raw: { type: "boolean", description: "Without the model's chat template (then also mlx run --raw)" },
    ...kvCacheArgs,
    ...distributedArgs,
    verbose: { type: "boolean", alias: "v", description: "Stack traces on errors" },
  },
  async run({ args }) {
    setVerbose(Boolean(args.verbose));
    try {
      const options = {
        kvQuantization: kvQuantizationFrom(args, args.model),
        maxKvSize: maxKvSizeFrom(args, args.model),
        pipeline: pipelineFrom(args),
      };
      // A rank after the first of a split model holds layers and writes its share of the file
      // when rank 0 says (stdin is rank 0's): it returns only to exit.
      if (options.pipeline?.rank) await openModel(args.model, options);
      // The prefill runs the base model alone, and run --prompt-cache refuses an adapter.
      const adapter = aliasAdapter(args.model);
      if (adapter !== undefined)
        throw new Error(
          `model '${args.model}' applies an adapter (${adapter}), but a prompt cache holds the base model's keys and values: give its base model`,
        );
      if (process.stdin.isTTY) throw new Error("pipe the document on stdin: mlx cache-prompt FILE < document");
      checkWritable(args.file);
      const text = (await readStdin()).trim();
      if (!text) throw new Error("the document on stdin is empty");
      const lm = await openModel(args.model, options);
      const started = performance.now();
      // Under the alias's system prompt (models.toml) unless --system gives one, as mlx run with that alias reads it.
      const tokens = documentTokens(lm.tokenizer, text, { system: args.system ?? lm.prompt?.system, raw: args.raw });
      checkContext(lm, tokens.length);
      const entry = prefillPrompt(lm, tokens);
      await savePrefilled(lm, args.file, entry, text).catch((error: Error) => {
        // Node's message names the temporary file written first; the user gave args.file.
        throw new Error(`cannot write ${args.file}: ${writeErrorReason(error)}`);
      });
      log.info(
        `cached ${tokens.length} tokens in ${((performance.now() - started) / 1000).toFixed(2)} s: ${args.file}`,
      );
      for (const t of [...entry.keys, ...entry.values].flat()) t.free();
    } catch (error) {
      fail(error, Boolean(args.verbose));
    }
  },
});

/**
 * Before the prefill, which a path that cannot be written would waste (and then report by a
 * temporary file's name): an empty one, a directory, or one in a directory that does not exist;
 * nor is a file of something else written over.
 */
function checkWritable(file: string): void {
  if (!file.trim()) throw new Error("give the file to write: mlx cache-prompt FILE < document");
  if (existsSync(file) && statSync(file).isDirectory()) throw new Error(`cannot write ${file}: it is a directory`);
  // FILE comes first and the document on stdin: `mlx cache-prompt notes.md < notes.md` would
  // replace the document with its keys and values.
  if (existsSync(file) && statSync(file).size > 0 && !isPromptCacheFile(file))
    throw new Error(
      `${file} exists and is not a prompt cache file: give another FILE to write (mlx cache-prompt FILE < document)`,
    );
  const dir = dirname(resolve(file));
  if (!existsSync(dir)) throw new Error(`cannot write ${file}: its directory does not exist`);
  try {
    // A file in place of the directory passes the access check: asked with a trailing slash, it fails it.
    accessSync(`${dir}/`, constants.W_OK);
  } catch (error) {
    throw new Error(`cannot write ${file}: ${writeErrorReason(error)}`);
  }
}

/**
 * A document that fills the model's context leaves no room for a question and its answer:
 * every `run --prompt-cache` of it would fail, so it is refused before the prefill (minutes on
 * a long one) and the file (a gigabyte or more). A rotating cache (--max-kv-size) takes any length.
 */
function checkContext(lm: LoadedModel, tokens: number): void {
  const context = lm.config.maxPositionEmbeddings;
  if (lm.maxKvSize === undefined && tokens >= context)
    throw new Error(
      `the document is ${tokens} tokens, but the model's context is ${context}: no room is left for a question and its answer; shorten it, or give --max-kv-size`,
    );
}
