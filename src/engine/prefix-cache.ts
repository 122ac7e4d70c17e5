// Keys and values of token prefixes already computed, shared across requests: a follow-up
// turn of a conversation, or many requests with one system prompt, start from the longest
// stored prefix instead of prefilling it again. Entries are found through a token trie, kept
// within a byte budget, and evicted least recently used first. An entry from a rotating cache
// (--max-kv-size) that dropped positions holds only what that cache kept: it can continue its
// own tokens, or a prefix of them no shorter than the cache could go back to (its window and
// the hidden column before it still held, RotatingKVCache.canTrim), which is what lets the same
// prompt asked again (whose last token is computed anew) reuse it. With a DiskPrefixCache behind
// it, what is evicted or still held at the end goes to disk, and a longer prefix on disk is reloaded.
import * as mx from "../mlx";
import type { KVCache } from "../models";
import { shortestQuantized, type Stored } from "../models/cache";
import { isChannelLayout, rowKeys } from "../models/channel-keys";
import type { RemoteLayers } from "../models/model";
import { RotatingKVCache } from "../models/rotating-cache";
import type { DiskPrefixCache } from "./disk-prefix-cache";
import type { PromptCacheEntry } from "./prompt-cache-file";

interface Entry {
  /** Its number, as the other processes of a split model know it. */
  id: number;
  /** Whose keys and values these are: 0 for the base model, else an adapter's id. */
  namespace: number;
  tokens: number[];
  /** Per layer, [1, heads, tokens.length - dropped, ·], stored as the cache stores them (maybe quantized). */
  keys: Stored[];
  values: Stored[];
  /** Positions the rotating cache it came from no longer held. */
  dropped: number;
  /** The shortest prefix of its tokens it can serve: 0 when it holds all its positions. */
  shortest: number;
  bytes: number;
  lastUsed: number;
}

interface TrieNode {
  children: Map<number, TrieNode>;
  /**
   * The latest stored entry whose tokens pass through this node and that can serve the prefix
   * ending here: one from a rotating cache that dropped positions is indexed only from its
   * `shortest` on, so a longer one stored after it (a prompt's answer) hides it only where the
   * longer one serves as well.
   */
  entry?: Entry;
}

export interface PrefixMatch {
  /** The entry's number (see Entry.id). */
  id: number;
  length: number;
  keys: Stored[];
  values: Stored[];
  dropped: number;
}

export class PrefixCache {
  #entries: Entry[] = [];
  /** A trie per namespace: an adapter's keys and values differ from the base model's. */
  #roots = new Map<number, TrieNode>();
  #clock = 0;
  #nextId = 1;
  /**
   * A prefix restored from disk that alone is larger than the budget: lent to the request that
   * asked for it (its caches take their own references when seeded) and let go at the next
   * lookup, never indexed. Without it, a prefix too large for memory went to disk for nothing.
   */
  #lent?: Entry;
  /**
   * The processes holding the other layers of a model split across processes: each keeps its
   * own layers' keys and values of every entry, stored and evicted when this cache says.
   */
  mirror?: Pick<RemoteLayers, "savePrefix" | "dropPrefix">;
  hits = 0;
  misses = 0;
  hitTokens = 0;

  constructor(
    readonly maxBytes: number,
    /** Most entries kept (a conversation needs only its latest). */
    readonly maxEntries = Infinity,
    readonly disk?: DiskPrefixCache,
  ) {}

  get bytes(): number {
    return this.#entries.reduce((n, e) => n + e.bytes, 0);
  }

  get entries(): number {
    return this.#entries.length;
  }

  /** The longest stored prefix of `prompt`, at most `limit` tokens long, computed in `namespace` (0: the base model, else an adapter's id). */
  lookup(prompt: number[], limit: number, namespace = 0): PrefixMatch | undefined {
    this.#releaseLent();
    let node = this.#root(namespace);
    let depth = 0;
    let best: { entry: Entry; depth: number } | undefined;
    while (depth < limit) {
      const next = node.children.get(prompt[depth]!);
      if (!next) break;
      node = next;
      depth++;
      if (node.entry) best = { entry: node.entry, depth };
    }
    // The disk holds the base model's prefixes only: its files are keyed by the model, not by adapter.
    const restored = namespace === 0 ? this.#restore(prompt, limit, best?.depth ?? 0) : undefined;
    if (restored) best = restored;
    if (!best) {
      this.misses++;
      return undefined;
    }
    const { entry } = best;
    entry.lastUsed = ++this.#clock;
    this.hits++;
    this.hitTokens += best.depth;
    return { id: entry.id, length: best.depth, keys: entry.keys, values: entry.values, dropped: entry.dropped };
  }

