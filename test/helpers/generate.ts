// One whole completion of prompt ids on a scheduler of its own (a batch of one, as `mlx run`).
import { complete, soloScheduler, type CompletionResult } from "../../src/engine/generate";
import type { GenerationSpec } from "../../src/engine/request";
import type { LoadedModel } from "../../src/models/load";
import { BatchGenerator, type BatchOptions, type SequenceRequest } from "../../src/engine/batch";
import type { DecoderModel } from "../../src/models";

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

/** The tokens of one sequence decoded alone by a BatchGenerator with `options` (its prefill in chunks of 4). */
export function decodeAlone(
  model: DecoderModel,
  request: SequenceRequest,
  options: Partial<BatchOptions> = {},
): number[] {
  const gen = new BatchGenerator(model, { maxBatch: 2, prefillChunk: 4, ...options });
  gen.add("a", request);
  const tokens: number[] = [];
  while (!gen.idle) for (const e of gen.step()) tokens.push(e.token);
  gen.dispose();
  return tokens;
}
