// Loads libmlx_shim (our C ABI over MLX, built from ffi/) through the runtime's FFI: bun:ffi
// on Bun, ffi-rs on Node (binding/). Every call into MLX goes through `lib`; the rest of
// src/mlx wraps it in typed functions.
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { Binding, Pointer } from "./binding/symbols";

export type { Pointer } from "./binding/symbols";

const libraryName = process.platform === "darwin" ? "libmlx_shim.dylib" : "libmlx_shim.so";

/** Where the shim may live, in the order we look: explicit, beside the executable, the project's .mlx/. */
export function shimCandidates(): string[] {
  const candidates: string[] = [];
  if (process.env.MLX_SHIM_PATH) candidates.push(resolve(process.env.MLX_SHIM_PATH));
  const exeDir = dirname(process.execPath);
  candidates.push(join(exeDir, libraryName), join(exeDir, "..", ".mlx", libraryName));
  // From source (src/mlx/) or the built Node entry (dist/node/), not the compiled executable: the repo's own .mlx/.
  const moduleDir = dirname(fileURLToPath(import.meta.url));
  if (!moduleDir.startsWith("/$bunfs")) candidates.push(join(moduleDir, "..", "..", ".mlx", libraryName));
  // Never from the working directory: native code from whatever folder mlx runs in (an untrusted checkout).
  return [...new Set(candidates)];
}

async function openShim(): Promise<Binding> {
  // One that is set is the one asked for (a baseline's build, say): a typo must not load another unsaid.
  const asked = process.env.MLX_SHIM_PATH;
  if (asked && !existsSync(asked)) throw new Error(`MLX_SHIM_PATH names ${resolve(asked)}, which does not exist`);
  const tried = shimCandidates();
  const found = tried.find((path) => existsSync(path));
  if (!found) {
    throw new Error(
      `cannot find ${libraryName} (tried: ${tried.join(", ")}); run scripts/setup.sh, or set MLX_SHIM_PATH to the built library`,
    );
  }
  try {
    // Chosen at load; each runtime imports only its own FFI.
    const { bind } = "Bun" in globalThis ? await import("./binding/bun") : await import("./binding/node");
    return await bind(found);
  } catch (error) {
    throw new Error(`cannot load ${found}: ${(error as Error).message}; re-run scripts/setup.sh to rebuild it`);
  }
}

export const binding = await openShim();
export const lib = binding.lib;

/** Raised for any failure reported by MLX; carries MLX's own message. */
export class MlxError extends Error {
  override name = "MlxError";
}

export function lastError(): string {
  return String(lib.mlxs_last_error());
}

/** Throws the shim's last error when a call returned a non-zero status. */
export function check(status: number, what: string): void {
  if (status !== 0) throw new MlxError(`${what}: ${lastError()}`);
}

// Reusable slots for the handles the shim writes back. MLX calls are made from one thread
// only, so one scratch area is safe and saves an allocation per op. It lives in native memory:
// a small typed array's storage can be moved by the JS engine, and a cached pointer to it
// would then let native writes corrupt the JS heap.
export const outPtr = lib.mlxs_out_slots() as Pointer;
export const outPtr2 = (outPtr + 8) as Pointer;
export const outPtr3 = (outPtr + 16) as Pointer;

export function readOut(slot = 0): Pointer {
  return binding.readPointer(outPtr, slot * 8);
}

/** Encodes strings as NUL-terminated entries laid end to end, the shim's string-list form. */
export function packStrings(values: string[]): Buffer {
  return Buffer.from(values.map((v) => `${v}\0`).join(""), "utf8");
}

/** A C string argument: a NUL-terminated buffer. */
export function cstr(value: string): Buffer {
  return Buffer.from(`${value}\0`, "utf8");
}
