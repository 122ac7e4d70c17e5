// Embeddings from any model we load: a forward pass per input to the final hidden states
// (after the final norm), pooled as the model's sentence-transformers config says (else on the
// last token), optionally cut to fewer dimensions (Matryoshka style), and L2-normalised. Runs
// on the engine's thread between the scheduler's steps, a prompt chunk at a time as a prefill
// is, so that a long input, or many short ones, hold up the answers being generated no longer
// than a chunk, and stops at the chunk after its request is cancelled; each input is its own
// batch of one, so no padding or masks can change a vector.
import { nextTurn, type Steps } from "../event-loop";
import { ContextLengthError, InvalidParameterError } from "../errors";
import { cacheState, embeddingCaches, freeCaches, hiddenStates } from "../models";
import type { LoadedModel } from "../models/load";
import type { Adapter } from "../models/lora";
import {
  isSentenceTransformersModel,
  modelPooling,
  sentenceTransformersLowerCase,
  sentenceTransformersMaxLength,
  sentenceTransformersPrompt,
  type Pooling,
} from "../models/pooling";
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { DEFAULT_PREFILL_CHUNK } from "./batch";

/** Text, or token ids as they are. */
export type EmbedInput = string | number[];

export interface EmbedOptions {
  /** Keep the first `dimensions` values (then normalise again). */
  dimensions?: number;
  /** Cut inputs longer than the context to its length (else a ContextLengthError). */
  truncate?: boolean;
  /** A context shorter than the model's (Ollama's num_ctx): inputs are cut or refused at it. */
  context?: number;
  /**
   * vLLM's truncate_prompt_tokens: each input cut to its first this many tokens (those the
   * tokenizer adds kept), -1 to the context; more than the context is refused, as vLLM does.
   */
  truncatePromptTokens?: number;
  /** Named in errors about the input (e.g. "input"). */
  param?: string;
  /** Stops the work between two chunks (an EmbeddingCancelled): the client went away. */
  signal?: AbortSignal;
  /** Positions per pass, the server's current prefill chunk: the answers being generated go on between two. */
  chunk?: number;
  /** The LoRA/DoRA adapter the model name stands for (default: the model's own, as a generation's). */
  adapter?: Adapter;
}

/** The embedding's request was cancelled before its vectors were done. */
export class EmbeddingCancelled extends Error {
  override name = "EmbeddingCancelled";
}

/**
 * An input whose pooled hidden states are not finite (NaN or infinity: the model's pass
 * overflowed on it, as a float16 checkpoint can): it has no embedding, rather than a vector
 * of NaN, which JSON writes as nulls.
 */
export class NonFiniteEmbeddingError extends Error {
  override name = "NonFiniteEmbeddingError";
  constructor(readonly param: string) {
    super(`'${param}' has no embedding: the model's hidden states for it are not finite numbers (NaN or infinity)`);
  }
}

function stopIfCancelled(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new EmbeddingCancelled("the embedding request was cancelled");
}

export interface Embeddings {
  vectors: number[][];
  /** Tokens read, over all inputs. */
  promptTokens: number;
}

/** How a model embeds, read once from its sentence-transformers files. */
interface EmbeddingConfig {
  pooling: Pooling;
  /** The most tokens an input has (max_seq_length): the model's context when it says none or more. */
  maxLength?: number;
  /** Put before every text input (its default prompt, e.g. "query: "); token ids are taken as they are. */
  prompt?: string;
  /** Texts, prompt included, lose the white space around them before tokenizing (a sentence-transformers model). */
  stripped: boolean;
  /** Texts, prompt included, are lower-cased before tokenizing (do_lower_case). */
  lowerCase: boolean;
}

const embeddingConfigs = new WeakMap<LoadedModel, EmbeddingConfig>();

/** Longest stretch of tokenizing between two turns of the event loop (about a decode step). */
const TOKENIZING_TURN_MS = 20;

export async function embed(lm: LoadedModel, inputs: EmbedInput[], o: EmbedOptions = {}): Promise<Embeddings> {
  const param = o.param ?? "input";
  const width = lm.config.hiddenSize;
  if (o.dimensions !== undefined && !(Number.isInteger(o.dimensions) && o.dimensions >= 1 && o.dimensions <= width))
    throw new InvalidParameterError(`dimensions must be between 1 and the model's ${width}`, "dimensions");
  const config = embeddingConfig(lm);
  const context = embeddingContext(lm, config);
  if (o.truncatePromptTokens !== undefined && o.truncatePromptTokens > context)
    throw new InvalidParameterError(
      `truncate_prompt_tokens is ${o.truncatePromptTokens}, more than the model's context of ${context} tokens (-1 keeps as many as it holds)`,
      "truncate_prompt_tokens",
    );
  const sequences = await inputsIds(lm, inputs, config, o, param);
  const { pooling } = config;
  const vectors: number[][] = [];
  for (const [i, ids] of sequences.entries()) {
    const pooled = await pooledHidden(lm, ids, pooling, o);
    if (!pooled.every(Number.isFinite)) throw new NonFiniteEmbeddingError(inputs.length > 1 ? `${param}.${i}` : param);
    vectors.push(normalized(pooled.slice(0, o.dimensions ?? width)));
  }
  return { vectors, promptTokens: sequences.reduce((n, ids) => n + ids.length, 0) };
}

