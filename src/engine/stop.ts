// Stop strings over streamed text: text is released as soon as it cannot be the start of a
// stop string, and everything from a stop string on is withheld.

/**
 * The length of the longest end of `text` that begins one of `markers` (a stop string, a
 * reasoning or harmony tag): text to hold back until the next piece says whether it is one. An
 * end that starts between the halves of a surrogate pair (a stop string sent with a lone low
 * surrogate first) begins no match, as matches cut no character: holding it back would send the
 * pair's first half alone.
 */
export function partialMarker(text: string, markers: readonly string[]): number {
  let longest = 0;
  for (const marker of markers)
    for (let n = Math.min(marker.length - 1, text.length); n > longest; n--)
      if (text.endsWith(marker.slice(0, n)) && !splitsPair(text, text.length - n)) {
        longest = n;
        break;
      }
  return longest;
}

/**
 * Where `stop` first occurs in `text` as whole characters, or -1: a stop string holding a lone
 * surrogate (JSON lets a client send one) does not match half of an emoji's pair, which would cut
 * the answer within a character, as Python's servers match code points.
 */
function indexOfWhole(text: string, stop: string): number {
  for (let at = text.indexOf(stop); at >= 0; at = text.indexOf(stop, at + 1))
    if (!splitsPair(text, at) && !splitsPair(text, at + stop.length)) return at;
  return -1;
}

/** Whether `index` falls between the two halves of a surrogate pair of `text`. */
function splitsPair(text: string, index: number): boolean {
  const before = text.charCodeAt(index - 1);
  const after = text.charCodeAt(index);
  return before >= 0xd800 && before <= 0xdbff && after >= 0xdc00 && after <= 0xdfff;
}

export class StopMatcher {
  #pending = "";
  readonly #stops: string[];
  /** The stop string that ended the text, once one did. */
  matched: string | undefined;

  /** Whether the stop string that ends the text is shown with it (vLLM's include_stop_str_in_output). */
  readonly #includeStop: boolean;

  constructor(stops: string[], o: { includeStop?: boolean } = {}) {
    this.#stops = stops.filter((s) => s.length > 0);
    this.#includeStop = o.includeStop ?? false;
  }

  /**
   * Adds generated text; returns what may be shown now and whether a stop string was hit.
   * `matching` false (an answer still short of min_tokens) looks for no stop string, but still
   * holds back a tail that may begin one: as vLLM's, a stop string the next text completes counts.
   */
  push(text: string, matching = true): { text: string; stopped: boolean } {
    // Text after a stop string is never shown: not the rest of its token, nor the end of an
    // unfinished character the detokenizer flushes once the answer ends.
    if (this.matched !== undefined) return { text: "", stopped: true };
    this.#pending += text;
    let cut = -1;
    for (const stop of matching ? this.#stops : []) {
      const at = indexOfWhole(this.#pending, stop);
      if (at >= 0 && (cut < 0 || at < cut)) {
        cut = at;
        this.matched = stop;
      }
    }
    if (cut >= 0) {
      const shown = this.#pending.slice(0, this.#includeStop ? cut + this.matched!.length : cut);
      this.#pending = "";
      return { text: shown, stopped: true };
    }
    const hold = partialMarker(this.#pending, this.#stops);
    const shown = this.#pending.slice(0, this.#pending.length - hold);
    this.#pending = this.#pending.slice(this.#pending.length - hold);
    return { text: shown, stopped: false };
  }

  /** The rest, once generation ended for another reason. */
  flush(): string {
    const rest = this.#pending;
    this.#pending = "";
    return rest;
  }
}
