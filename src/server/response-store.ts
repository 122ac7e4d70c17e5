// Stored Responses (`store: true`): each one's conversation, so that `previous_response_id` can
// continue it, and the response object, for GET /v1/responses/{id}. In memory, at most `max`
// of them, each for `ttlMs` after it was stored; the oldest go first.
import type { ConversationMessage } from "../engine/tools";

export class ResponseStore {
  readonly #entries = new Map<string, { messages: ConversationMessage[]; response: object; expiresAt: number }>();

  constructor(
    readonly max: number,
    readonly ttlMs: number,
  ) {}

  set(id: string, messages: ConversationMessage[], response: object): void {
    this.#entries.set(id, { messages, response, expiresAt: Date.now() + this.ttlMs });
    // A Map iterates in insertion order: the first entries are the oldest.
    for (const [key, entry] of this.#entries) {
      if (this.#entries.size <= this.max && entry.expiresAt > Date.now()) break;
      this.#entries.delete(key);
    }
  }

  /** The conversation up to and including that response, or undefined when unknown or expired. */
  get(id: string): ConversationMessage[] | undefined {
    return this.#live(id)?.messages;
  }

  /** The response object itself, or undefined when unknown or expired. */
  response(id: string): object | undefined {
    return this.#live(id)?.response;
  }

  /** Forgets a response; false when it was not stored (or had expired). */
  delete(id: string): boolean {
    return this.#live(id) !== undefined && this.#entries.delete(id);
  }

  #live(id: string) {
    const entry = this.#entries.get(id);
    if (entry && entry.expiresAt <= Date.now()) this.#entries.delete(id);
    return entry && entry.expiresAt > Date.now() ? entry : undefined;
  }
}