function embeddingConfig(lm: LoadedModel): EmbeddingConfig {
  let config = embeddingConfigs.get(lm);
  if (config) return config;
  const pooling = modelPooling(lm.path);
  config = {
    pooling,
    maxLength: sentenceTransformersMaxLength(lm.path),
    prompt: sentenceTransformersPrompt(lm.path, pooling),
    stripped: isSentenceTransformersModel(lm.path),
    lowerCase: sentenceTransformersLowerCase(lm.path),
  };
  embeddingConfigs.set(lm, config);
  return config;
}

/**
 * Every input's token ids, checked before any pass; tokenizing many long inputs (or one of
 * megabytes) takes seconds, so the event loop gets a turn every TOKENIZING_TURN_MS (the streams
 * go on, a cancel is seen).
 */
async function inputsIds(
  lm: LoadedModel,
  inputs: EmbedInput[],
  config: EmbeddingConfig,
  o: EmbedOptions,
  param: string,
): Promise<number[][]> {
  const sequences: number[][] = [];
  let turnStarted = performance.now();
  for (const [i, input] of inputs.entries()) {
    // Several inputs are named by their index in the list.
    const steps = inputIds(lm, input, config, o, inputs.length > 1 ? `${param}.${i}` : param);
    for (let step = steps.next(); ; step = steps.next()) {
      if (step.done) {
        sequences.push(step.value);
        break;
      }
      if (performance.now() - turnStarted > TOKENIZING_TURN_MS) {
        await nextTurn();
        stopIfCancelled(o.signal);
        turnStarted = performance.now();
      }
    }
  }
  return sequences;
}

/** An input's token ids, pausing between the pieces of a long text and after each input. */
function* inputIds(
  lm: LoadedModel,
  input: EmbedInput,
  config: EmbeddingConfig,
  o: EmbedOptions,
  at: string,
): Steps<number[]> {
  // An empty text is refused as OpenAI refuses it, whatever the tokenizer adds: one that adds a
  // BOS or EOS (Llama, Qwen3-Embedding) gave that token's vector, another none (a 400).
  if (input === "") throw new InvalidParameterError(`'${at}' is empty`, at);
  const ids =
    typeof input === "string"
      ? yield* lm.tokenizer.encodeSteps(modelText(input, config), { addSpecialTokens: true })
      : input;
  yield;
  if (ids.length === 0) throw new InvalidParameterError(`'${at}' is empty`, at);
  const vocab = lm.config.vocabSize;
  const bad = ids.find((id) => !(Number.isInteger(id) && id >= 0 && id < vocab));
  if (bad !== undefined)
    throw new InvalidParameterError(`'${at}' holds token id ${bad}, outside the model's vocabulary (${vocab})`, at);
  const { maxLength } = config;
  const model = embeddingContext(lm, config);
  const keep = o.truncatePromptTokens;
  const context = Math.min(model, o.context ?? model, keep === undefined || keep === -1 ? model : keep);
  if (ids.length <= context) return ids;
  if (o.truncate || keep !== undefined)
    return typeof input === "string" ? cutKeepingSpecials(lm, ids, context) : ids.slice(0, context);
  const whose = context < model ? "the requested" : "the model's";
  const why = context === maxLength ? " (its sentence-transformers max_seq_length)" : "";
  throw new ContextLengthError(`'${at}' is ${ids.length} tokens, but ${whose} context is ${context} tokens${why}`, at);
}

/** The most tokens an input may have: a sentence-transformers model's max_seq_length, where shorter than the model's context. */
function embeddingContext(lm: LoadedModel, { maxLength }: EmbeddingConfig): number {
  return Math.min(lm.config.maxPositionEmbeddings, maxLength ?? Infinity);
}

/**
 * A text as a sentence-transformers model tokenizes it (SentenceTransformer.encode, then its
 * Transformer module): after its prompt, stripped, lower-cased where it says so.
 */
