// A rank's shares of the adapters rank 0 loads (its layers' or its slices'), by rank 0's ids,
// and the adapter of each row of the next forward pass, as rank 0 names them (Op.adapters).
import type { MxArray } from "../../mlx";
import { loadAdapter, type Adapter, type LoraLayers } from "../../models/lora";

export class AdapterShares {
  readonly #loaded = new Map<number, Adapter>();
  /** The next forward pass's adapter per row, until that pass has run (clear()). */
  selected?: (Adapter | undefined)[];
  /** Whether the next forward pass adapts its positions each on its own, as rank 0's does. */
  #positionsApart = false;

  constructor(readonly lora: LoraLayers) {}

  load(id: number, dir: string): void {
    this.#loaded.set(id, loadAdapter(dir, this.lora));
  }

  free(id: number): void {
    this.#loaded.get(id)?.free();
    this.#loaded.delete(id);
  }

  select(ids: number[], positionsApart: boolean): void {
    this.selected = ids.map((id) => this.#loaded.get(id));
    this.#positionsApart = positionsApart;
  }

  clear(): void {
    this.selected = undefined;
  }

  /** `forward` under the selected adapters, if rank 0 named any. */
  run(forward: () => MxArray): MxArray {
    return this.selected ? this.lora.run(this.selected, forward, { positionsApart: this.#positionsApart }) : forward();
  }

  freeAll(): void {
    for (const adapter of this.#loaded.values()) adapter.free();
    this.#loaded.clear();
  }
}
