# A Llama GGUF of random Q4_0 weights in the shapes bench/synthetic-1b.ts asks for, so llama.cpp
# runs the same model as ours. The tokenizer is copied from another GGUF (the default model's)
# and padded with unused tokens to the vocabulary size: the benchmark feeds token ids, and
# llama.cpp wants one token per embedding row.
#
#   .cache/peers/venv/bin/python bench/synthetic_gguf.py SOURCE.gguf OUT.gguf '{"hidden": 2048, ...}'
#
# Q4_0 blocks are written directly: per 32 weights a float16 scale d and 16 bytes of 4-bit q,
# the weight being d · (q − 8); random q and d, so no float weights are ever made.
import json
import sys

import numpy as np
import gguf

source, out, spec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
hidden, layers, heads, kv_heads = spec["hidden"], spec["layers"], spec["heads"], spec["kvHeads"]
intermediate, vocab, context = spec["intermediate"], spec["vocab"], spec["context"]
head_dim = hidden // heads
rng = np.random.default_rng(0)

reader = gguf.GGUFReader(source)
field = lambda key: reader.fields[key].contents()  # noqa: E731

writer = gguf.GGUFWriter(out, "llama")
writer.add_name("random Llama-3.2-1B-shaped model (bench/synthetic-1b.ts)")
writer.add_context_length(context)
writer.add_embedding_length(hidden)
writer.add_block_count(layers)
writer.add_feed_forward_length(intermediate)
writer.add_head_count(heads)
writer.add_head_count_kv(kv_heads)
writer.add_rope_dimension_count(head_dim)
writer.add_rope_freq_base(spec["ropeTheta"])
writer.add_layer_norm_rms_eps(1e-5)
writer.add_vocab_size(vocab)
writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)

tokens = field("tokenizer.ggml.tokens")
types = field("tokenizer.ggml.token_type")
padding = vocab - len(tokens)
writer.add_tokenizer_model(field("tokenizer.ggml.model"))
writer.add_tokenizer_pre(field("tokenizer.ggml.pre"))
writer.add_token_list(tokens + [f"<|unused_{i}|>" for i in range(padding)])
writer.add_token_types(types + [gguf.TokenType.UNUSED] * padding)
writer.add_token_merges(field("tokenizer.ggml.merges"))
writer.add_bos_token_id(field("tokenizer.ggml.bos_token_id"))
writer.add_eos_token_id(field("tokenizer.ggml.eos_token_id"))


def q4_0(rows: int, cols: int) -> np.ndarray:
    blocks = np.empty((rows, cols // 32, 18), dtype=np.uint8)
    # Scales around 0.004: weights of about ±0.03, as a trained 1B's are.
    scales = rng.uniform(0.002, 0.006, size=(rows, cols // 32)).astype(np.float16)
    blocks[:, :, :2] = scales.view(np.uint8).reshape(rows, cols // 32, 2)
    blocks[:, :, 2:] = rng.integers(0, 256, size=(rows, cols // 32, 16), dtype=np.uint8)
    return blocks.reshape(rows, cols // 32 * 18)


def add_q4_0(name: str, rows: int, cols: int) -> None:
    writer.add_tensor(name, q4_0(rows, cols), raw_dtype=gguf.GGMLQuantizationType.Q4_0)


def add_norm(name: str) -> None:
    writer.add_tensor(name, np.ones(hidden, dtype=np.float32))


# Tied embeddings: no output.weight, llama.cpp then reads token_embd for the output layer.
add_q4_0("token_embd.weight", vocab, hidden)
for i in range(layers):
    add_norm(f"blk.{i}.attn_norm.weight")
    add_q4_0(f"blk.{i}.attn_q.weight", heads * head_dim, hidden)
    add_q4_0(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
    add_q4_0(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
    add_q4_0(f"blk.{i}.attn_output.weight", hidden, heads * head_dim)
    add_norm(f"blk.{i}.ffn_norm.weight")
    add_q4_0(f"blk.{i}.ffn_gate.weight", intermediate, hidden)
    add_q4_0(f"blk.{i}.ffn_up.weight", intermediate, hidden)
    add_q4_0(f"blk.{i}.ffn_down.weight", hidden, intermediate)
add_norm("output_norm.weight")

writer.write_header_to_file()
writer.write_kv_data_to_file()
writer.write_tensors_to_file()
writer.close()
