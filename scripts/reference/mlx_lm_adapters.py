"""mlx-lm's greedy outputs with adapters (load(..., adapter_path=...)), and with the adapter
fused into the model as mlx_lm.fuse does it, for test/parity-adapters.test.ts: per tiny case
(written by write-adapters.ts) the adapter's SHA-256 and the greedy tokens (EOS not special);
for the default model (its converted MLX directory) with its adapter, the chat prompts' ids
and greedy tokens until EOS.

  .cache/peers/venv/bin/python scripts/reference/mlx_lm_adapters.py CASES_DIR SMOLLM2_DIR PROMPTS.json SPEC.json OUT.json
"""
import hashlib
import json
import os
import sys

import mlx.core as mx
import mlx_lm
from mlx_lm import load
from mlx_lm.generate import generate_step
from mlx.utils import tree_unflatten

cases_dir, smollm2_dir, prompts_path, spec_path, out_path = sys.argv[1:6]
spec = json.load(open(spec_path))
def fuse(model):
    model.update_modules(tree_unflatten([(n, m.fuse()) for n, m in model.named_modules() if hasattr(m, "fuse")]))


sha = lambda path: hashlib.sha256(open(path, "rb").read()).hexdigest()

tiny = {}
for name in spec["tiny_cases"]:
    model, _ = load(os.path.join(cases_dir, name, "model"), adapter_path=os.path.join(cases_dir, name, "adapter"))
    prompt = mx.array(spec["tiny_prompt"])
    greedy = lambda: [t for (t, _), _ in zip(generate_step(prompt, model), range(spec["tiny_tokens"]))]
    out = greedy()
    fuse(model)
    tiny[name] = {
        "adapter_sha256": sha(os.path.join(cases_dir, name, "adapter", "adapters.safetensors")),
        "output_ids": out,
        "fused_output_ids": greedy(),
    }
    print(f"{name}: {out[:8]}...", flush=True)

adapter_dir = os.path.join(cases_dir, "smollm2-adapter")
model, tokenizer = load(smollm2_dir, adapter_path=adapter_dir)
prompts = json.load(open(prompts_path))[: spec["smollm2_prompts"]]
chats = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True) for p in prompts]


def until_eos(ids):
    out = []
    for (token, _), _ in zip(generate_step(mx.array(ids), model), range(spec["smollm2_tokens"])):
        if token in tokenizer.eos_token_ids:
            break
        out.append(token)
    return out


outputs = [until_eos(ids) for ids in chats]
fuse(model)
cases = []
for prompt, ids, out in zip(prompts, chats, outputs):
    cases.append({"prompt": prompt, "prompt_ids": ids, "output_ids": out, "text": tokenizer.decode(out), "fused_output_ids": until_eos(ids)})
    print(f"smollm2: {tokenizer.decode(out)!r}", flush=True)

json.dump({
    "mlx_lm": mlx_lm.__version__,
    "mlx": mx.__version__,
    "tiny": tiny,
    "smollm2": {"adapter_sha256": sha(os.path.join(adapter_dir, "adapters.safetensors")), "cases": cases},
}, open(out_path, "w"), indent=1)
