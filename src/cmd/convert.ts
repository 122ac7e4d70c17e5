// `mlx convert <model.gguf> [dir]`: write an MLX-community directory from a GGUF file; without
// a directory, into the store, where a second conversion of the same file is a lookup.
import { formatBytes, shellWord } from "../format";
import { defineCommand } from "citty";
import { existsSync, readdirSync, realpathSync, statSync } from "node:fs";
import { basename, dirname, isAbsolute, join, relative, resolve } from "node:path";
import { convertGGUF } from "../models/convert";
import { isGGUFFile } from "../models/gguf";
import { conversionKey, convertedModel, refuseTakenName } from "../store/derived";
import { readManifest } from "../store/manifest";
import { storeRoot } from "../store/paths";
import { modelRequest } from "../store/pull";
import { resolveModelPath } from "../store/resolve";
import { withRepairHint } from "../store/store";
import { fail, log, setVerbose, warnEvicted } from "./log";
import { numberFlag } from "./options";

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
        "Re-quantize the tensors a load dequantizes (Q6_K, Q3_K, ...) or widens to 8 bits (Q5_0, Q5_1, Q5_K) to this many bits (default 4; 0 keeps them as loaded); given, an F16/BF16/F32 file's matrices too",
    },
    "group-size": { type: "string", description: "Group size of that quantization (default 64)" },
    verbose: { type: "boolean", alias: "v", description: "Stack traces on errors" },
  },
  async run({ args }) {
    setVerbose(Boolean(args.verbose));
    let gguf: string | undefined;
    try {
      const bits = args.bits === undefined ? undefined : numberFlag("bits", args.bits, { whole: true, zero: true });
      const groupSize =
        args["group-size"] === undefined ? undefined : numberFlag("group-size", args["group-size"], { whole: true });
      const path = await resolveModelPath(args.source);
      if (statSync(path).isDirectory() || !isGGUFFile(path)) throw new Error(`${path} is not a GGUF file`);
      gguf = path;
      // An unset shell variable ("$OUT") must not turn into the store, or with --force into the current directory.
      if (args.output === "")
        throw new Error("the output directory is empty; give one, or leave it out to convert into the store");
      if (args.output === undefined) {
        // The store keeps one conversion per GGUF (keyed on its bytes alone): other settings have nowhere to go.
        if (bits !== undefined || groupSize !== undefined)
          throw new Error(
            "--bits and --group-size need an output directory: a conversion into the store keeps the default quantization",
          );
        // Named as the store names the source: a path after its file, a stored model or alias whole
        // (org/repo:Q4_K_M; its base name alone would be another org's model of that repo too).
        const name = `${modelRequest(args.source).name}-mlx`;
        refuseTakenName(
          name,
          "convert",
          `convert into a directory instead (mlx convert ${shellWord(args.source)} DIR)`,
        );
        await refuseReplacingAnotherConversion(name, path, args.source);
        const stored = await convertedModel(path, name, args.source);
        warnEvicted(stored.evicted);
        log.success(
          stored.converted
            ? `converted into the store as ${stored.name}`
            : `${stored.name}: already converted (same file, same converter)`,
        );
        process.stdout.write(`${stored.path}\n`);
        return;
      }
      refuseOutputOverlapping(args.output, path);
      if (args.force) refuseReplacingNonModel(args.output);
      // convertGGUF names the values it accepts.
      const result = await convertGGUF(path, args.output, { force: Boolean(args.force), bits, groupSize });
      log.success(`wrote ${result.tensors} tensors (${formatBytes(result.bytes)}) to ${result.dir}`);
      process.stdout.write(`${result.dir}\n`);
    } catch (error) {
      // Only a failure to read the model's own files may mean a damaged stored model.
      fail(gguf ? withRepairHint(error, gguf) : error, Boolean(args.verbose));
    }
  },
});

/**
 * A conversion into the store is named after its input (model.gguf: model-mlx), so another file of
 * that name would replace, without a word, the conversion stored of the first: refused. The same
 * input again, changed since, replaces its own; the same bytes under another name are found again.
 */
async function refuseReplacingAnotherConversion(name: string, gguf: string, given: string): Promise<void> {
  const earlier = readManifest(name);
  const madeFrom = earlier?.source.startsWith("convert:") ? earlier.madeFrom?.[0] : undefined;
  // As the manifest records its input: a path absolute, an alias or stored model by name.
  const input = existsSync(given) ? resolve(given) : given;
  if (madeFrom === undefined || madeFrom === input || earlier!.derivedKey === (await conversionKey(gguf))) return;
  throw new Error(
    `'${name}' is the conversion of ${madeFrom}; convert ${shellWord(given)} into a directory instead (mlx convert ${shellWord(given)} DIR), or remove that one first (mlx rm ${shellWord(name)})`,
  );
}

/**
 * The output directory is replaced as a whole (with --force), so it must not hold the GGUF being
 * read, nor overlap the store, whose blobs and models other commands rely on.
 */
function refuseOutputOverlapping(output: string, source: string): void {
  const target = realPath(output);
  const overlaps = (path: string) => contains(target, path) || contains(path, target);
  if (contains(target, realPath(source)) || contains(target, resolve(source)))
    throw new Error(`output directory ${resolve(output)} would replace the source ${source}; choose another directory`);
  if (overlaps(realPath(storeRoot())))
    throw new Error(
      `output directory ${resolve(output)} overlaps the model store (${storeRoot()}); choose a directory outside it`,
    );
}

/**
 * --force deletes the output directory before the conversion takes its place: only a model
 * directory (an earlier conversion) may go, never one typed by mistake (`.`, a project, ~).
 */
function refuseReplacingNonModel(output: string): void {
  const entries = statSync(output, { throwIfNoEntry: false })?.isDirectory() ? readdirSync(output) : [];
  if (entries.length === 0) return;
  if (entries.includes("config.json") && entries.some((name) => name.endsWith(".safetensors"))) return;
  throw new Error(
    `${resolve(output)} is not a model directory (no config.json and .safetensors): --force replaces only an earlier conversion; choose another directory`,
  );
}

/** Whether `path` is `dir` or lies inside it. */
function contains(dir: string, path: string): boolean {
  const inside = relative(dir, path);
  return !inside.startsWith("..") && !isAbsolute(inside);
}

/** `path` with its symlinks resolved, as far as it exists (an output directory may not yet). */
function realPath(path: string): string {
  const absolute = resolve(path);
  if (existsSync(absolute)) return realpathSync(absolute);
  const parent = dirname(absolute);
  return parent === absolute ? absolute : join(realPath(parent), basename(absolute));
}
