// Opening the model a command was asked for: resolve the name (pulling on first use), load
// it, pass on its notes, and point a failed load of a stored model at the repair commands.
import { loadModel, type LoadedModel } from "../models/load";
import { applySettings, type ModelSettings } from "../engine/model-settings";
import { openPipeline, type PipelineSpec } from "../engine/pipeline";
import { resolveModelPath } from "../store/resolve";
import { withRepairHint } from "../store/store";
import {
  aliasAdapter,
  aliasKvQuantization,
  aliasLimits,
  aliasMaxKvSize,
  aliasPrompt,
  aliasSampling,
} from "../store/aliases";
import { infoWaitingForPull, log } from "./log";

/**
 * The KV cache settings and adapter default to the alias's (kv_bits, max_kv_size, adapter);
 * speculation to none (the commands read the alias's with their flags).
 */
export interface OpenOptions extends ModelSettings {
  /** This process's part of a model split across processes (--hostfile/--rank). */
  pipeline?: PipelineSpec;
}

/**
 * The model, or this process's part of it when it is a rank of a pipeline: a rank other than 0
 * serves its layers until rank 0 is done, then exits here.
 */
export async function openModel(
  spec: string | undefined,
  {
    kvQuantization = aliasKvQuantization(spec),
    maxKvSize = aliasMaxKvSize(spec),
    adapter = aliasAdapter(spec),
    speculation,
    prompt = aliasPrompt(spec),
    limits = aliasLimits(spec),
    sampling = aliasSampling(spec),
    pipeline,
  }: OpenOptions = {},
): Promise<LoadedModel> {
  const path = await resolveModelPath(spec, { onWait: infoWaitingForPull });
  const started = performance.now();
  let lm: LoadedModel;
  try {
    if (pipeline) {
      const front = await openPipeline(path, pipeline, { kvQuantization, maxKvSize });
      if (!front) process.exit(0);
      lm = front;
    } else lm = loadModel(path);
  } catch (error) {
    // Only a failure to read the model's own files may mean damage: not a refused split, nor a
    // lost peer of a pipeline (whose ranks other than 0 serve from inside this call).
    throw withRepairHint(error, path);
  }
  await applySettings(lm, { kvQuantization, maxKvSize, adapter, speculation, prompt, limits, sampling }, (name) =>
    openModel(name),
  );
  if (lm.adapter) log.debug(`adapter ${adapter}: ${lm.adapter.layers.size} layers (${lm.adapter.kind})`);
  for (const note of lm.notes) log.warn(note);
  log.debug(`loaded ${path} in ${((performance.now() - started) / 1000).toFixed(2)} s`);
  return lm;
}
