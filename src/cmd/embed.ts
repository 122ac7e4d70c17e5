// `mlx embed`: an embedding per input line (or per argument), one JSON array per line on stdout.
import { defineCommand } from "citty";
import { createInterface } from "node:readline";
import { embed } from "../engine/embed";
import { InvalidParameterError } from "../errors";
import { fail, setVerbose } from "./log";
import { openModel } from "./open-model";
import { adapterArg, adapterFrom, modelArg, positiveInteger } from "./options";
import { variadic } from "./strict-flags";

export default defineCommand({
  meta: {
    name: "embed",
    description: "Print an embedding (a JSON array) for each line of stdin, or for each text given",
  },
  args: {
    text: variadic({
      type: "positional",
      required: false,
      description: "Texts to embed (default: each line of stdin)",
    }),
    ...modelArg,
    ...adapterArg,
    dimensions: { type: "string", description: "Keep the first N dimensions (normalised again)" },
    verbose: { type: "boolean", alias: "v", description: "Stack traces on errors" },
  },
  async run({ args }) {
    const verbose = Boolean(args.verbose);
    setVerbose(verbose);
    let dimensions: number | undefined;
    try {
      dimensions = args.dimensions === undefined ? undefined : positiveInteger("dimensions", args.dimensions);
      const texts = args._.length > 0 ? args._.map(String) : undefined;
      const lm = await openModel(args.model, { adapter: adapterFrom(args, args.model) });
      const lines = texts ?? createInterface({ input: process.stdin, crlfDelay: Infinity });
      // Errors name the text as the user gave it.
      const source = texts ? "argument" : "input line";
      let count = 0;
      // Line by line, so a pipe gets each vector as soon as it is computed.
      for await (const line of lines) {
        count++;
        if (!line) throw new Error(`${source} ${count} is empty`);
        const { vectors } = await embed(lm, [line], { dimensions, param: `${source} ${count}` });
        process.stdout.write(`${JSON.stringify(vectors[0])}\n`);
      }
      if (count === 0) throw new Error('nothing to embed: give texts (mlx embed "...") or lines on stdin');
      lm.free();
    } catch (error) {
      // Past the model's width: named as the flag, as its other errors are, not as an "invalid option: dimensions".
      if (error instanceof InvalidParameterError && error.param === "dimensions")
        fail(new Error(`--${error.message} (got ${dimensions})`), verbose);
      fail(error, verbose);
    }
  },
});
