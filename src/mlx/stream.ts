// Streams: MLX queues each op on the default stream of the default device when the op is
// built. On the CPU every stream has its own thread, so ops built on a second stream run on a
// second core, in parallel with the first stream's work (MLX orders dependencies across streams).
import { check, lib } from "./ffi";

/** A new stream on the default device; returns its index. */
export function newStream(): number {
  const out = new Int32Array(1);
  check(lib.mlxs_new_stream(out), "new_stream");
  return out[0]!;
}

/** The index of the stream ops are built on now. */
export function defaultStream(): number {
  const index = lib.mlxs_default_stream();
  check(index < 0 ? -1 : 0, "default_stream");
  return index;
}

/** Builds the ops of `fn` on `stream`, then restores the previous default stream. */
export function onStream<T>(stream: number, fn: () => T): T {
  const previous = defaultStream();
  check(lib.mlxs_set_default_stream(stream), "set_default_stream");
  try {
    return fn();
  } finally {
    lib.mlxs_set_default_stream(previous);
  }
}

export const defaultDeviceIsCpu = (): boolean => lib.mlxs_default_device() === 0;
