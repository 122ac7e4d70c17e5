// Keys and values of token prefixes already computed, shared across requests: a follow-up
// turn of a conversation, or many requests with one system prompt, start from the longest
// stored prefix instead of prefilling it again. Entries are found through a token trie, kept
// within a byte budget, and evicted least recently used first.
import * as mx from "../mlx";
import type { KVCache } from "../models";
import type { Stored } from "../models/cache";

interface Entry {
  /** Whose keys and values these are: 0 for the base model, else an adapter's id. */
  namespace: number;
  tokens: number[];
  /** Per layer, [1, heads, tokens.length, ·], stored as the cache stores them (maybe quantized). */
  keys: Stored[];
  values: Stored[];
  bytes: number;
  lastUsed: number;
}

interface TrieNode {
  children: Map<number, TrieNode>;
  /** An entry whose tokens pass through this node (the latest stored). */
  entry?: Entry;
}

export interface PrefixMatch {
  length: number;
  keys: Stored[];
  values: Stored[];
}

export class PrefixCache {
  #entries: Entry[] = [];
  /** A trie per namespace: an adapter's keys and values differ from the base model's. */
  #roots = new Map<number, TrieNode>();
  #clock = 0;
  hits = 0;
  misses = 0;
  hitTokens = 0;

  constructor(
    readonly maxBytes: number,
    /** Most entries kept (a conversation needs only its latest). */
    readonly maxEntries = Infinity,
  ) {}

  get bytes(): number {
    return this.#entries.reduce((n, e) => n + e.bytes, 0);
  }

  get entries(): number {
    return this.#entries.length;
  }

  /** The longest stored prefix of `prompt`, at most `limit` tokens long, computed in `namespace` (0: the base model, else an adapter's id). */
  lookup(prompt: number[], limit: number, namespace = 0): PrefixMatch | undefined {
    let node = this.#root(namespace);
    let depth = 0;
    let best: Entry | undefined;
    while (depth < limit) {
      const next = node.children.get(prompt[depth]!);
      if (!next) break;
      node = next;
      depth++;
      best = node.entry;
    }
    if (!best || depth === 0) {
      this.misses++;
      return undefined;
    }
    best.lastUsed = ++this.#clock;
    this.hits++;
    this.hitTokens += depth;
    return { length: depth, keys: best.keys, values: best.values };
  }

  /** Stores the first `tokens.length` positions of `caches[l]` rows `row` (after `skip` padding columns). */
  insert(tokens: number[], caches: KVCache[], row = 0, skip = 0, namespace = 0): void {
    if (tokens.length === 0 || this.#covered(tokens, namespace)) return;
    const n = tokens.length;
    const snapshot = (stored: Stored) =>
      stored.map((t) =>
        mx.keep(mx.scope(() => mx.contiguous(mx.slice(t, [row, 0, skip], [row + 1, t.shape[1]!, skip + n])))),
      );
    const keys = caches.map((c) => snapshot(c.keys!));
    const values = caches.map((c) => snapshot(c.values!));
    const arrays = [...keys, ...values].flat();
    mx.evaluate(...arrays);
    const bytes = arrays.reduce((sum, t) => sum + t.nbytes, 0);
    if (bytes > this.maxBytes) {
      for (const t of arrays) t.free();
      return;
    }
    const entry: Entry = { namespace, tokens: [...tokens], keys, values, bytes, lastUsed: ++this.#clock };
    this.#entries.push(entry);
    this.#index(entry);
    this.#evict();
  }

  // An entry already holding these tokens (or a longer run starting with them) makes a new one useless.
  #covered(tokens: number[], namespace: number): boolean {
    let node = this.#root(namespace);
    for (const t of tokens) {
      const next = node.children.get(t);
      if (!next) return false;
      node = next;
    }
    return node.entry !== undefined;
  }

  #root(namespace: number): TrieNode {
    let root = this.#roots.get(namespace);
    if (!root) this.#roots.set(namespace, (root = { children: new Map() }));
    return root;
  }

  #index(entry: Entry): void {
    let node = this.#root(entry.namespace);
    for (const t of entry.tokens) {
      let next = node.children.get(t);
      if (!next) node.children.set(t, (next = { children: new Map() }));
      next.entry = entry;
      node = next;
    }
  }

  #evict(): void {
    let total = this.bytes;
    if (total <= this.maxBytes && this.#entries.length <= this.maxEntries) return;
    this.#entries.sort((a, b) => a.lastUsed - b.lastUsed);
    while ((total > this.maxBytes || this.#entries.length > this.maxEntries) && this.#entries.length > 0) {
      const victim = this.#entries.shift()!;
      total -= victim.bytes;
      for (const t of [...victim.keys, ...victim.values].flat()) t.free();
    }
    // Rebuild the trie from what is left (entries are few; a rebuild keeps it simple and exact).
    this.#roots.clear();
    for (const e of [...this.#entries].sort((a, b) => a.lastUsed - b.lastUsed)) this.#index(e);
  }

  clear(): void {
    for (const e of this.#entries) for (const t of [...e.keys, ...e.values].flat()) t.free();
    this.#entries = [];
    this.#roots.clear();
  }
}
