"""mlx-lm's decode loop alone, in process: 64 greedy tokens after an 8-token prompt, twice.
Compare with bench/decode-loop.ts.  .cache/peers/venv/bin/python bench/decode_loop.py"""
import time, mlx.core as mx
from mlx_lm.utils import load_model
from mlx_lm.generate import generate_step
from pathlib import Path
model, _ = load_model(Path(".cache/bench/smollm2-mlx"))
for r in range(2):
    n = 0; t0 = 0
    for (tok, _), _ in zip(generate_step(mx.array([1,2,3,4,5,6,7,8]), model), range(65)):
        if n == 0: t0 = time.time()
        n += 1
    print("mlx-lm decode tok/s", round(64 / (time.time() - t0), 2))
