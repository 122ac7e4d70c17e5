// A Bun macro (imported `with { type: "macro" }`): runs when the code is bundled or
// transpiled, so the hash of source files is baked into the executable as a string.
import { readFileSync } from "node:fs";
import { join } from "node:path";

/** SHA-256 (16 hex digits) of the named files, relative to src/. */
export function sourceHash(...paths: string[]): string {
  const hasher = new Bun.CryptoHasher("sha256");
  for (const path of paths) hasher.update(readFileSync(join(import.meta.dir, "..", path)));
  return hasher.digest("hex").slice(0, 16);
}
