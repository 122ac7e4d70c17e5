// One whole completion of prompt ids on a scheduler of its own (a batch of one, as `mlx run`).
import { complete, soloScheduler, type CompletionResult } from "../../src/engine/generate";
import type { GenerationSpec } from "../../src/engine/request";
import type { LoadedModel } from "../../src/models/load";

export async function completeAlone(
  lm: LoadedModel,
  promptIds: number[],
  o: Omit<GenerationSpec, "prompt">,
): Promise<CompletionResult> {
  const scheduler = soloScheduler(lm);
  try {
    return await complete(scheduler, { prompt: { kind: "ids", ids: promptIds }, ...o });
  } finally {
    scheduler.dispose();
  }
}
