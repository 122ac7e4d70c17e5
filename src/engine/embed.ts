// Embeddings from any model we load: one forward pass per input to the final hidden states
// (after the final norm), pooled as the model's sentence-transformers config says (else on the
// last token), optionally cut to fewer dimensions (Matryoshka style), and L2-normalised. Runs
// on the engine's thread between the scheduler's steps; each input is its own batch of one, so
// no padding or masks can change a vector.
import { ContextLengthError, InvalidParameterError } from "../errors";
import { freeCaches, hiddenStates, makeCaches } from "../models";
import type { LoadedModel } from "../models/load";
import { modelPooling, type Pooling } from "../models/pooling";
import * as mx from "../mlx";

/** Text, or token ids as they are. */
export type EmbedInput = string | number[];

export interface EmbedOptions {
  /** Keep the first `dimensions` values (then normalise again). */
  dimensions?: number;
  /** Cut inputs longer than the context to its length (else a ContextLengthError). */
  truncate?: boolean;
  /** Named in errors about the input (e.g. "input"). */
  param?: string;
}

export interface Embeddings {
  vectors: number[][];
  /** Tokens read, over all inputs. */
  promptTokens: number;
}

const poolings = new WeakMap<LoadedModel, Pooling>();

export async function embed(lm: LoadedModel, inputs: EmbedInput[], o: EmbedOptions = {}): Promise<Embeddings> {
  const param = o.param ?? "input";
  const width = lm.config.hiddenSize;
  if (o.dimensions !== undefined && !(Number.isInteger(o.dimensions) && o.dimensions >= 1 && o.dimensions <= width))
    throw new InvalidParameterError(`dimensions must be between 1 and the model's ${width}`, "dimensions");
  let pooling = poolings.get(lm);
  if (!pooling) poolings.set(lm, (pooling = modelPooling(lm.path)));
  // Several inputs are named by their index in the list.
  const sequences = inputs.map((input, i) =>
    inputIds(lm, input, o.truncate ?? false, inputs.length > 1 ? `${param}.${i}` : param),
  );
  const vectors: number[][] = [];
  for (const ids of sequences) {
    vectors.push(normalized(pooledHidden(lm, ids, pooling).slice(0, o.dimensions ?? width)));
    // A long batch must not hold up the answers being generated.
    await new Promise((resolve) => setImmediate(resolve));
  }
  return { vectors, promptTokens: sequences.reduce((n, ids) => n + ids.length, 0) };
}

function inputIds(lm: LoadedModel, input: EmbedInput, truncate: boolean, at: string): number[] {
  const ids = typeof input === "string" ? lm.tokenizer.encode(input, { addSpecialTokens: true }) : input;
  if (ids.length === 0) throw new InvalidParameterError(`'${at}' is empty`, at);
  const vocab = lm.config.vocabSize;
  const bad = ids.find((id) => !(Number.isInteger(id) && id >= 0 && id < vocab));
  if (bad !== undefined)
    throw new InvalidParameterError(`'${at}' holds token id ${bad}, outside the model's vocabulary (${vocab})`, at);
  const context = lm.config.maxPositionEmbeddings;
  if (ids.length <= context) return ids;
  if (truncate) return ids.slice(0, context);
  throw new ContextLengthError(`'${at}' is ${ids.length} tokens, but the model's context is ${context} tokens`, at);
}

/** One sequence's final hidden states, pooled to one vector. */
function pooledHidden(lm: LoadedModel, ids: number[], pooling: Pooling): number[] {
  const caches = makeCaches(lm.model);
  // Split across processes: the other ranks' layers run too, and their hidden states come back.
  lm.model.remote?.wholePass(caches);
  try {
    return mx.scope(() => {
      const h = hiddenStates(lm.model, mx.array(Int32Array.from(ids), [1, ids.length]), caches);
      const [, length, width] = h.shape as [number, number, number];
      const at = (position: number) => mx.slice(h, [0, position, 0], [1, position + 1, width]);
      const pooled =
        pooling === "mean"
          ? mx.mean(h, [1])
          : pooling === "max"
            ? mx.max(h, [1])
            : pooling === "cls"
              ? at(0)
              : at(length - 1);
      return mx.astype(pooled, mx.Dtype.float32).toArray();
    });
  } finally {
    lm.model.remote?.release(caches);
    freeCaches(caches);
  }
}

function normalized(v: number[]): number[] {
  const norm = Math.hypot(...v);
  return norm > 0 ? v.map((x) => x / norm) : v;
}
