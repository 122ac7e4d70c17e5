// Stored Responses (`store: true`): each one's conversation, so that `previous_response_id` can
// continue it, its input items, for GET /v1/responses/{id}/input_items, and the response object,
// for GET /v1/responses/{id}. In memory, at most `max` of them, each for `ttlMs` after it was
// stored; the oldest go first.
import type { ConversationMessage } from "../engine/tools";

export interface StoredResponse {
  /** The conversation up to and including the response (its instructions apart). */
  messages: ConversationMessage[];
  /** The items it read, oldest first: earlier responses' input and output items, then its own input. */
  inputItems: { id: string }[];
  response: { output: { id: string }[] };
}

export class ResponseStore {
  readonly #entries = new Map<string, StoredResponse & { expiresAt: number }>();

  constructor(
    readonly max: number,
    readonly ttlMs: number,
  ) {}

  set(id: string, stored: StoredResponse): void {
    this.#entries.set(id, { ...stored, expiresAt: Date.now() + this.ttlMs });
    // A Map iterates in insertion order: the first entries are the oldest.
    for (const [key, entry] of this.#entries) {
      if (this.#entries.size <= this.max && entry.expiresAt > Date.now()) break;
      this.#entries.delete(key);
    }
  }

  /** The stored response, or undefined when unknown or expired. */
  get(id: string): StoredResponse | undefined {
    const entry = this.#entries.get(id);
    if (entry && entry.expiresAt <= Date.now()) this.#entries.delete(id);
    return entry && entry.expiresAt > Date.now() ? entry : undefined;
  }

  /** Forgets a response; false when it was not stored (or had expired). */
  delete(id: string): boolean {
    return this.get(id) !== undefined && this.#entries.delete(id);
  }
}