  /** A prefix longer than `atLeast` from disk, loaded into memory as an entry. */
  #restore(prompt: number[], limit: number, atLeast: number): { entry: Entry; depth: number } | undefined {
    const disk = this.disk;
    if (!disk) return undefined;
    // A damaged file (or one with a damaged share) is removed; then the next longest is tried.
    for (let found = disk.longest(prompt, limit, atLeast); found; found = disk.longest(prompt, limit, atLeast)) {
      const loaded = disk.load(found.name);
      if (!loaded) continue;
      const taken = this.#entryOf(loaded);
      // One larger than the whole budget is lent to this request alone (see #lent).
      const entry = taken.bytes <= this.maxBytes ? this.#admit(taken) : (this.#lent = taken);
      if (!entry) return undefined;
      if (!disk.loadShares(found.name, entry.id, loaded)) {
        if (entry === this.#lent) this.#releaseLent();
        else this.#remove(entry);
        continue;
      }
      disk.restoredTokens += found.length;
      return { entry, depth: found.length };
    }
    return undefined;
  }

  /**
   * Drops the entries numbered `ids` and their files on disk: a step of sequences that started
   * from them failed, and what they hold may be why (a file whose header misstates a tensor's
   * shape passes its checksum). Left in, each later request sharing their prefix failed as well.
   */
  discard(ids: readonly number[], why: Error): void {
    const discarded = [...this.#entries, ...(this.#lent ? [this.#lent] : [])].filter((e) => ids.includes(e.id));
    for (const entry of discarded) {
      if (entry.namespace === 0) this.disk?.discard(entry, why);
      if (entry === this.#lent) this.#releaseLent();
      else this.#remove(entry);
    }
  }

  /** Drops `entry` (here and on the other processes). */
  #remove(entry: Entry): void {
    this.#entries = this.#entries.filter((e) => e !== entry);
    this.#free(entry);
    this.#reindex();
  }

  /** Frees an entry's arrays, here and on the other processes. */
  #free(entry: Entry): void {
    for (const t of [...entry.keys, ...entry.values].flat()) t.free();
    this.mirror?.dropPrefix(entry.id);
  }

