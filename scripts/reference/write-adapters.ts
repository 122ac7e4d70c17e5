// Writes the tiny models and random adapters of test/helpers/adapter-parity.ts (and the default
// model's adapter) into a directory, for scripts/reference/mlx_lm_adapters.py.
import { join } from "node:path";
import { adapterParityCases, smollm2Adapter } from "../../test/helpers/adapter-parity";
import { writeRandomAdapter } from "../../test/helpers/random-adapter";
import { writeTinyModel } from "../../test/helpers/tiny-model";

const out = process.argv[2];
if (!out) throw new Error("usage: bun scripts/reference/write-adapters.ts OUT_DIR");
for (const [name, { model, adapter }] of Object.entries(adapterParityCases)) {
  writeTinyModel(join(out, name, "model"), model);
  writeRandomAdapter(join(out, name, "adapter"), adapter);
}
writeRandomAdapter(join(out, "smollm2-adapter"), smollm2Adapter);
