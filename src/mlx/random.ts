// Random numbers: a global seed, or explicit keys so each request samples reproducibly.
import { check, lib, outPtr, outPtr2, readOut } from "./ffi";
import { MxArray, wrap } from "./array";
import { Dtype, type DtypeCode } from "./dtype";

export function seed(value: number): void {
  check(lib.mlxs_random_seed(BigInt(Math.trunc(value)) & 0xffffffffffffffffn), "random.seed");
}

export function key(value: number): MxArray {
  return wrap(lib.mlxs_random_key(outPtr, BigInt(Math.trunc(value)) & 0xffffffffffffffffn), "random.key");
}

/** Two independent keys from one. */
export function split(k: MxArray): [MxArray, MxArray] {
  check(lib.mlxs_random_split(outPtr, outPtr2, k.handle), "random.split");
  return [new MxArray(readOut(0)), new MxArray(readOut(1))];
}

export function categorical(logits: MxArray, axis = -1, k?: MxArray): MxArray {
  return wrap(lib.mlxs_random_categorical(outPtr, logits.handle, axis, k?.handle ?? null), "random.categorical");
}

export function uniform(shape: number[], dtype: DtypeCode = Dtype.float32, k?: MxArray): MxArray {
  return wrap(
    lib.mlxs_random_uniform(outPtr, Int32Array.from(shape), shape.length, dtype, k?.handle ?? null),
    "random.uniform",
  );
}

export function normal(shape: number[], dtype: DtypeCode = Dtype.float32, k?: MxArray): MxArray {
  return wrap(
    lib.mlxs_random_normal(outPtr, Int32Array.from(shape), shape.length, dtype, k?.handle ?? null),
    "random.normal",
  );
}
