import * as mx from "../src/mlx";
import { loadModel } from "../src/models/load";
import { makeCaches, cacheState, freeCaches } from "../src/models/model";
const lm = loadModel(".cache/bench/smollm2-mlx");
const m = lm.model;
const ids = (n: number) => Int32Array.from({ length: n }, (_, i) => 100 + ((i * 37) % 5000));
function prefill(n: number, head: boolean) {
  const caches = makeCaches(m, { windowed: false, joining: true });
  const t0 = performance.now();
  const out = mx.scope(() => {
    const h = m.layers(m.embed(mx.array(ids(n), [1, n])), caches);
    if (!head) return undefined;
    const last = mx.slice(h, [0, n - 1, 0], [1, n, h.shape[2]!]);
    return mx.argmax(m.head(last), -1);
  });
  mx.evaluate(...cacheState(caches), ...(out ? [out] : []));
  const t1 = performance.now();
  out?.free();
  freeCaches(caches);
  return t1 - t0;
}
for (const n of [8, 32]) {
  for (let r = 0; r < 3; r++) prefill(n, true);
  const a: number[] = [],
    b: number[] = [],
    c: number[] = [];
  for (let r = 0; r < 30; r++) {
    a.push(prefill(n - 1, false));
    b.push(prefill(n, true));
    c.push(prefill(n, false));
  }
  const med = (x: number[]) => x.sort((p, q) => p - q)[x.length >> 1]!.toFixed(2);
  console.log(
    `n=${n}: prefill ${n - 1} ${med(a)} ms; prefill ${n} + head(last) ${med(b)} ms; prefill ${n} ${med(c)} ms`,
  );
}
