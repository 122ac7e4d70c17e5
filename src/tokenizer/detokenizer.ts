// Streaming detokenization: turn generated ids into text as they arrive, emitting only complete
// characters. A byte-level token can end in the middle of a UTF-8 sequence (an emoji is often
// 2-4 tokens), so text is held back until its character is whole.
import type { Tokenizer } from "./tokenizer";

export interface DetokenizerOptions {
  skipSpecialTokens?: boolean;
}

/**
 * `push(id)` returns the text that became printable with this token; `flush()` returns whatever
 * is left at the end. The concatenation of all returned chunks equals `tokenizer.decode(allIds)`.
 */
export interface StreamingDetokenizer {
  push(id: number): string;
  flush(): string;
}

/**
 * What `flush()` returned, less the unfinished character an answer cut within it (the token
 * budget ran out between its bytes) leaves as U+FFFD: the answer ends before that character, as
 * Ollama's and vLLM's do, rather than with a replacement character no model wrote.
 */
export function withoutUnfinishedCharacter(flushed: string): string {
  return flushed.replace(/\uFFFD+$/, "");
}

/** The best streaming detokenizer for this tokenizer. */
export function createDetokenizer(tokenizer: Tokenizer, options: DetokenizerOptions = {}): StreamingDetokenizer {
  return tokenizer.isByteLevel && !tokenizer.cleansUpSpaces
    ? new ByteLevelDetokenizer(tokenizer, options)
    : new IncrementalDetokenizer(tokenizer, options);
}

/** What both detokenizers share: the tokenizer, and whether special tokens are dropped. */
abstract class BaseDetokenizer implements StreamingDetokenizer {
  protected readonly skipSpecial: boolean;

  constructor(
    protected readonly tokenizer: Tokenizer,
    { skipSpecialTokens = false }: DetokenizerOptions = {},
  ) {
    this.skipSpecial = skipSpecialTokens;
  }

  abstract push(id: number): string;
  abstract flush(): string;
}

/**
 * Byte-level BPE: each token is a fixed run of bytes, so streaming is a streaming UTF-8 decode of
 * the concatenated token bytes: O(token length) per token. TextDecoder's stream mode holds back an
 * unfinished sequence, and decodes invalid bytes to U+FFFD exactly as a whole-text decode would.
 */
export class ByteLevelDetokenizer extends BaseDetokenizer {
  private decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });

  push(id: number): string {
    if (this.skipSpecial && this.tokenizer.isSpecial(id)) return "";
    return this.decoder.decode(this.tokenizer.tokenBytes(id), { stream: true });
  }

  flush(): string {
    const rest = this.decoder.decode();
    this.decoder = new TextDecoder("utf-8", { fatal: false, ignoreBOM: true });
    return rest;
  }
}

/**
 * Any other tokenizer (SentencePiece-style decoders that strip or merge spaces): decode a short
 * window of recent ids and emit what it adds beyond the window's already-emitted prefix, the way
 * vLLM and TGI do. The window restarts after each emitted chunk, so each step decodes a few tokens,
 * not the whole output. Text ending in U+FFFD is an unfinished character and waits.
 */
export class IncrementalDetokenizer extends BaseDetokenizer {
  private ids: number[] = [];
  /** ids[prefixStart..readStart) were already emitted; they give later tokens their context. */
  private prefixStart = 0;
  private readStart = 0;

  push(id: number): string {
    if (this.skipSpecial && this.tokenizer.isSpecial(id)) return "";
    this.ids.push(id);
    const prefix = this.decodeRange(this.prefixStart, this.readStart);
    const full = this.decodeRange(this.prefixStart, this.ids.length);
    if (full.length <= prefix.length || full.endsWith("\uFFFD") || !full.startsWith(prefix)) return "";
    this.prefixStart = this.readStart;
    this.readStart = this.ids.length;
    this.compact();
    return full.slice(prefix.length);
  }

  flush(): string {
    const prefix = this.decodeRange(this.prefixStart, this.readStart);
    const full = this.decodeRange(this.prefixStart, this.ids.length);
    this.ids = [];
    this.prefixStart = this.readStart = 0;
    return full.startsWith(prefix) ? full.slice(prefix.length) : "";
  }

  private decodeRange(start: number, end: number): string {
    // The very first token decodes with no left context (a leading space gets stripped, as in a
    // full decode); later windows keep one emitted token so their spaces survive.
    return start === end ? "" : this.tokenizer.decode(this.ids.slice(start, end));
  }

  /** Drops ids that can no longer be part of a window, so memory stays bounded. */
  private compact(): void {
    if (this.prefixStart > 1024) {
      this.ids = this.ids.slice(this.prefixStart);
      this.readStart -= this.prefixStart;
      this.prefixStart = 0;
    }
  }
}
