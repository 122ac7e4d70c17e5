// Caches keyed by what clients send (schemas, grammars) stay bounded: a client may send a new
// one with every request.

/**
 * Sets `key` to `value` as `map`'s newest entry, and drops the oldest past `max` (a Map iterates
 * in insertion order, so the first key is the one set or used longest ago).
 */
export function setNewest<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  map.delete(key);
  map.set(key, value);
  if (map.size > max) map.delete(map.keys().next().value!);
}
