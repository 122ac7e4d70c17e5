// `mlx convert <model.gguf> <dir>`: write an MLX-community directory from a GGUF file.
import { defineCommand } from "citty";
import { statSync } from "node:fs";
import { convertGGUF } from "../models/convert";
import { isGGUFFile } from "../models/gguf";
import { resolveModelPath } from "../store/resolve";
import { fail, log, setVerbose } from "./log";

export default defineCommand({
  meta: { name: "convert", description: "Convert a GGUF model into an MLX-community directory (loadable by mlx-lm)" },
  args: {
    source: { type: "positional", required: true, description: "A .gguf file, or an alias whose source is one" },
    output: { type: "positional", required: true, description: "Directory to write" },
    force: { type: "boolean", description: "Replace the output directory if it is not empty" },
    verbose: { type: "boolean", alias: "v", description: "Stack traces on errors" },
  },
  async run({ args }) {
    setVerbose(Boolean(args.verbose));
    try {
      const path = await resolveModelPath(args.source);
      if (statSync(path).isDirectory() || !isGGUFFile(path)) throw new Error(`${path} is not a GGUF file`);
      const result = convertGGUF(path, args.output, { force: Boolean(args.force) });
      log.success(`wrote ${result.tensors} tensors (${(result.bytes / 1e6).toFixed(1)} MB) to ${result.dir}`);
      process.stdout.write(`${result.dir}\n`);
    } catch (error) {
      fail(error, Boolean(args.verbose));
    }
  },
});
