// src/mlx/binding/symbols.ts against ffi/mlx_shim.h: the same functions, each with the same
// number of arguments and the same kind of argument and result, so the two cannot drift.
import { describe, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, realpathSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { shimCandidates } from "../src/mlx/ffi";
import { symbols, type Kind } from "../src/mlx/binding/symbols";

const header = readFileSync(join(import.meta.dir, "..", "ffi", "mlx_shim.h"), "utf8");

/** Every `MLXS_API <result> <name>(<args>);` declaration (arguments may span lines). */
function declarations(text: string): Map<string, { result: string; args: string[] }> {
  const found = new Map<string, { result: string; args: string[] }>();
  const source = text.replace(/\/\/.*$/gm, "");
  for (const m of source.matchAll(/MLXS_API\s+([^;(]*?)\s*\b(mlxs_\w+)\s*\(([^)]*)\)\s*;/g)) {
    const args =
      m[3]!.trim() === "void" || m[3]!.trim() === "" ? [] : m[3]!.split(",").map((a) => a.replace(/\s+/g, " ").trim());
    found.set(m[2]!, { result: m[1]!.replace(/\s+/g, " ").trim(), args });
  }
  return found;
}

/** The kinds a C type may be declared as in the table. */
function kindsOf(cType: string): Kind[] {
  const type = cType.replace(/\b[a-z_]\w*$/, "").trim() || cType; // drop the parameter name
  if (type.includes("*")) return /\bchar\s*\*$/.test(type) ? ["cstring", "ptr"] : ["ptr"];
  if (/^(const )?void$/.test(type)) return ["void"];
  if (/\b(size_t|uint64_t)$/.test(type)) return ["u64"];
  if (/\bint$/.test(type)) return ["i32"];
  if (/\bfloat$/.test(type)) return ["f32"];
  if (/\bdouble$/.test(type)) return ["f64"];
  throw new Error(`no kind for the C type '${cType}'`);
}

describe("the shim's symbol table", () => {
  const declared = declarations(header);

  test("the header parses into the functions it declares", () => {
    expect(declared.size).toBeGreaterThan(80);
    expect(declared.get("mlxs_sdpa")?.args.length).toBe(8);
  });

  test("the table and the header name the same functions", () => {
    expect(Object.keys(symbols).sort()).toEqual([...declared.keys()].sort());
  });

  for (const [name, { result, args }] of declarations(header)) {
    test(`${name}: arguments and result agree`, () => {
      const entry: { args: readonly Kind[]; returns: Kind } = symbols[name as keyof typeof symbols];
      expect(entry).toBeDefined();
      expect(entry.args.length).toBe(args.length);
      entry.args.forEach((kind, i) => expect(kindsOf(args[i]!)).toContain(kind));
      expect(kindsOf(`${result} r`)).toContain(entry.returns);
    });
  }
});

test("the shim is looked for beside the executable, the source or MLX_SHIM_PATH, never in the working directory", () => {
  const elsewhere = mkdtempSync(join(tmpdir(), "mlx-cwd-"));
  const before = process.cwd();
  process.chdir(elsewhere);
  try {
    // Before: $PWD/.mlx/ came last, so a binary without a shim beside it, run inside an untrusted
    // checkout, loaded that checkout's native library.
    expect(shimCandidates().filter((path) => path.startsWith(realpathSync(elsewhere)))).toEqual([]);
  } finally {
    process.chdir(before);
    rmSync(elsewhere, { recursive: true });
  }
});
