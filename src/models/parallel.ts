// Two cores for one forward pass on the CPU. MLX's CPU backend runs each stream's ops on one
// thread, so every projection is split by output rows: half on a second stream (a second
// core), half on the default one, joined after. The result is the same numbers: each output
// is still one row of the same matmul. On a GPU, or with MLX_CPU_STREAMS=1, projections stay
// whole on the default stream.
import * as mx from "../mlx";

let side: number | null | undefined;

function sideStream(): number | null {
  side ??= mx.defaultDeviceIsCpu() && process.env.MLX_CPU_STREAMS !== "1" ? mx.newStream() : null;
  return side;
}

/**
 * A projection onto `rows` outputs, computed in two halves, one per stream, when there are two
 * streams. `part(start, end)` makes the projection onto outputs [start, end).
 */
export function splitRows(rows: number, part: (start: number, end: number) => (x: mx.MxArray) => mx.MxArray): (x: mx.MxArray) => mx.MxArray {
  const stream = sideStream();
  if (stream === null) return part(0, rows);
  const half = Math.ceil(rows / 2);
  const first = part(0, half);
  const second = part(half, rows);
  return (x) => mx.concatenate([mx.onStream(stream, () => first(x)), second(x)], -1);
}
