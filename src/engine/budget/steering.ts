// Budget-aware steering for a grammar constraint: when the tokens left (max_tokens minus those
// generated) come close to what the shortest valid completion needs, the grammar's allowed
// tokens are narrowed to those after which a valid completion still fits, down to forcing
// the shortest completion itself, so an answer cut by max_tokens still parses and validates.
//
// The distance to acceptance is the shortest completion of the value so far (a Progress reads
// it from the schema's structure) in the model's tokens. Far from the budget one step costs a
// few string operations. Narrowing starts only when one allowed token could put a valid end
// out of reach: a token can add to the shortest completion at most what the openers it holds
// ({ [ " , :) can open, e.g. "[{" in a list of objects with required fields (a layout of tool
// calls adds the characters that open a call: its trigger's and its separator's). A token that
// ends inside a UTF-8 character owes the tokens that finish it (the grammar allows nothing else),
// and the Progress reads that character once they do: what is left to write, and the plan that
// writes it, are counted in bytes (DeepSeek's markers hold ｜ and ▁, which a byte-level BPE
// cuts between tokens).
import type { Tokenizer } from "../../tokenizer/tokenizer";
import { UnsteerableSchemaError } from "./json-progress";

/** Where the text so far stands, and the shortest text that completes it ("" when complete). */
export interface Progress {
  feed(text: string): void;
  /** Throws an UnsteerableSchemaError when the reading cannot tell. */
  completion(): string;
  clone(): Progress;
  /** Whether text without a quote or backslash would leave the completion as it is. */
  inFreeString(): boolean;
  /** Whether inside a string under a pattern, where any character may lengthen the completion (by at most the schema's opening). */
  inPatternString(): boolean;
}

/**
 * Steering for one sequence, or undefined when `progress` cannot read the grammar's shape (a
 * string pattern, say): the grammar alone then decides. Throws a BudgetError when `maxTokens`
 * cannot hold the shortest valid answer.
 */
export function budgetSteering(
  tokenizer: Tokenizer,
  maxTokens: number,
  make: () => { progress: Progress; opening: number; openers?: string },
): BudgetSteering | undefined {
  let steering: BudgetSteering;
  let minimum: number;
  try {
    const { progress, opening, openers } = make();
    steering = new BudgetSteering(tokenizer, vocabularyText(tokenizer, openers), progress, maxTokens, opening);
    minimum = steering.minimum();
  } catch (error) {
    if (error instanceof UnsteerableSchemaError) return undefined;
    throw error;
  }
  if (maxTokens < minimum) throw new BudgetError(maxTokens, minimum);
  return steering;
}

/** max_tokens below the shortest valid answer; `option` names the setting as the user wrote it. */
export class BudgetError extends Error {
  override name = "BudgetError";
  constructor(
    readonly maxTokens: number,
    readonly minimum: number,
    /** The request's name for the budget (a field, or a flag). */
    readonly option = "max_tokens",
  ) {
    super(`${option} ${maxTokens} is too small for this format: the shortest valid answer takes ${minimum} tokens`);
  }
}

/**
 * Each token's text, and the JSON openers ({ [ " , : and escapes, and any `extra` characters) it
 * holds: all of them (what it can open outside a string), and those from its first quote or
 * backslash on (what it can open from inside a string: before that its text is the string's).
 */
export interface VocabularyText {
  texts: string[];
  /**
   * The UTF-8 continuation bytes a token leaves owed (its last character cut short), or, for a
   * token of continuation bytes only, CONTINUATION_ONLY (it pays `continuations` of those owed).
   */
  owes: Uint8Array;
  continuations: Uint8Array;
  /** 1 where a token's text has no quote or backslash (it stays inside a JSON string). */
  plain: Uint8Array;
  openers: Uint8Array;
  openersAfterQuote: Uint8Array;
  mostOpeners: number;
  mostOpenersAfterQuote: number;
}

const CONTINUATION_ONLY = 255;

/**
 * The continuation bytes owed after `bytes`, or CONTINUATION_ONLY; how many continuation bytes
 * lead them; and how many bytes end them in the character cut short (0 when none is).
 */
