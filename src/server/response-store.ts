// The conversations of stored Responses (`store: true`), so that `previous_response_id` can
// continue one: in memory, at most `max` of them, each for `ttlMs` after it was stored; the
// oldest go first.
import type { ConversationMessage } from "../engine/tools";

export class ResponseStore {
  readonly #entries = new Map<string, { messages: ConversationMessage[]; expiresAt: number }>();

  constructor(
    readonly max: number,
    readonly ttlMs: number,
  ) {}

  set(id: string, messages: ConversationMessage[]): void {
    this.#entries.set(id, { messages, expiresAt: Date.now() + this.ttlMs });
    // A Map iterates in insertion order: the first entries are the oldest.
    for (const [key, entry] of this.#entries) {
      if (this.#entries.size <= this.max && entry.expiresAt > Date.now()) break;
      this.#entries.delete(key);
    }
  }

  /** The conversation up to and including that response, or undefined when unknown or expired. */
  get(id: string): ConversationMessage[] | undefined {
    const entry = this.#entries.get(id);
    if (entry && entry.expiresAt <= Date.now()) this.#entries.delete(id);
    return entry && entry.expiresAt > Date.now() ? entry.messages : undefined;
  }
}
