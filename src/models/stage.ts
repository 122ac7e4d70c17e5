// A pipeline stage: the part of a model one process holds when its layers are split across
// processes (rank 0 the embedding, the first layers and the output head; each later rank a
// run of the layers after). A stage's process loads only the tensors the stage uses.

export interface Stage {
  /** Its decoder layers, [start, end). */
  start: number;
  end: number;
  /** The embedding, the final norm and the output layer. */
  ends: boolean;
}

const layerTensor = /^(?:model\.layers|blk)\.(\d+)\./;
const endTensors = ["model.embed_tokens.", "model.norm.", "lm_head.", "token_embd.", "output_norm.", "output."];

/**
 * Whether a stage uses the tensor `name` (Hugging Face's naming or a GGUF's); others (rotary
 * tables) every stage uses.
 */
export function stageHolds(stage: Stage, name: string): boolean {
  const layer = layerTensor.exec(name);
  if (layer) {
    const i = Number(layer[1]);
    return i >= stage.start && i < stage.end;
  }
  if (endTensors.some((prefix) => name.startsWith(prefix))) return stage.ends;
  return true;
}
