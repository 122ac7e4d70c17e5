"""A small GGUF with one random tensor per quantization type whose reading we check, and the
values llama.cpp's own gguf-py dequantizes them to, for test/gguf-tensors.test.ts; and a GGUF
with a type nothing here reads (IQ2_XXS).

  .cache/peers/venv/bin/python scripts/reference/gguf_quants.py test/fixtures
"""
import json
import os
import sys

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.constants import GGML_QUANT_SIZES

out = sys.argv[1]
rng = np.random.default_rng(0)


def random_blocks(qt, cols=256):
    block, size = GGML_QUANT_SIZES[qt]
    raw = rng.integers(0, 256, size=(1, cols // block * size), dtype=np.uint8)
    raw[:, 1::2] &= 0x3B  # small finite float16 scales wherever they sit
    if qt == T.MXFP4:
        raw[:, ::size] = rng.integers(118, 130, size=(1, cols // block), dtype=np.uint8)  # E8M0 scales near 1
    return raw


def write(path, tensors):
    w = gguf.GGUFWriter(path, "llama")
    for name, (qt, raw) in tensors.items():
        w.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


types = [T.Q4_K, T.Q5_K, T.Q5_0, T.Q5_1, T.Q6_K, T.Q2_K, T.Q3_K, T.IQ4_NL, T.IQ4_XS, T.MXFP4]
tensors = {qt.name: (qt, random_blocks(qt)) for qt in types}
write(os.path.join(out, "gguf-quants.gguf"), tensors)
expected = {name: [round(float(v), 6) for v in gguf.quants.dequantize(raw, qt).reshape(-1)] for name, (qt, raw) in tensors.items()}
json.dump({"gguf_py": "dequantize", "values": expected}, open(os.path.join(out, "gguf-quants.json"), "w"))
write(os.path.join(out, "gguf-unreadable.gguf"), {"IQ2_XXS": (T.IQ2_XXS, random_blocks(T.IQ2_XXS))})
