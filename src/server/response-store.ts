// Stored Responses (`store: true`): each one's conversation, so that `previous_response_id` can
// continue it, its input items, for GET /v1/responses/{id}/input_items, and the response object,
// for GET /v1/responses/{id}. In memory, at most `max` of them and `maxBytes` in all (a few huge
// conversations must not hold memory without bound), each for `ttlMs` after it was stored; the
// oldest go first.
import type { ConversationMessage } from "../engine/tools";

export interface StoredResponse {
  /** The conversation up to and including the response (its instructions apart). */
  messages: ConversationMessage[];
  /** The items it read, oldest first: earlier responses' input and output items, then its own input. */
  inputItems: { id: string }[];
  response: { output: { id: string }[] };
}

interface Entry extends StoredResponse {
  expiresAt: number;
  bytes: number;
}

/**
 * What a stored response holds, as its JSON's UTF-8 bytes: an upper bound, as a continued
 * conversation shares its earlier messages with the response it continues.
 */
const sizeOf = (stored: StoredResponse) => Buffer.byteLength(JSON.stringify(stored));

export class ResponseStore {
  readonly #entries = new Map<string, Entry>();
  #bytes = 0;

  constructor(
    readonly max: number,
    readonly ttlMs: number,
    readonly maxBytes: number,
  ) {}

  /** Bytes held now (see sizeOf). */
  get bytes(): number {
    return this.#bytes;
  }

  /** Keeps a response; one larger than maxBytes on its own is not kept. */
  set(id: string, stored: StoredResponse): void {
    this.#drop(id);
    const entry = { ...stored, expiresAt: Date.now() + this.ttlMs, bytes: sizeOf(stored) };
    this.#entries.set(id, entry);
    this.#bytes += entry.bytes;
    // A Map iterates in insertion order: the first entries are the oldest.
    for (const [key, oldest] of this.#entries) {
      if (this.#fits() && oldest.expiresAt > Date.now()) break;
      this.#drop(key);
    }
  }

  /** The stored response, or undefined when unknown, expired or evicted. */
  get(id: string): StoredResponse | undefined {
    const entry = this.#entries.get(id);
    if (entry && entry.expiresAt <= Date.now()) this.#drop(id);
    return entry && entry.expiresAt > Date.now() ? entry : undefined;
  }

  /** An input or output item of a stored response, by its id (the newest response's that holds it). */
  item(id: string): { id: string } | undefined {
    for (const key of [...this.#entries.keys()].reverse()) {
      const entry = this.get(key);
      const item = entry?.response.output.find((i) => i.id === id) ?? entry?.inputItems.find((i) => i.id === id);
      if (item) return item;
    }
    return undefined;
  }

  /** Forgets a response; false when it was not stored (or had expired). */
  delete(id: string): boolean {
    return this.get(id) !== undefined && this.#drop(id);
  }

  #fits(): boolean {
    return this.#entries.size <= this.max && this.#bytes <= this.maxBytes;
  }

  #drop(id: string): boolean {
    const entry = this.#entries.get(id);
    if (!entry) return false;
    this.#bytes -= entry.bytes;
    return this.#entries.delete(id);
  }
}
