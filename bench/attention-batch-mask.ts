// Decode attention for a batch of 8 left-padded rows (the batch's bool mask), 30 layers' worth
// in the default model's shapes (9 query / 3 key-value heads of 64, 2,000 float16 keys): the
// median ms of a step's attention over 40 steps. Run it once per build with MLX_SHIM_PATH
// pointing at each build's shim, alternating, to compare kernels (bench/RESULTS.md).
//
//   MLX_SHIM_PATH=build/ffi/libmlx_shim.so node_modules/.bin/bun bench/attention-batch-mask.ts
import * as mx from "../src/mlx";
import { median } from "./lib";

const [rows, heads, kvHeads, dim, keys] = [8, 9, 3, 64, 2000];
const q = mx.astype(mx.random.normal([rows, heads, 1, dim]), mx.Dtype.float32);
const k = mx.astype(mx.random.normal([rows, kvHeads, keys, dim]), mx.Dtype.float16);
const v = mx.astype(mx.random.normal([rows, kvHeads, keys, dim]), mx.Dtype.float16);
const visible: number[] = [];
for (let r = 0; r < rows; r++) for (let j = 0; j < keys; j++) visible.push(j >= r * 37 ? 1 : 0);
const mask = mx.array(visible, [rows, 1, 1, keys], mx.Dtype.bool);
mx.evaluate(q, k, v, mask);
const times: number[] = [];
for (let i = 0; i < 45; i++) {
  const start = performance.now();
  const outs = Array.from({ length: 30 }, () => mx.fast.scaledDotProductAttention(q, k, v, dim ** -0.5, mask));
  mx.evaluate(...outs);
  if (i >= 5) times.push(performance.now() - start);
  for (const o of outs) o.free();
}
console.log(median(times).toFixed(2));
