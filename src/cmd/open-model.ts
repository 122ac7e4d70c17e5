// Opening the model a command was asked for: resolve the name (pulling on first use), load
// it, pass on its notes, and point a failed load of a stored model at the repair commands.
import { loadModel, type LoadedModel } from "../models/load";
import { resolveModelPath } from "../store/resolve";
import { repairHint } from "../store/store";
import { aliasKvQuantization, aliasMaxKvSize } from "../store/aliases";
import { log } from "./log";

export async function openModel(
  spec: string | undefined,
  kvQuantization = aliasKvQuantization(spec),
  maxKvSize = aliasMaxKvSize(spec),
): Promise<LoadedModel> {
  const path = await resolveModelPath(spec);
  const started = performance.now();
  let lm: LoadedModel;
  try {
    lm = loadModel(path);
  } catch (error) {
    const hint = repairHint(path);
    if (!hint) throw error;
    throw new Error(`${(error as Error).message}; ${hint}`);
  }
  lm.kvQuantization = kvQuantization;
  lm.maxKvSize = maxKvSize;
  for (const note of lm.notes) log.warn(note);
  log.debug(`loaded ${path} in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  return lm;
}
