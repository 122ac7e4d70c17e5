# The quality half of bench/kv-quantized.ts through mlx-lm's own quantized KV cache: the same
# 10 prompts, greedy, 64 tokens, float cache against kv_bits 8 and 4 (group 64, quantized from
# the start), so our figures can be read against what mlx-lm gets on the same model.
#
#   dist/mlx convert smollm2 /tmp/smollm2-mlx
#   .cache/peers/venv/bin/python bench/kv_quantized_mlx_lm.py /tmp/smollm2-mlx
import json
import sys
from pathlib import Path

import mlx.core as mx
from mlx_lm import load
from mlx_lm.generate import generate_step

QUESTIONS = json.load(open(Path(__file__).with_name("kv-quality-prompts.json")))

model, tokenizer = load(sys.argv[1])


def greedy(prompt, **kv):
    steps = generate_step(mx.array(prompt), model, max_tokens=64, sampler=lambda x: mx.argmax(x, -1), **kv)
    return [int(t) for t, _ in steps]


identical = {8: 0, 4: 0}
agreeing = {8: 0, 4: 0}
for question in QUESTIONS:
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True)
    reference = greedy(prompt)
    for bits in (8, 4):
        answer = greedy(prompt, kv_bits=bits, kv_group_size=64, quantized_kv_start=0)
        first = next((i for i, (a, b) in enumerate(zip(answer, reference)) if a != b), None)
        identical[bits] += first is None
        agreeing[bits] += len(reference) if first is None else first
        print(f"{question}: {bits}-bit first difference at {first}", file=sys.stderr, flush=True)
for bits in (8, 4):
    print(f"mlx-lm {bits}-bit: {identical[bits]} of {len(QUESTIONS)} identical, {agreeing[bits]} tokens before the first difference")