  /** An entry of the base model read from a file, its arrays kept (owned by this cache). */
  #entryOf(loaded: PromptCacheEntry): Entry {
    const arrays = [...loaded.keys, ...loaded.values].flat();
    for (const t of arrays) mx.keep(t);
    const { tokens, dropped, keys, values } = loaded;
    const bytes = arrays.reduce((sum, t) => sum + t.nbytes, 0);
    const shortest = shortestServed(loaded);
    return {
      id: this.#nextId++,
      namespace: 0,
      tokens,
      dropped,
      shortest,
      keys,
      values,
      bytes,
      lastUsed: ++this.#clock,
    };
  }

  #releaseLent(): void {
    const entry = this.#lent;
    if (!entry) return;
    this.#lent = undefined;
    this.#free(entry);
  }

  /** Takes in an entry of the base model read from a file (it owns the arrays now); undefined when over the budget. */
  adopt(loaded: PromptCacheEntry): Entry | undefined {
    return this.#admit(this.#entryOf(loaded));
  }

  /** Indexes an entry this cache owns, evicting what the budget then leaves no room for (it too, if too big). */
  #admit(entry: Entry): Entry | undefined {
    this.#entries.push(entry);
    this.#index(entry);
    this.#dropHidden(entry);
    this.#evict();
    return this.#entries.includes(entry) ? entry : undefined;
  }

  /**
   * Stores the keys and values of `tokens` from `caches[l]` rows `row` (after `skip` padding
   * columns), of which a rotating cache no longer holds `dropped`, computed in `namespace`.
   */
  insert(tokens: number[], caches: KVCache[], row = 0, skip = 0, dropped = 0, namespace = 0): void {
    if (tokens.length === 0 || this.#covered(tokens, namespace)) return;
    const n = tokens.length - dropped;
    const shortest = shortestPrefix(caches, row);
    // Quantized before its own positions passed --kv-quant-start (a batch another row took past
    // it): no prefix of it is held as a prompt alone would hold it.
    if (shortest > tokens.length) return;
    const { keys, values } = snapshotRow(caches, row, skip, n);
    const arrays = [...keys, ...values].flat();
    const bytes = arrays.reduce((sum, t) => sum + t.nbytes, 0);
    if (bytes > this.maxBytes) {
      if (namespace === 0 && this.disk) {
        // Straight to disk; the other processes of a split model hold their share just for that.
        const id = this.#nextId++;
        this.mirror?.savePrefix(id, caches, row, skip, n);
        this.disk.save({ tokens, dropped, shortest, keys, values }, id);
        this.mirror?.dropPrefix(id);
      }
      for (const t of arrays) t.free();
      return;
    }
    const id = this.#nextId++;
    const entry: Entry = {
      id,
      namespace,
      tokens: [...tokens],
      keys,
      values,
      dropped,
      shortest,
      bytes,
      lastUsed: ++this.#clock,
    };
    this.#entries.push(entry);
    this.#index(entry);
    this.mirror?.savePrefix(id, caches, row, skip, n);
    this.#dropHidden(entry);
    this.#evict();
  }

  /**
   * Drops the entries `entry` now hides in the trie: those of its namespace whose tokens start
   * its own and that it serves from as short a prefix on (a prompt's entry, once the entry of
   * its prompt and answer is stored). No lookup could return them again, yet they held their
   * bytes until evicted (half the budget, a prompt and its answer per conversation). They go to
   * disk as an evicted entry does: a file is read only for a prefix that spares an eighth of it,
   * so the prompt's serves requests that share less of it than its answer's would need.
   */
  #dropHidden(entry: Entry): void {
    const servedFrom = (e: Entry) => Math.max(1, Math.min(e.shortest, e.tokens.length));
    const hidden = this.#entries.filter(
      (e) =>
        e !== entry &&
        e.namespace === entry.namespace &&
        e.tokens.length <= entry.tokens.length &&
        servedFrom(entry) <= servedFrom(e) &&
        e.tokens.every((t, i) => t === entry.tokens[i]),
    );
    if (hidden.length === 0) return;
    this.#entries = this.#entries.filter((e) => !hidden.includes(e));
    for (const e of hidden) {
      if (e.namespace === 0) this.disk?.save(e, e.id);
      this.#free(e);
    }
  }

  // An entry already serving these tokens (they or a longer run starting with them) makes a new one useless.
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
    let depth = 0;
    for (const t of entry.tokens) {
      let next = node.children.get(t);
      if (!next) node.children.set(t, (next = { children: new Map() }));
      if (++depth >= Math.min(entry.shortest, entry.tokens.length)) next.entry = entry;
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
      if (victim.namespace === 0) this.disk?.save(victim, victim.id);
      this.#free(victim);
    }
    this.#reindex();
  }

  // Rebuild the trie from what is left (entries are few; a rebuild keeps it simple and exact).
  #reindex(): void {
    this.#roots.clear();
    for (const e of [...this.#entries].sort((a, b) => a.lastUsed - b.lastUsed)) this.#index(e);
  }

  /** Drops every entry (writing each to disk first, when there is one). */
  clear(): void {
    this.#releaseLent(); // on disk already
    for (const e of this.#entries) if (e.namespace === 0) this.disk?.save(e, e.id);
    for (const e of this.#entries) this.#free(e);
    this.#entries = [];
    this.#roots.clear();
  }
}

/**
 * `positions` positions of row `row` of each layer's cache, after `skip` padding columns, copied
 * out (evaluated). A layer this process does not compute (a model split across processes)
 * holds none: its keys and values are empty.
 */
export function snapshotRow(caches: KVCache[], row: number, skip: number, positions: number) {
  const snapshot = (stored: Stored | undefined) =>
    (stored ?? []).map((t) =>
      mx.keep(mx.scope(() => mx.contiguous(mx.slice(t, [row, 0, skip], [row + 1, t.shape[1]!, skip + positions])))),
    );
  // A row's slice that is already contiguous (one head, or every column) is not copied: the
  // snapshot is a view of the cache's buffer, which the cache then no longer owns alone.
  for (const c of caches) {
    const [, heads, columns] = c.values?.[0]?.shape ?? [];
    if (heads === 1 || (skip === 0 && positions === columns)) c.lendBuffers();
  }
  // Per-channel keys are taken out of their groups and grouped again from the prefix's start.
  const keys = caches.map((c) =>
    isChannelLayout(c.keys)
      ? mx.scope(() => rowKeys(c.keys!, c.offset, row, skip, positions, c.quantization!)).map(mx.keep)
      : snapshot(c.keys),
  );
  const values = caches.map((c) => snapshot(c.values));
  mx.evaluate(...[...keys, ...values].flat());
  return { keys, values };
}

/** Fresh one-sequence caches start from a stored prefix: `length` positions, `dropped` of them no longer held. */
export function seedCaches(caches: KVCache[], keys: Stored[], values: Stored[], length: number, dropped: number): void {
  caches.forEach((c, layer) => {
    // A layer another process computes: nothing stored here, and its cache stays empty.
    if (keys[layer]!.length === 0) return;
    if (c instanceof RotatingKVCache) c.seed(keys[layer]!, values[layer]!, length, dropped);
    else c.seed(keys[layer]!, values[layer]!, length);
  });
}

/**
 * The shortest prefix of its tokens `entry` serves: the one it says (see shortestPrefix), else
 * any when it holds all its positions and all of them when not.
 */
export function shortestServed(entry: Pick<PromptCacheEntry, "tokens" | "dropped" | "shortest">): number {
  return Math.min(entry.shortest ?? (entry.dropped === 0 ? 0 : entry.tokens.length), entry.tokens.length);
}

/**
 * The shortest prefix `row` of a cache serves, held as a cache computing that prefix alone would
 * hold it: no shorter than a rotating cache can go back to, and past --kv-quant-start once
 * quantized (shortestQuantized). 0: any prefix.
 */
export function shortestPrefix(caches: KVCache[], row: number): number {
  const first = caches[0];
  return Math.max(first instanceof RotatingKVCache ? first.shortestTrim(row) : 0, shortestQuantized(first));
}

/** Positions of `row` a rotating cache no longer holds (0 for a cache that keeps everything). */
export function droppedBy(caches: KVCache[], row: number): number {
  const first = caches[0];
  return first instanceof RotatingKVCache ? first.dropped[row]! : 0;
}
