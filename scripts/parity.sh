#!/usr/bin/env bash
# The full correctness check against the reference implementations, in one command:
# installs the peers project-locally, converts the default model, records mlx-lm's greedy
# outputs afresh, checks the converted tokenizer files in the Python stack, and runs our
# tokenizer and parity tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
WITH_LLAMA_CPP=0 bash bench/setup-peers.sh
export MLX_HOME="${MLX_HOME:-$PWD/.cache/mlx-home}"
python=.cache/peers/venv/bin/python
model_dir=.cache/parity/smollm2-mlx
dist/mlx convert smollm2 "$model_dir" --force
"$python" scripts/reference/mlx_lm_greedy.py "$model_dir" test/fixtures/parity-prompts.json test/fixtures/parity-smollm2-mlx-lm.json
# Our converted tokenizer files must load in tokenizers, transformers and mlx-lm with the expected ids.
"$python" scripts/reference/tokenizer_ids.py --check-dir "$model_dir"
# gemma3 on its real weights (raw prompts: the GGUF has no chat template), and a tiny
# random-weight model of each architecture.
gemma3_dir=.cache/parity/gemma3-mlx
dist/mlx convert gemma3 "$gemma3_dir" --force
"$python" scripts/reference/mlx_lm_greedy.py "$gemma3_dir" test/fixtures/parity-prompts.json test/fixtures/parity-gemma3-mlx-lm.json --raw --max-tokens 48 --limit 3
bash scripts/parity-tiny.sh
# GGUF quantization types as llama.cpp's gguf-py dequantizes them.
"$python" scripts/reference/gguf_quants.py test/fixtures
node_modules/.bin/bun test --timeout 600000 test/tokenizer.test.ts test/parity.test.ts test/parity-gemma3.test.ts test/parity-architectures.test.ts test/gguf-tensors.test.ts
git diff --stat -- test/fixtures || true
