// Speculative decoding: a cheap drafter proposes the next few tokens of a sequence, the target
// model scores all of them in one forward pass, and the longest prefix the target agrees with
// is kept, plus one token of the target's own. Two drafters: a smaller model of the same
// vocabulary (--draft-model), and prompt lookup (--prompt-lookup: the continuation of the
// latest earlier occurrence of the last few tokens, from the prompt or the answer so far).
// Verification keeps the output exactly what the target alone would produce: greedy, the same
// tokens; sampled, the same distribution, by the speculative sampling rule (Leviathan et al.
// 2023, Chen et al. 2023): accept a draft token d with probability min(1, p(d)/q(d)), and on
// rejection sample from the normalised max(0, p - q); sampled with a seed, the same tokens (see
// drawsAsAlone).
import * as mx from "../mlx";
import type { MxArray } from "../mlx";
import { freeCaches, makeCaches, type DecoderModel, type KVCache } from "../models";
import { droppedBy, PrefixCache, seedCaches } from "./prefix-cache";
import { ModelLoadError, type LoadedModel, type SpeculationChoice } from "../models/load";
import { ModelNotFoundError, UnsupportedError } from "../errors";
import {
  drawToken,
  samplingLogits,
  type LogitsProcessor,
  type RandomKeys,
  type Sampler,
  type SamplingParams,
} from "./sampling";

export interface SpeculationOptions {
  /** A smaller model of the target's vocabulary that drafts; else prompt lookup drafts. */
  draftModel?: DecoderModel;
  /** Tokens drafted per step. */
  numDraft: number;
  /** Speculate only while at most this many sequences decode (see speculationMaxBatch). */
  maxBatch: number;
  /** Tokens that end an answer: a draft stops at one, as nothing after it is ever shown. */
  endTokens?: ReadonlySet<number>;
  /**
   * The draft model's keys and values of sequences that ended, as the target's prefix cache
   * keeps the target's: a follow-up request's draft starts from them rather than prefilling its
   * whole history again (a long conversation's every turn).
   */
  draftPrefixCache?: PrefixCache;
}

/**
 * The batch size up to which speculation pays on the CPU backend: past it the batched decode
 * step already keeps the cores busy, and verifying K+1 positions per sequence costs more than
 * the accepted tokens save. Measured with bench/speculative.ts (bench/RESULTS.md, "Speculative
 * decoding"): prompt lookup on the rewrite prompt, over 90% of drafts accepted, made the
 * batch's total tokens/s 1.4-1.9× at 1 sequence, but 0.64-1.09× at 2 (three runs) and below
 * 1× at 3 and 4.
 */
export const speculationMaxBatch = 1;

/**
 * Turns speculation on for `lm` as chosen: a draft model (opened with `open`, freed with `lm`)
 * must share the target's vocabulary, token for token, or its drafts would mean other words.
 * One that does not is an error; or, with `otherVocabulary: "skip"` (a server's --draft-model,
 * and a model it serves besides its own), `lm` goes without speculation and the reason is returned.
 */
export async function attachSpeculation(
  lm: LoadedModel,
  choice: SpeculationChoice | undefined,
  open: (name: string) => Promise<LoadedModel>,
  o: { otherVocabulary?: "refuse" | "skip" } = {},
): Promise<string | undefined> {
  if (!choice) return;
  if (!choice.draftModel) {
    lm.speculation = { numDraft: choice.numDraft };
    return;
  }
  const draft = await openDraft(choice.draftModel, open);
  const mismatch = vocabularyMismatch(lm, draft);
  if (mismatch) {
    draft.free();
    const reason = `the draft model '${choice.draftModel}' cannot draft for this model: ${mismatch}`;
    if (o.otherVocabulary === "skip") return reason;
    throw new UnsupportedError(reason, "draft_model");
  }
  lm.speculation = { draft, numDraft: choice.numDraft };
  const free = lm.free;
  lm.free = () => {
    draft.free();
    free();
  };
}

