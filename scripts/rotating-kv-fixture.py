# mlx-lm's RotatingKVCache on the default model, for test/rotating-cache.test.ts: greedy
# answers with a cache of max_kv_size positions (4 attention sinks), long enough to rotate.
#
#   .cache/peers/venv/bin/python scripts/rotating-kv-fixture.py MLX_MODEL_DIR > test/fixtures/rotating-smollm2-mlx-lm.json
#
# MLX_MODEL_DIR: the default model as an MLX directory (`mlx convert smollm2 DIR`).
import json
import sys

import mlx.core as mx
import mlx_lm
from mlx_lm import load
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import RotatingKVCache

model, tokenizer = load(sys.argv[1])
cases = []
for question, max_kv_size, max_tokens in [("Why is the sky blue?", 48, 100), ("Write a short poem about the sea.", 64, 100)]:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    # Built here: generate_step's max_kv_size is ignored for models with their own make_cache (llama has one).
    cache = [RotatingKVCache(max_size=max_kv_size, keep=4) for _ in model.layers]
    tokens = [
        int(t)
        for t, _ in generate_step(
            mx.array(prompt), model, max_tokens=max_tokens, prompt_cache=cache, sampler=lambda x: mx.argmax(x, -1)
        )
    ]
    cases.append({"prompt": question, "prompt_ids": prompt, "max_kv_size": max_kv_size, "output_ids": tokens})
print(json.dumps({"mlx_lm": mlx_lm.__version__, "mx": mx.__version__, "keep": 4, "cases": cases}, indent=1))
