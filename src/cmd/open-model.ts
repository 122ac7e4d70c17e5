// Opening the model a command was asked for: resolve the name (pulling on first use), load
// it, pass on its notes, and point a failed load of a stored model at the repair commands.
import { loadModel, type LoadedModel } from "../models/load";
import { openPipeline, type PipelineSpec } from "../engine/pipeline";
import { resolveModelPath } from "../store/resolve";
import { repairHint } from "../store/store";
import { aliasKvQuantization } from "../store/aliases";
import { log } from "./log";

/**
 * The model, or this process's part of it when it is a rank of a pipeline: a rank other than 0
 * serves its layers until rank 0 is done, then exits here.
 */
export async function openModel(
  spec: string | undefined,
  kvQuantization = aliasKvQuantization(spec),
  pipeline?: PipelineSpec,
): Promise<LoadedModel> {
  const path = await resolveModelPath(spec);
  const started = performance.now();
  let lm: LoadedModel;
  try {
    if (pipeline) {
      const front = openPipeline(path, pipeline, kvQuantization);
      if (!front) process.exit(0);
      lm = front;
    } else lm = loadModel(path);
  } catch (error) {
    const hint = repairHint(path);
    if (!hint) throw error;
    throw new Error(`${(error as Error).message}; ${hint}`);
  }
  lm.kvQuantization = kvQuantization;
  for (const note of lm.notes) log.warn(note);
  log.debug(`loaded ${path} in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  return lm;
}