/**
 * The draft model, its errors said to be the draft model's: a server's client would otherwise
 * read that the model it asked for is unknown (a 404 on `model`), or failed to load.
 */
async function openDraft(name: string, open: (name: string) => Promise<LoadedModel>): Promise<LoadedModel> {
  try {
    return await open(name);
  } catch (error) {
    // Unsupported too: a remote alias named as the draft has no weights to draft with.
    if (error instanceof ModelNotFoundError || error instanceof UnsupportedError)
      throw new UnsupportedError(`draft model: ${error.message}`, "draft_model");
    if (error instanceof ModelLoadError) throw new ModelLoadError(`draft model: ${error.message}`);
    throw error;
  }
}

/**
 * The generator's speculation options for what attachSpeculation set on `lm` (none: undefined).
 * With a prefix cache for the target, the draft model gets one too, bounded alike: as many
 * bytes for each position the draft's cache holds as the target's budget gives each of its own.
 */
export function speculationOptions(lm: LoadedModel, prefixCache?: PrefixCache): SpeculationOptions | undefined {
  if (!lm.speculation) return undefined;
  const draft = lm.speculation.draft;
  const positionWidth = (m: LoadedModel) => m.config.numHiddenLayers * m.config.numKeyValueHeads * m.config.headDim;
  return {
    draftModel: draft?.model,
    numDraft: lm.speculation.numDraft,
    maxBatch: speculationMaxBatch,
    endTokens: lm.tokenizer.eosTokenIds,
    draftPrefixCache:
      draft && prefixCache
        ? new PrefixCache(
            Math.round((prefixCache.maxBytes * positionWidth(draft)) / positionWidth(lm)),
            prefixCache.maxEntries,
          )
        : undefined,
  };
}

/**
 * Why two models' vocabularies differ (size, or a token), or undefined when they agree. Their
 * logits may still differ in width (an embedding padded past the vocabulary, as Qwen2.5's larger
 * models pad theirs): modelDraft drafts within the target's.
 */
function vocabularyMismatch(target: LoadedModel, draft: LoadedModel): string | undefined {
  const [t, d] = [target.tokenizer, draft.tokenizer];
  if (t.vocabSize !== d.vocabSize) return `its vocabulary has ${d.vocabSize} tokens, the model's ${t.vocabSize}`;
  for (let id = 0; id < t.vocabSize; id++) {
    if (t.idToToken(id) !== d.idToToken(id))
      return `token ${id} is '${d.idToToken(id)}' in it but '${t.idToToken(id)}' in the model`;
  }
  return undefined;
}

/** Accepted over drafted tokens (0 before any draft). */
export function acceptanceRate(c: { drafted: number; accepted: number }): number {
  return c.drafted > 0 ? c.accepted / c.drafted : 0;
}

/** What a sequence brings to its drafter and to verification. */
export interface SpeculatingSequence {
  /** Tokens in the target's cache (prompt and answer so far, without `next`). */
  history: number[];
  /** The token the next step feeds. */
  next: number;
  sampling: SamplingParams;
  processors: LogitsProcessor[];
  sample: Sampler;
  keys: RandomKeys;
  /** The draft model's cache for this sequence and how many of `history` it holds. */
  draft?: { caches: KVCache[]; fed: number };
}

export interface Draft {
  tokens: number[];
  /** [k, vocab] the draft model's sampling probabilities for its tokens (absent: certain drafts). */
  probabilities?: MxArray;
}

/** N-gram sizes prompt lookup tries, longest first; a shorter match drafts too often wrongly. */
const lookupNgram = { max: 3, min: 2 };

/**
 * Up to `count` tokens that followed the latest earlier occurrence of the last few tokens of
 * `context`, through the first of `endTokens` (an earlier turn's end in a chat's prompt).
 */
