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
 * Which part of a model the tensor `name` belongs to (Hugging Face's naming or a GGUF's): a
 * layer's, the ends' (embedding, final norm, output layer), or every stage's (rotary tables).
 */
export function tensorPart(name: string): number | "ends" | "shared" {
  const layer = layerTensor.exec(name);
  if (layer) return Number(layer[1]);
  return endTensors.some((prefix) => name.startsWith(prefix)) ? "ends" : "shared";
}

/** Whether a stage uses the tensor `name`. */
export function stageHolds(stage: Stage, name: string): boolean {
  const part = tensorPart(name);
  if (part === "ends") return stage.ends;
  if (part === "shared") return true;
  return part >= stage.start && part < stage.end;
}
