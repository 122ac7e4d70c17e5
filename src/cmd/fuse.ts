// `mlx fuse <model> --adapter DIR [name]`: the model with a LoRA/DoRA adapter merged into its
// weights (re-quantized as the base was), stored as a model of its own that runs without the
// adapter; a second fuse of the same base and adapter is a lookup.
import { defineCommand } from "citty";
import { basename, resolve } from "node:path";
import { readAdapterDirectory } from "../models/lora";
import { fusedModel, refuseTakenName } from "../store/derived";
import { resolveModelPath } from "../store/resolve";
import { fail, log, setVerbose, warnEvicted } from "./log";
import { adapterFrom } from "./options";

export default defineCommand({
  meta: { name: "fuse", description: "Merge a LoRA/DoRA adapter into its base model, stored as a new model" },
  args: {
    model: { type: "positional", required: true, description: "The base model: an alias, a stored model or a path" },
    name: {
      type: "positional",
      required: false,
      description: "Name of the fused model in the store (default: <model>-<adapter directory>)",
    },
    adapter: { type: "string", description: "The adapter directory (adapter_config.json + adapters.safetensors)" },
    "de-quantize": {
      type: "boolean",
      alias: ["dequantize"],
      description:
        "Write a quantized base's weights as the floats they stand for, with no quantization in config.json (mlx_lm.fuse --dequantize), e.g. for an export",
    },
    verbose: { type: "boolean", alias: "v", description: "Stack traces on errors" },
  },
  async run({ args }) {
    setVerbose(Boolean(args.verbose));
    try {
      const adapter = adapterFrom(args, args.model);
      if (!adapter) throw new Error("give the adapter to fuse with --adapter DIR");
      // Checked before the base is pulled or hashed, as run --adapter checks it.
      readAdapterDirectory(adapter);
      const base = await resolveModelPath(args.model);
      const name = args.name ?? `${basename(args.model).replace(/\.gguf$/, "")}-${basename(resolve(adapter))}`;
      if (!/^[\w.-]+$/.test(name)) throw new Error(`'${name}' is not a model name (letters, digits, '.', '_', '-')`);
      refuseTakenName(name, "fuse", "give the fused model another name");
      const stored = await fusedModel(base, resolve(adapter), name, args.model, {
        dequantize: Boolean(args["de-quantize"]),
      });
      warnEvicted(stored.evicted);
      // A lookup answers with the earlier fuse's name: said even to a script, which would go on to use `name`.
      if (stored.name !== name)
        log.warn(
          `the same base and adapter were fused before, as ${stored.name}: use that name (${name} was not stored)`,
        );
      else log.success(stored.converted ? `fused into the store as ${stored.name}` : `${stored.name}: already fused`);
      process.stdout.write(`${stored.path}\n`);
    } catch (error) {
      fail(error, Boolean(args.verbose));
    }
  },
});
