// A step back for KV caches: what they hold before a step is built on them, so that the step can
// be thrown away unevaluated and the caches be as they were. A pipeline stage builds its next
// decode step's graph while it waits for the message that asks for it (engine/pipeline/stage.ts):
// when the message is another one, the caches step back.
import * as mx from "../mlx";
import { BatchKVCache } from "./batch-cache";
import { KVCache, type Stored } from "./cache";
import { RotatingKVCache } from "./rotating-cache";

export interface CacheCheckpoint {
  /** The caches as they were at the checkpoint (what was built since is dropped, never evaluated). */
  restore(): void;
  /** The step built since is kept: the checkpoint lets go of the old buffers, so it may write them in place. */
  release(): void;
}

interface Held {
  keys?: Stored;
  values?: Stored;
  offset: number;
  deferKeys: boolean;
  leftPadding?: number[];
  dropped?: number[];
}

/** Kinds whose whole state is the fields below (a sliding-window cache keeps more: none for it). */
const kinds = new Set<unknown>([KVCache, BatchKVCache, RotatingKVCache]);

/** A checkpoint of `caches`, or undefined where some cache is of a kind that cannot step back. */
export function checkpoint(caches: KVCache[]): CacheCheckpoint | undefined {
  if (!caches.every((c) => kinds.has(c.constructor))) return undefined;
  // Handles of their own on the same buffers: a step's update frees the cache's handles.
  const own = (t?: Stored) => t?.map((a) => mx.keep(mx.retain(a)));
  const held: Held[] = caches.map((c) => ({
    keys: own(c.keys),
    values: own(c.values),
    offset: c.offset,
    deferKeys: c.deferKeys,
    leftPadding: c instanceof BatchKVCache ? [...c.leftPadding] : undefined,
    dropped: c instanceof RotatingKVCache ? [...c.dropped] : undefined,
  }));
  const release = () => {
    for (const h of held) for (const a of [...(h.keys ?? []), ...(h.values ?? [])]) a.free();
  };
  return {
    restore() {
      caches.forEach((c, i) => {
        const h = held[i]!;
        c.free(false);
        c.keys = h.keys;
        c.values = h.values;
        c.offset = h.offset;
        c.deferKeys = h.deferKeys;
        if (c instanceof BatchKVCache) c.leftPadding = h.leftPadding!;
        if (c instanceof RotatingKVCache) c.dropped = h.dropped!;
      });
    },
    release,
  };
}
