// Writes the tiny random-weight models of test/helpers/tiny-parity.ts into a directory, one
// folder per model, for scripts/reference/mlx_lm_tiny.py (scripts/parity.sh runs both).
import { join } from "node:path";
import { tinyParityModels } from "../../test/helpers/tiny-parity";
import { writeTinyModel } from "../../test/helpers/tiny-model";

const out = process.argv[2];
if (!out) throw new Error("usage: bun scripts/reference/write-tiny-models.ts OUT_DIR");
for (const [name, options] of Object.entries(tinyParityModels)) writeTinyModel(join(out, name), options);