function utf8Owed(bytes: Uint8Array): { owes: number; continuations: number; cut: number } {
  let continuations = 0;
  while (continuations < bytes.length && (bytes[continuations]! & 0xc0) === 0x80) continuations++;
  if (continuations === bytes.length) return { owes: CONTINUATION_ONLY, continuations, cut: 0 };
  let owes = 0;
  let cut = 0;
  for (let i = continuations; i < bytes.length; i++) {
    const b = bytes[i]!;
    if (b < 0x80) owes = 0;
    else if (b >= 0xc0) {
      owes = b >= 0xf0 ? 3 : b >= 0xe0 ? 2 : 1;
      cut = 0;
    } else owes = Math.max(0, owes - 1);
    cut = owes > 0 ? cut + 1 : 0;
  }
  return { owes, continuations, cut };
}

const vocabularies = new WeakMap<Tokenizer, Map<string, VocabularyText>>();

/** The vocabulary as the steering reads it; `extra`: characters that also count as openers. */
export function vocabularyText(tokenizer: Tokenizer, extra = ""): VocabularyText {
  let byOpeners = vocabularies.get(tokenizer);
  if (!byOpeners) vocabularies.set(tokenizer, (byOpeners = new Map()));
  let v = byOpeners.get(extra);
  if (!v) {
    const texts = new Array<string>(tokenizer.vocabSize);
    const owes = new Uint8Array(tokenizer.vocabSize);
    const continuations = new Uint8Array(tokenizer.vocabSize);
    const plain = new Uint8Array(tokenizer.vocabSize);
    const openers = new Uint8Array(tokenizer.vocabSize);
    const openersAfterQuote = new Uint8Array(tokenizer.vocabSize);
    const opener = new RegExp(`[{["\\\\,:${extra.replace(/[\\\]^-]/g, "\\$&")}]`, "g");
    const count = (text: string) => Math.min(255, text.match(opener)?.length ?? 0);
    for (let id = 0; id < tokenizer.vocabSize; id++) {
      const bytes = tokenizer.pieceBytes(id);
      const text = tokenizer.isByteLevel ? utf8.decode(bytes) : tokenizer.decode([id]);
      texts[id] = text;
      const owed = utf8Owed(bytes);
      owes[id] = owed.owes;
      continuations[id] = owed.continuations;
      const quote = text.search(/["\\]/);
      if (quote < 0) plain[id] = 1;
      else openersAfterQuote[id] = count(text.slice(quote + 1));
      openers[id] = count(text);
    }
    v = {
      texts,
      owes,
      continuations,
      plain,
      openers,
      openersAfterQuote,
      mostOpeners: Math.max(...openers),
      mostOpenersAfterQuote: Math.max(...openersAfterQuote),
    };
    byOpeners.set(extra, v);
  }
  return v;
}

// Tokens followed through the schema per step, at most: past that, a token that would need it
// is left out (the answer stays valid; only the model's choice narrows further).
const MAX_SIMULATED = 4096;

export const utf8Length = (text: string) => Buffer.byteLength(text, "utf8");

const utf8 = new TextDecoder();
const NO_BYTES = new Uint8Array(0);

/**
 * What is left to write: the rest of the character the text so far cut short (`owed`
 * continuation bytes, each of which may take a token), then `text`.
 */
interface Ahead {
  owed: number;
  text: string;
}

/**
 * What is left once `completion` (read from whole characters) follows the text so far, whose
 * last character `pending` (its first bytes) is cut short: the completion past that character
 * where it starts the completion (a marker's ｜ the tokens cut), else all of it (the character
 * is a string's content, say).
 */
function aheadOf(completion: string, pending: Uint8Array): Ahead {
  if (pending.length === 0) return { owed: 0, text: completion };
  const owed = utf8Owed(pending).owes;
  const first = String.fromCodePoint(completion.codePointAt(0) ?? 0);
  const firstBytes = Buffer.from(first);
  const continues =
    completion !== "" &&
    firstBytes.length === pending.length + owed &&
    firstBytes.subarray(0, pending.length).equals(pending);
  return { owed, text: continues ? completion.slice(first.length) : completion };
}

interface Plan {
  /** The Ahead it writes (see aheadKey). */
  key: string;
  /** The owed continuation bytes it leaves to whichever tokens finish the character (0: `tokens` write them too). */
  unspelled: number;
  tokens: number[];
  /** The bytes `tokens` write. */
  bytes: Buffer;
  /** Where each token starts in `bytes` (and its length last), when the tokens spell it exactly. */
  starts: number[] | undefined;
}

const aheadKey = (ahead: Ahead) => `${ahead.owed}:${ahead.text}`;

export class BudgetSteering {
  /** Whether the budget narrowed the grammar's choices at least once. */
  closedEarly = false;
  private plan: Plan | undefined;
  private last: number | undefined;
  /** UTF-8 continuation bytes the text so far owes (a character cut between tokens). */
  private owed = 0;
  /** The first bytes of that character, which the progress reads once it is whole. */
  private pending: Uint8Array = NO_BYTES;
  private readonly stopIds: ReadonlySet<number>;
  /** The most one opener can add to the shortest completion, in bytes (separators and a literal's start included). */
  private readonly perOpener: number;

  /**
   * `opening`: the most one opener character can add to the shortest completion, in bytes
   * (the largest smallest-value of any part of the schema, with its key and separators).
   */
  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly vocab: VocabularyText,
    private readonly progress: Progress,
    private readonly maxTokens: number,
    opening: number,
  ) {
    this.perOpener = opening + 11;
    this.stopIds = tokenizer.eosTokenIds;
  }

  /** Tokens the shortest valid answer takes from the start (checked against max_tokens up front). */
  minimum(): number {
    return this.planFor(aheadOf(this.progress.completion(), NO_BYTES)).tokens.length;
  }

  /** Follows a sampled token. */
  observe(token: number): void {
    const { text, pending } = this.textAfter(token);
    this.progress.feed(text);
    this.pending = pending;
    this.last = token;
    this.owed = this.owedAfter(token);
  }

  /**
   * The whole characters `token` writes after the text so far (finishing the character it cut
   * short), and the first bytes of a character it cuts short in turn.
   */
  private textAfter(token: number): { text: string; pending: Uint8Array } {
    if (this.pending.length === 0 && this.wholeCharacters(token))
      return { text: this.vocab.texts[token] ?? "", pending: NO_BYTES };
    const bytes = Buffer.concat([this.pending, this.tokenizer.pieceBytes(token)]);
    const end = bytes.length - utf8Owed(bytes).cut;
    return { text: utf8.decode(bytes.subarray(0, end)), pending: bytes.subarray(end) };
  }

  /** The bytes `token` writes, as the steering reads them (its text's, unless it cuts a character). */
  private tokenBytes(token: number): Uint8Array {
    return this.wholeCharacters(token) ? Buffer.from(this.vocab.texts[token] ?? "") : this.tokenizer.pieceBytes(token);
  }

  /** Whether `token` writes whole characters: none cut short at its end, no continuation bytes at its start. */
  private wholeCharacters(token: number): boolean {
    return this.vocab.owes[token] === 0 && this.vocab.continuations[token] === 0;
  }

  /** The continuation bytes owed once `token` follows the text so far (each may take a token). */
  private owedAfter(token: number): number {
    const owes = this.vocab.owes[token] ?? 0;
    return owes === CONTINUATION_ONLY ? Math.max(0, this.owed - this.vocab.continuations[token]!) : owes;
  }

  /** Narrows `mask` (1 = allowed by the grammar) so that a valid completion fits what is left after this step. */
  narrow(mask: Uint8Array, generated: number): void {
    const remaining = this.maxTokens - generated;
    let completion: string;
    try {
      completion = this.progress.completion();
    } catch (error) {
      if (error instanceof UnsteerableSchemaError) return; // nothing to steer by: the grammar alone decides
      throw error;
    }
    // A complete answer may still go on (another tool call): what an opener there owes counts too.
    // No token allowed now can add more than its openers can open (+5: a literal's or a
    // number's start, an escape; +3: the rest of a UTF-8 character it cuts short); inside a
    // string only those past a quote open anything. Far from the budget, nothing to narrow.
    const left = remaining - 1;
    const bytes = utf8Length(completion);
    // Inside a pattern's string every token counts as one opener more: its characters may lengthen the match's completion.
    const typed = this.progress.inPatternString() ? 1 : 0;
    const safe = (openers: number) => bytes + (openers + typed) * this.perOpener + 8 <= left;
    const free = this.progress.inFreeString();
    const openers = free ? this.vocab.openersAfterQuote : this.vocab.openers;
    if (safe(free ? this.vocab.mostOpenersAfterQuote : this.vocab.mostOpeners)) return;
    let most = 0;
    for (let id = 0; id < mask.length; id++)
      if (mask[id] && openers[id]! > most && !this.stopIds.has(id)) most = openers[id]!;
    if (safe(most)) return;
    const plan = this.planFor(aheadOf(completion, this.pending));
    // The plan's first token, or (a complete answer) the end of sequence, always stays.
    const first = plan.unspelled === 0 ? plan.tokens[0] : undefined;
    // The reading disagrees with the grammar: better the grammar's choice than a wrong one.
    // (Inside a UTF-8 character only its continuation can follow: the plan waits for it.)
    if (first !== undefined && !mask[first] && this.owed === 0) return;
    let narrowed = false;
    let simulated = 0;
    for (let id = 0; id < mask.length; id++) {
      if (!mask[id] || id === first || this.stopIds.has(id)) continue;
      const owed = this.owedAfter(id);
      if (
        free && this.vocab.plain[id]
          ? plan.tokens.length + owed <= left
          : safe(openers[id]!) || (simulated++ < MAX_SIMULATED && this.fitsAfter(id, plan, left))
      )
        continue;
      mask[id] = 0;
      narrowed = true;
    }
    // An answer already complete here (its calls closed) was not cut: only kept from more calls.
    if (narrowed && completion !== "") this.closedEarly = true;
  }

  /** Whether after token `id` a valid completion surely fits `left` tokens. */
  private fitsAfter(id: number, plan: Plan, left: number): boolean {
    if (!this.vocab.texts[id]) return false;
    const { text, pending } = this.textAfter(id);
    const next = this.progress.clone();
    next.feed(text);
    try {
      const ahead = aheadOf(next.completion(), pending);
      if (ahead.owed + tokensAtMost(ahead.text, plan) <= left) return true;
      // From a complete answer (no plan), a token that opens more (another call) owes all of
      // it: the plan the next step makes of it is its encoding, which is followed from there.
      return (
        plan.tokens.length === 0 &&
        ahead.owed + this.tokenizer.encode(ahead.text, { addSpecialTokens: false }).length <= left
      );
    } catch (error) {
      if (error instanceof UnsteerableSchemaError) return false;
      throw error;
    }
  }

  /**
   * What is left to write in tokens: the tokenizer's encoding of its text (the rest of a cut
   * character left to the tokens that finish it), or what is left of the previous plan when the
   * last token was its first (whichever is shorter), so following a plan never needs more
   * tokens than it promised.
   */
  private planFor(ahead: Ahead): Plan {
    const key = aheadKey(ahead);
    if (this.plan?.key === key) return this.plan;
    let tokens = this.tokenizer.encode(ahead.text, { addSpecialTokens: false });
    let bytes: Buffer = Buffer.from(ahead.text);
    let unspelled = ahead.owed;
    const previous = this.plan;
    if (
      previous &&
      this.last !== undefined &&
      previous.unspelled === 0 &&
      previous.tokens[0] === this.last &&
      previous.tokens.length - 1 < ahead.owed + tokens.length
    ) {
      // The previous plan's tail writes the cut character's rest too, if it is the same text.
      const tail = previous.bytes.subarray(this.tokenBytes(this.last).length);
      if (tail.length === ahead.owed + bytes.length && tail.subarray(ahead.owed).equals(bytes)) {
        tokens = previous.tokens.slice(1);
        bytes = tail;
        unspelled = 0;
      }
    }
    const spelt = tokens.map((t) => this.tokenBytes(t));
    const starts = [0];
    for (const piece of spelt) starts.push(starts.at(-1)! + piece.length);
    this.plan = { key, unspelled, tokens, bytes, starts: Buffer.concat(spelt).equals(bytes) ? starts : undefined };
    return this.plan;
  }
}

/**
 * At most how many tokens `text` (a completion) takes: any spelling in tokens will do, so the
 * longest tail it shares with `plan` in whole plan tokens, and at most one token per byte of
 * the rest.
 */
function tokensAtMost(text: string, plan: Plan): number {
  const bytes = Buffer.from(text);
  const starts = plan.starts;
  if (!starts) return bytes.length;
  let shared = 0;
  while (
    shared < bytes.length &&
    shared < plan.bytes.length &&
    bytes[bytes.length - 1 - shared] === plan.bytes[plan.bytes.length - 1 - shared]
  )
    shared++;
  // The first token from which the plan's tail is all shared.
  const from = starts.findIndex((start) => plan.bytes.length - start <= shared);
  return bytes.length - (plan.bytes.length - starts[from]!) + plan.tokens.length - from;
}