export function lookupDraft(context: readonly number[], count: number, endTokens?: ReadonlySet<number>): number[] {
  for (let n = Math.min(lookupNgram.max, context.length - 1); n >= lookupNgram.min; n--) {
    const tail = context.length - n;
    for (let start = tail - 1; start >= 0; start--) {
      let i = 0;
      while (i < n && context[start + i] === context[tail + i]) i++;
      if (i !== n) continue;
      const found = context.slice(start + n, start + n + count);
      const end = endTokens ? found.findIndex((token) => endTokens.has(token)) : -1;
      return end < 0 ? found : found.slice(0, end + 1);
    }
  }
  return [];
}

/** Applies a sequence's processors to logits [1, vocab] as if `drafted` followed its history. */
function processed(s: SpeculatingSequence, row: MxArray, drafted: number[]): MxArray {
  if (s.processors.length === 0) return row;
  const history = [...s.history, s.next, ...drafted];
  for (const process of s.processors) row = process(history, row);
  return row;
}

const logSoftmax = (logits: MxArray) => mx.subtract(logits, mx.logsumexp(logits, -1, true));

/**
 * Whether the sequence's tokens are drawn with the keys of its seed: its drafts are then drawn,
 * and checked, with the keys that decoding one token at a time would take for them, and a draft
 * token is kept while it is the token the model draws with that key. Its answer is then the one
 * it gives without speculation, token for token, whether or not each step speculated (which a
 * server decides by how many sequences run), and each token still follows the model's
 * distribution; a certain draft (prompt lookup) is kept with probability p(d), as by the
 * speculative sampling rule.
 */
const drawsAsAlone = (s: SpeculatingSequence) => s.sampling.temperature > 0 && s.sampling.seed !== undefined;

/**
 * Drafts `count` tokens with the draft model, token by token, as the sequence's sampler would
 * with the draft's logits (same processors and sampling) made `width` wide (the target's), or
 * fewer when one of `endTokens` ends it. The draft's cache first catches up with what the target
 * took since it last drafted, in chunks of `chunk` tokens.
 */
export function modelDraft(
  model: DecoderModel,
  s: SpeculatingSequence,
  count: number,
  o: {
    chunk: number;
    width: number;
    endTokens?: ReadonlySet<number>;
    maxKvSize?: number;
    reserve?: number;
    prefixCache?: PrefixCache;
  },
): Draft {
  s.draft ??= startDraft(model, s.history, o);
  const { caches } = s.draft;
  const feed = (tokens: number[]) =>
    model.layers(model.embed(mx.array(Int32Array.from(tokens), [1, tokens.length])), caches);
  let pending = [...s.history.slice(s.draft.fed), s.next];
  while (pending.length > o.chunk) {
    mx.scope(() => void feed(pending.slice(0, o.chunk)));
    mx.evaluate(...caches.flatMap((c) => c.state));
    pending = pending.slice(o.chunk);
  }
  const tokens: number[] = [];
  const probabilities: MxArray[] = [];
  const keys = drawsAsAlone(s) ? mx.scope(() => s.keys.ahead(count)) : undefined;
  while (tokens.length < count) {
    const [token, probability] = mx.scope(() => {
      const hidden = feed(pending);
      const last = mx.slice(hidden, [0, pending.length - 1, 0], [1, pending.length, hidden.shape[2]!]);
      const logits = widened(mx.reshape(model.head(last), [1, -1]), o.width);
      const logprobs = logSoftmax(processed(s, logits, tokens));
      const token = keys ? drawToken(s.sampling, logprobs, keys[tokens.length]) : s.sample(logprobs);
      // Only the speculative sampling rule weighs a draft by its probability.
      const probability =
        s.sampling.temperature > 0 && !keys ? mx.softmax(samplingLogits(s.sampling, logprobs)) : undefined;
      mx.evaluate(token, ...(probability ? [probability] : []));
      return [token.item(), probability] as const;
    });
    tokens.push(token);
    if (probability) probabilities.push(probability);
    if (o.endTokens?.has(token)) break;
    pending = [token];
  }
  for (const key of keys ?? []) key?.free();
  // It now holds history, next and every draft token but the last.
  s.draft.fed = s.history.length + tokens.length;
  if (probabilities.length === 0) return { tokens };
  const stacked = mx.concatenate(probabilities, 0);
  for (const p of probabilities) p.free();
  return { tokens, probabilities: stacked };
}

