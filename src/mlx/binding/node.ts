// The binding on Node: ffi-rs (prebuilt N-API binaries). A pointer argument may be a handle
// (a number, passed as a 64-bit integer) or memory (a typed array or Buffer, passed as its
// address and written in place), so each call's argument types are settled when it is made.
import type { DataType as DataTypes, JsExternal } from "ffi-rs";
import { symbols, type Binding, type Kind, type Shim } from "./symbols";

const library = "mlx_shim";
// Imported when bound, not at the top: the compiled executable (Bun) must not load ffi-rs.
type FfiRs = typeof import("ffi-rs");

export async function bind(path: string): Promise<Binding> {
  const ffi: FfiRs = await import("ffi-rs");
  const { createExternalBuffer, DataType, load, open } = ffi;
  const results: Record<Kind, DataTypes> = {
    i32: DataType.I32,
    u64: DataType.BigInt,
    f32: DataType.Float,
    f64: DataType.Double,
    ptr: DataType.BigInt,
    cstring: DataType.String,
    void: DataType.Void,
  };
  open({ library, path });
  const lib = Object.fromEntries(
    Object.entries(symbols).map(([funcName, s]) => {
      const retType = results[s.returns];
      const pointerResult = s.returns === "ptr";
      const call = (...values: unknown[]) => {
        const paramsType: DataTypes[] = [];
        const paramsValue: unknown[] = [];
        s.args.forEach((kind, i) => {
          const [type, value] = argument(ffi, kind, values[i]);
          paramsType.push(type);
          paramsValue.push(value);
        });
        const result = load({ library, funcName, retType, paramsType, paramsValue });
        return pointerResult || s.returns === "u64" ? Number(result as bigint) : result;
      };
      return [funcName, call];
    }),
  ) as unknown as Shim;
  return {
    runtime: "node",
    lib,
    readPointer: (address, offset) =>
      Number(createExternalBuffer(external(ffi, address + offset), 8).readBigUInt64LE(0)),
    readBytes: (address, length) => new Uint8Array(createExternalBuffer(external(ffi, address), length)),
  };
}

function argument({ DataType }: FfiRs, kind: Kind, value: unknown): [DataTypes, unknown] {
  switch (kind) {
    case "i32":
      return [DataType.I32, value];
    case "f32":
      return [DataType.Float, value];
    case "f64":
      return [DataType.Double, value];
    case "u64":
      return [DataType.BigInt, BigInt(value as bigint | number)];
    default:
      if (value === null || value === undefined) return [DataType.BigInt, 0n];
      if (typeof value === "number") return [DataType.BigInt, BigInt(value)];
      if (ArrayBuffer.isView(value))
        return [DataType.U8Array, Buffer.from(value.buffer, value.byteOffset, value.byteLength)];
      throw new TypeError(`cannot pass ${typeof value} as a pointer`);
  }
}

/** An External for a numeric address (what createExternalBuffer needs). */
function external(
  { createPointer, DataType, freePointer, PointerType, unwrapPointer }: FfiRs,
  address: number,
): JsExternal {
  const cell = createPointer({ paramsType: [DataType.BigInt], paramsValue: [BigInt(address)] });
  const [target] = unwrapPointer(cell);
  freePointer({ paramsType: [DataType.BigInt], paramsValue: cell, pointerType: PointerType.RsPointer });
  return target!;
}
