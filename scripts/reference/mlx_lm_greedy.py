"""Reference outputs from mlx-lm for the parity test: for each chat prompt, the prompt's
token ids (through mlx-lm's chat template), greedy output ids (until EOS, at most
--max-tokens), and the first step's top logits.

  .cache/peers/venv/bin/python scripts/reference/mlx_lm_greedy.py MODEL_DIR PROMPTS.json OUT.json
"""
import argparse
import json

import mlx.core as mx
import mlx_lm
from mlx_lm import load
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache

parser = argparse.ArgumentParser()
parser.add_argument("model")
parser.add_argument("prompts")
parser.add_argument("out")
parser.add_argument("--max-tokens", type=int, default=64)
parser.add_argument("--raw", action="store_true", help="the prompt text as it is (BOS added), not through the chat template")
parser.add_argument("--limit", type=int, help="only the first N prompts")
args = parser.parse_args()

model, tokenizer = load(args.model)
prompts = json.load(open(args.prompts))[: args.limit]
cases = []
for prompt in prompts:
    if args.raw:
        ids = tokenizer.encode(prompt)
    else:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
    # The logits of the step that produces the first token, as generate_step computes them.
    cache = make_prompt_cache(model)
    model(mx.array(ids[:-1])[None], cache=cache)
    logits = model(mx.array(ids[-1:])[None], cache=cache)[0, -1].astype(mx.float32)
    top = mx.argsort(-logits)[:10].tolist()
    out = []
    for (token, _), _ in zip(generate_step(mx.array(ids), model), range(args.max_tokens)):
        if token in tokenizer.eos_token_ids:
            break
        out.append(token)
    cases.append({
        "prompt": prompt,
        "prompt_ids": ids,
        "output_ids": out,
        "text": tokenizer.decode(out),
        "top_logits": [[i, logits[i].item()] for i in top],
    })
    print(f"{len(out):3d} tokens  {prompt[:50]!r}", flush=True)

json.dump({"mlx_lm": mlx_lm.__version__, "mlx": mx.__version__, "max_tokens": args.max_tokens, "raw": args.raw, "cases": cases}, open(args.out, "w"), indent=1)
