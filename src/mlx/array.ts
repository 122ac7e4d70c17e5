// MxArray: a TypeScript owner of one MLX array handle, with explicit, scoped lifetimes.
//
// Every array created inside `scope(fn)` is freed when fn returns, except what fn returns
// (and what it hands to `keep`). Arrays outside any scope (model weights, cache buffers)
// are freed explicitly with `free()`, with a FinalizationRegistry only as a safety net.
// Freeing promptly matters: MLX updates a buffer in place only when nothing else holds it.
import { check, lib, readOut, type Pointer } from "./ffi";
import { dtypeName, itemSize, type DtypeCode, type DtypeName } from "./dtype";

const leaked = new FinalizationRegistry<Pointer>((handle) => {
  lib.mlxs_array_free(handle);
  live--;
});
const scopes: Set<MxArray>[] = [];

// Handles held now (created, not yet freed by free() or the safety net): a leak shows as a count
// that does not come back to its baseline once a server is idle. One integer, cheap to keep.
let live = 0;

/** How many MLX array handles are alive now. */
export const liveArrays = (): number => live;

/** The typed arrays that hold an array's elements on the host. */
export type HostTypedArray =
  | Float32Array
  | Float64Array
  | Int32Array
  | Uint32Array
  | Int8Array
  | Uint8Array
  | Int16Array
  | Uint16Array
  | BigInt64Array
  | BigUint64Array;

export class MxArray {
  #handle: Pointer | 0;
  #shape?: number[];
  /** Set while the GC safety net covers this array; also the key to take it off again. */
  #guard?: object;

  constructor(handle: Pointer) {
    this.#handle = handle;
    live++;
    const current = scopes[scopes.length - 1];
    if (current) current.add(this);
    else this.guard();
  }

  /**
   * Puts the array under the safety net: if it is garbage-collected without free(), its handle
   * is freed then. At most once per array — two registrations would free the handle twice.
   */
  guard(): void {
    if (this.#guard || this.#handle === 0) return;
    // A separate token object: using the array itself as the token could keep it alive.
    this.#guard = {};
    leaked.register(this, this.#handle, this.#guard);
  }

  get handle(): Pointer {
    if (this.#handle === 0) throw new Error("use of a freed MLX array");
    return this.#handle;
  }

  get freed(): boolean {
    return this.#handle === 0;
  }

  free(): void {
    if (this.#handle === 0) return;
    lib.mlxs_array_free(this.#handle);
    live--;
    if (this.#guard) leaked.unregister(this.#guard);
    this.#guard = undefined;
    this.#handle = 0;
  }

  get shape(): number[] {
    if (!this.#shape) {
      const ndim = lib.mlxs_array_ndim(this.handle);
      const dims = new Int32Array(ndim);
      if (ndim > 0) lib.mlxs_array_shape(this.handle, dims);
      this.#shape = Array.from(dims);
    }
    return this.#shape;
  }

  get ndim(): number {
    return this.shape.length;
  }

  get dtype(): DtypeCode {
    return lib.mlxs_array_dtype(this.handle) as DtypeCode;
  }

  get dtypeName(): DtypeName {
    return dtypeName(this.dtype);
  }

  get size(): number {
    return Number(lib.mlxs_array_size(this.handle));
  }

  get nbytes(): number {
    return Number(lib.mlxs_array_nbytes(this.handle));
  }

  /** The value of a one-element array (evaluates it). */
  item(): number {
    const slot = new Float64Array(1);
    check(lib.mlxs_array_item(this.handle, slot), "item");
    return slot[0]!;
  }

  /** Raw bytes, row-major (evaluates the array). */
  bytes(): Uint8Array {
    const out = new Uint8Array(this.nbytes);
    check(lib.mlxs_array_to_host(this.handle, out, out.byteLength), "to_host");
    return out;
  }

  /** Elements as a typed array; 16-bit floats are widened to float32 first. */
  toTyped(): HostTypedArray {
    const name = this.dtypeName;
    if (name === "float16" || name === "bfloat16") {
      const out = new Float32Array(this.size);
      check(lib.mlxs_array_to_host_float32(this.handle, out, out.length), "to_host_float32");
      return out;
    }
    const b = this.bytes();
    const buf = b.buffer;
    switch (name) {
      case "float32":
        return new Float32Array(buf);
      case "float64":
        return new Float64Array(buf);
      case "int32":
        return new Int32Array(buf);
      case "uint32":
        return new Uint32Array(buf);
      case "int16":
        return new Int16Array(buf);
      case "uint16":
        return new Uint16Array(buf);
      case "int8":
        return new Int8Array(buf);
      case "uint8":
      case "bool":
        return new Uint8Array(buf);
      case "int64":
        return new BigInt64Array(buf);
      case "uint64":
        return new BigUint64Array(buf);
      default:
        throw new Error(`cannot read ${name} arrays on the host`);
    }
  }

  /** Elements as plain numbers (flat, row-major). */
  toArray(): number[] {
    return Array.from(this.toTyped() as ArrayLike<number | bigint>, Number);
  }
}

/** Wraps the handle the shim just wrote into the out slot. */
export function wrap(status: number, what: string): MxArray {
  check(status, what);
  return new MxArray(readOut());
}

/** Runs fn, then frees every array it created that is not part of its result. */
export function scope<T>(fn: () => T): T {
  const created = new Set<MxArray>();
  scopes.push(created);
  let result: T;
  try {
    result = fn();
  } catch (error) {
    scopes.pop();
    for (const a of created) a.free();
    throw error;
  }
  scopes.pop();
  const kept = new Set<MxArray>();
  collectArrays(result, kept, 0);
  for (const a of created) if (!kept.has(a)) a.free();
  for (const a of kept) if (created.has(a)) adopt(a);
  return result;
}

/** Takes an array out of the current scope so it outlives it (a cache buffer, a weight). */
export function keep<T extends MxArray | undefined>(a: T): T {
  if (a) {
    for (const s of scopes) s.delete(a);
    a.guard();
  }
  return a;
}

// A result that survives a scope belongs to the enclosing one, or to nobody (then the
// safety net covers it).
function adopt(a: MxArray): void {
  const parent = scopes[scopes.length - 1];
  if (parent) parent.add(a);
  else a.guard();
}

function collectArrays(value: unknown, into: Set<MxArray>, depth: number): void {
  if (depth > 4 || value === null || typeof value !== "object") return;
  if (value instanceof MxArray) {
    into.add(value);
    return;
  }
  if (Array.isArray(value)) {
    for (const v of value) collectArrays(v, into, depth + 1);
    return;
  }
  if (value instanceof Map) {
    for (const v of value.values()) collectArrays(v, into, depth + 1);
    return;
  }
  if (Object.getPrototypeOf(value) === Object.prototype) {
    for (const v of Object.values(value)) collectArrays(v, into, depth + 1);
  }
}

export { itemSize };
