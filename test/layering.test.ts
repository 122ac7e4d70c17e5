// The layers the engine issue draws: the front ends (the CLI, the server, the API shapes, the
// benchmarks) reach MLX only through src/engine, never src/mlx directly.
import { describe, expect, test } from "bun:test";
import { readdirSync, readFileSync } from "node:fs";
import { join, relative } from "node:path";

const src = join(import.meta.dir, "..", "src");

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? sources(join(dir, e.name)) : e.name.endsWith(".ts") ? [join(dir, e.name)] : [],
  );
}

describe("layering", () => {
  for (const folder of ["server", "cmd", "api", "bench", "providers"]) {
    test(`src/${folder} imports nothing from src/mlx`, () => {
      const offenders = sources(join(src, folder)).filter((file) =>
        /from\s+"(\.\.\/)+mlx(\/[^"]*)?"/.test(readFileSync(file, "utf8")),
      );
      expect(offenders.map((f) => relative(src, f))).toEqual([]);
    });
  }
});