/** A sequence's draft cache, from the longest prefix of its history the draft's prefix cache holds. */
function startDraft(
  model: DecoderModel,
  history: number[],
  o: { maxKvSize?: number; reserve?: number; prefixCache?: PrefixCache },
): NonNullable<SpeculatingSequence["draft"]> {
  const caches = makeCaches(model, { windowed: false, maxKvSize: o.maxKvSize, reserve: o.reserve });
  const stored = o.prefixCache?.lookup(history, history.length);
  if (!stored) return { caches, fed: 0 };
  seedCaches(caches, stored.keys, stored.values, stored.length, stored.dropped);
  return { caches, fed: stored.length };
}

/**
 * What a sequence that ends leaves in the draft's prefix cache: the positions its draft cache
 * holds of its history and next token (the rejected drafts were taken back).
 */
export function keepDraft(s: SpeculatingSequence, prefixCache: PrefixCache | undefined): void {
  if (!s.draft || !prefixCache) return;
  const tokens = [...s.history, s.next].slice(0, s.draft.fed);
  prefixCache.insert(tokens, s.draft.caches, 0, 0, droppedBy(s.draft.caches, 0));
}

/**
 * Draft logits [1, V] made [1, width]: ids the target has not are never drafted (sliced off),
 * ids the draft has not never drafted either (-∞), so its probabilities line up with the target's.
 */
function widened(logits: MxArray, width: number): MxArray {
  const have = logits.shape[1]!;
  if (have === width) return logits;
  if (have > width) return mx.slice(logits, [0, 0], [1, width]);
  return mx.concatenate([logits, mx.full([1, width - have], -Infinity, logits.dtype)], 1);
}

/** After `accepted` of `drafted` tokens were kept: the draft cache forgets what the target rejected. */
export function rollbackDraft(s: SpeculatingSequence, historyBefore: number, drafted: number, accepted: number): void {
  if (!s.draft) return;
  // It holds next and the first drafted - 1 tokens (the last was never fed).
  const valid = historyBefore + 1 + Math.min(accepted, drafted - 1);
  for (const c of s.draft.caches) c.trim(valid);
  s.draft.fed = valid;
}

export function freeDraft(s: SpeculatingSequence): void {
  if (s.draft) freeCaches(s.draft.caches);
  s.draft = undefined;
}

/** A verified step of one sequence, on the host. */
export interface Verified {
  /** The tokens it emits: the accepted draft tokens and one of the target's own. */
  tokens: number[];
  /** Their log-probabilities under the target (after processors, before sampling filters). */
  logprobs: number[];
  /** [vocab] rows of the target's log-probabilities per emitted token, when asked for. */
  rows?: MxArray[];
  accepted: number;
}

/**
 * Verifies a draft against the target's logits [k + 1, vocab] at the positions of next and
 * each draft token. Greedy: draft tokens are kept while they are the target's argmax.
 * Sampled with a seed: while they are the tokens the target draws with the keys that decoding
 * one at a time would take (drawsAsAlone). Sampled: the speculative sampling rule, with q the
 * draft model's probabilities, or certainty of the looked-up token (then max(0, p - q) is p
 * without that token).
 */
