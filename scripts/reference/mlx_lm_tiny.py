"""mlx-lm's outputs on the tiny random-weight models (written by write-tiny-models.ts), for
test/parity-architectures.test.ts: the weights' SHA-256 (so the test knows it rebuilt the same
model), the first step's top logits and greedy tokens (EOS not special).

  .cache/peers/venv/bin/python scripts/reference/mlx_lm_tiny.py MODELS_DIR PROMPT_IDS TOKENS OUT.json
"""
import hashlib
import json
import os
import sys

import mlx.core as mx
import mlx_lm
from mlx_lm import load
from mlx_lm.generate import generate_step

models_dir, prompt, tokens, out_path = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
models = {}
for name in sorted(os.listdir(models_dir)):
    path = os.path.join(models_dir, name)
    model, _ = load(path)
    logits = model(mx.array(prompt)[None])[0, -1].astype(mx.float32)
    top = mx.argsort(-logits)[:20].tolist()
    out = [t for (t, _), _ in zip(generate_step(mx.array(prompt), model), range(tokens))]
    weights = hashlib.sha256(open(os.path.join(path, "model.safetensors"), "rb").read()).hexdigest()
    models[name] = {"weights_sha256": weights, "top_logits": [[i, logits[i].item()] for i in top], "output_ids": out}
    print(f"{name}: {out[:8]}...", flush=True)

json.dump({"mlx_lm": mlx_lm.__version__, "mlx": mx.__version__, "prompt_ids": prompt, "models": models}, open(out_path, "w"), indent=1)