function modelText(input: string, { prompt, stripped, lowerCase }: EmbeddingConfig): string {
  const prompted = (prompt ?? "") + input;
  const text = stripped ? pythonStrip(prompted) : prompted;
  return lowerCase ? text.toLowerCase() : text;
}

/** The characters Python's str.strip() takes off (str.isspace): JavaScript's trim() keeps \x1c-\x1f and \x85, and takes a BOM (\ufeff). */
const PYTHON_WHITESPACE = new Set(
  "\t\n\v\f\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000",
);

/** `text` as Python's str.strip() leaves it (the sentence-transformers Transformer module's strip). */
function pythonStrip(text: string): string {
  let start = 0;
  let end = text.length;
  while (start < end && PYTHON_WHITESPACE.has(text[start]!)) start++;
  while (end > start && PYTHON_WHITESPACE.has(text[end - 1]!)) end--;
  return text.slice(start, end);
}

/**
 * A text's ids cut to `context` as sentence-transformers' tokenizer (and Ollama) cut them: the
 * text's own tokens are cut, those the tokenizer adds around them kept (Qwen3-Embedding's EOS,
 * the token it pools on).
 */
function cutKeepingSpecials(lm: LoadedModel, ids: number[], context: number): number[] {
  const { before, after } = lm.tokenizer.specialsAround() ?? { before: [], after: [] };
  const kept = before.length + after.length;
  if (kept >= context) return ids.slice(0, context);
  return [...before, ...ids.slice(before.length, context - after.length), ...after];
}

/**
 * One sequence's final hidden states, pooled to one vector: a chunk of positions at a time (the
 * cache carries the earlier ones), each chunk's pooled into a running mean, maximum, first or
 * last position. A model split across processes too: each chunk goes round the ranks, whose
 * caches carry the earlier ones as ours do (a whole input at once kept a pipeline's next rank
 * waiting on this one's layers past the peer timeout, which stopped every rank).
 */
async function pooledHidden(lm: LoadedModel, ids: number[], pooling: Pooling, o: EmbedOptions): Promise<number[]> {
  // Keys and values as computed, not narrowed to float16 as a generation's float32 ones are:
  // sentence-transformers' vectors within float32's rounding, not float16's.
  const caches = embeddingCaches(lm.model);
  // Split across processes: the other ranks' layers run too, and their hidden states come back.
  lm.model.remote?.wholePass(caches);
  const chunk = o.chunk ?? DEFAULT_PREFILL_CHUNK;
  // A name that stands for a base plus an adapter embeds with the adapter, as it generates.
  const adapter = o.adapter ?? lm.adapter;
  const forward = (tokens: MxArray) => {
    const pass = () => hiddenStates(lm.model, tokens, caches);
    return adapter ? adapter.base.run([adapter], pass) : pass();
  };
  let pooled: MxArray | undefined;
  try {
    for (let start = 0; start < ids.length; start += chunk) {
      // Before each chunk, of each input, the scheduler's answers go on and a cancel is seen:
      // a request of many short inputs holds up the streams no longer than one of them.
      await nextTurn();
      stopIfCancelled(o.signal);
      const part = ids.slice(start, start + chunk);
      const next = mx.scope(() => {
        const h = mx.astype(forward(mx.array(Int32Array.from(part), [1, part.length])), mx.Dtype.float32);
        const [, length, width] = h.shape as [number, number, number];
        const at = (position: number) =>
          mx.reshape(mx.slice(h, [0, position, 0], [1, position + 1, width]), [1, width]);
        if (pooling === "mean") return mx.add(mx.sum(h, [1]), pooled ?? 0);
        if (pooling === "max") return pooled ? mx.maximum(mx.max(h, [1]), pooled) : mx.max(h, [1]);
        if (pooling === "cls") return at(0);
        return at(length - 1);
      });
      mx.evaluate(next, ...cacheState(caches));
      pooled?.free();
      pooled = next;
      // The first position's states depend on it alone (causal attention): the rest need no pass.
      if (pooling === "cls") break;
    }
    return pooling === "mean" ? mx.scope(() => mx.divide(pooled!, ids.length).toArray()) : pooled!.toArray();
  } finally {
    pooled?.free();
    lm.model.remote?.release(caches);
    freeCaches(caches);
  }
}

/**
 * A vector of unit length, each value a float32 (as the model computes it, and as OpenAI, vLLM and
 * Ollama give it): the JSON's numbers are then exactly those base64's float32 bytes decode to.
 */
function normalized(v: number[]): number[] {
  const norm = Math.hypot(...v);
  return norm > 0 ? v.map((x) => Math.fround(x / norm)) : v;
}