export function verify(s: SpeculatingSequence, logits: MxArray, draft: Draft, keepRows: boolean): Verified {
  const k = draft.tokens.length;
  if (k === 0) return sampleOne(s, logits, keepRows);
  return mx.scope(() => {
    const vocab = logits.shape[1]!;
    const rows = Array.from({ length: k + 1 }, (_, i) =>
      processed(s, mx.slice(logits, [i, 0], [i + 1, vocab]), draft.tokens.slice(0, i)),
    );
    const logprobs = logSoftmax(mx.concatenate(rows, 0));
    const drafted = mx.array(Int32Array.from(draft.tokens), [k, 1]);
    // The target's own choice at each position, were the draft rejected there (or all kept, at k).
    let own: MxArray;
    let keep: MxArray;
    if (s.sampling.temperature === 0 || drawsAsAlone(s)) {
      own = s.sampling.temperature === 0 ? mx.argmax(logprobs, -1) : drawnAsAlone(s, logprobs);
      keep = mx.equal(mx.slice(own, [0], [k]), mx.reshape(drafted, [k]));
    } else {
      const p = mx.softmax(samplingLogits(s.sampling, logprobs));
      const pDrafted = mx.slice(p, [0, 0], [k, vocab]);
      const q = draft.probabilities ?? mx.putAlongAxis(mx.zeros([k, vocab]), drafted, mx.ones([k, 1]), -1);
      const ratio = mx.divide(mx.takeAlongAxis(pDrafted, drafted, -1), mx.takeAlongAxis(q, drafted, -1));
      keep = mx.less(mx.random.uniform([k, 1], mx.Dtype.float32, s.keys()), ratio);
      const residual = mx.maximum(mx.subtract(pDrafted, q), 0);
      // Where p ≤ q nowhere (p = q), the draft is always kept and the residual is never drawn.
      const some = mx.greater(mx.sum(residual, -1, true), 0);
      const rejected = mx.random.categorical(mx.log(mx.where(some, residual, pDrafted)), -1, s.keys());
      const bonus = mx.random.categorical(mx.log(mx.slice(p, [k, 0], [k + 1, vocab])), -1, s.keys());
      own = mx.concatenate([rejected, bonus], 0);
    }
    own = mx.astype(own, mx.Dtype.int32);
    const ownLogprob = mx.takeAlongAxis(logprobs, mx.reshape(own, [k + 1, 1]), -1);
    const draftLogprob = mx.takeAlongAxis(mx.slice(logprobs, [0, 0], [k, vocab]), drafted, -1);
    const keptList = mx.reshape(keep, [k]).toArray();
    const ownList = own.toArray();
    const ownLp = ownLogprob.toArray();
    const draftLp = draftLogprob.toArray();
    let accepted = 0;
    while (accepted < k && keptList[accepted]) accepted++;
    // The keys its emitted tokens were drawn with are taken, as decoding them one at a time takes them.
    if (drawsAsAlone(s)) for (let i = 0; i <= accepted; i++) s.keys();
    const tokens = [...draft.tokens.slice(0, accepted), ownList[accepted]!];
    const emitted = [...draftLp.slice(0, accepted), ownLp[accepted]!];
    const kept = keepRows
      ? tokens.map((_, i) => mx.keep(mx.reshape(mx.slice(logprobs, [i, 0], [i + 1, vocab]), [vocab])))
      : undefined;
    return { tokens, logprobs: emitted, rows: kept, accepted };
  });
}

/** Each position's token [k + 1] of logprobs [k + 1, vocab], drawn with the next k + 1 keys of its seed (not taken). */
function drawnAsAlone(s: SpeculatingSequence, logprobs: MxArray): MxArray {
  const [positions, vocab] = logprobs.shape as [number, number];
  const keys = s.keys.ahead(positions);
  return mx.concatenate(
    keys.map((key, i) => drawToken(s.sampling, mx.slice(logprobs, [i, 0], [i + 1, vocab]), key)),
    0,
  );
}

/** No draft: the sequence's own sampler on the first position, as a plain decode step. */
function sampleOne(s: SpeculatingSequence, logits: MxArray, keepRows: boolean): Verified {
  return mx.scope(() => {
    const vocab = logits.shape[1]!;
    const logprobs = logSoftmax(processed(s, mx.slice(logits, [0, 0], [1, vocab]), []));
    const token = mx.astype(s.sample(logprobs), mx.Dtype.int32);
    const chosen = mx.takeAlongAxis(logprobs, mx.reshape(token, [1, 1]), -1);
    const rows = keepRows ? [mx.keep(mx.reshape(logprobs, [vocab]))] : undefined;
    return { tokens: [token.item()], logprobs: [chosen.item()], rows, accepted: 0 };
  });
}
