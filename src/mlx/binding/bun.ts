// The binding on Bun: bun:ffi, which compiles each call into a direct native call.
import type { FFIType as FFITypes, Pointer as BunPointer } from "bun:ffi";
import { symbols, type Binding, type Kind, type Shim } from "./symbols";

export async function bind(path: string): Promise<Binding> {
  // Imported here, not at the top: a bundle built for Node must not load bun:ffi.
  const { dlopen, FFIType, read, toArrayBuffer } = await import("bun:ffi");
  const types: Record<Kind, FFITypes> = {
    i32: FFIType.i32,
    u64: FFIType.u64_fast,
    f32: FFIType.f32,
    f64: FFIType.f64,
    ptr: FFIType.ptr,
    cstring: FFIType.cstring,
    void: FFIType.void,
  };
  const table = Object.fromEntries(
    Object.entries(symbols).map(([name, s]) => [
      name,
      { args: s.args.map((k) => (k === "u64" ? FFIType.u64 : types[k])), returns: types[s.returns] },
    ]),
  );
  const { symbols: fns } = dlopen(path, table);
  // A returned C string comes as a CString object; the binding promises a plain string.
  const lib = Object.fromEntries(
    Object.entries(fns).map(([name, fn]) => [
      name,
      symbols[name as keyof typeof symbols].returns === "cstring"
        ? (...args: unknown[]) => String((fn as (...a: unknown[]) => unknown)(...args))
        : fn,
    ]),
  ) as unknown as Shim;
  return {
    runtime: "bun",
    lib,
    readPointer: (address, offset) => read.ptr(address as BunPointer, offset) as number,
    readBytes: (address, length) => new Uint8Array(toArrayBuffer(address as BunPointer, 0, length)).slice(),
  };
}
