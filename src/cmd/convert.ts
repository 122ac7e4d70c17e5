// `mlx convert <model.gguf> [dir]`: write an MLX-community directory from a GGUF file; without
// a directory, into the store, where a second conversion of the same file is a lookup.
import { formatBytes } from "../format";
import { defineCommand } from "citty";
import { statSync } from "node:fs";
import { basename } from "node:path";
import { convertGGUF } from "../models/convert";
import { isGGUFFile } from "../models/gguf";
import { convertedModel } from "../store/derived";
import { resolveModelPath } from "../store/resolve";
import { repairHint } from "../store/store";
import { fail, log, setVerbose } from "./log";

export default defineCommand({
  meta: { name: "convert", description: "Convert a GGUF model into an MLX-community directory (loadable by mlx-lm)" },
  args: {
    source: { type: "positional", required: true, description: "A .gguf file, or an alias whose source is one" },
    output: {
      type: "positional",
      required: false,
      description: "Directory to write (default: into the store, as <source>-mlx)",
    },
    force: { type: "boolean", description: "Replace the output directory if it is not empty" },
    bits: {
      type: "string",
      description:
        "Re-quantize tensors MLX dequantizes at load (K-quants, Q5_0, ...) to this many bits (default 4; 0 keeps them 16-bit)",
    },
    "group-size": { type: "string", description: "Group size of that quantization (default 64)" },
    verbose: { type: "boolean", alias: "v", description: "Stack traces on errors" },
  },
  async run({ args }) {
    setVerbose(Boolean(args.verbose));
    let gguf: string | undefined; // set once it is known to be one: a failure after that may be damage
    try {
      const path = await resolveModelPath(args.source);
      if (statSync(path).isDirectory() || !isGGUFFile(path)) throw new Error(`${path} is not a GGUF file`);
      gguf = path;
      if (!args.output) {
        const name = `${basename(args.source).replace(/\.gguf$/, "")}-mlx`;
        const stored = await convertedModel(path, name);
        log.success(
          stored.converted
            ? `converted into the store as ${stored.name}`
            : `${stored.name}: already converted (same file, same converter)`,
        );
        process.stdout.write(`${stored.path}\n`);
        return;
      }
      // convertGGUF names the values it accepts.
      const bits = args.bits === undefined ? undefined : Number(args.bits);
      const groupSize = args["group-size"] === undefined ? undefined : Number(args["group-size"]);
      const result = convertGGUF(path, args.output, { force: Boolean(args.force), bits, groupSize });
      log.success(`wrote ${result.tensors} tensors (${formatBytes(result.bytes)}) to ${result.dir}`);
      process.stdout.write(`${result.dir}\n`);
    } catch (error) {
      const hint = gguf && repairHint(gguf);
      fail(hint ? new Error(`${(error as Error).message}; ${hint}`) : error, Boolean(args.verbose));
    }
  },
});
