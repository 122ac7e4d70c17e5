#!/usr/bin/env bash
# Records mlx-lm's greedy outputs with random LoRA/DoRA adapters (tiny models and the default
# model) into test/fixtures/parity-adapters-mlx-lm.json, read by test/parity-adapters.test.ts.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_LLAMA_CPP=0 bash bench/setup-peers.sh
export MLX_HOME="${MLX_HOME:-$PWD/.cache/mlx-home}"
dir=.cache/parity/adapters
rm -rf "$dir"
node_modules/.bin/bun scripts/reference/write-adapters.ts "$dir"
model_dir=.cache/parity/smollm2-mlx
[ -f "$model_dir/config.json" ] || dist/mlx convert smollm2 "$model_dir" --force
node_modules/.bin/bun -e '
import * as p from "./test/helpers/adapter-parity";
console.log(JSON.stringify({ tiny_cases: Object.keys(p.adapterParityCases), tiny_prompt: p.adapterParityPrompt,
  tiny_tokens: p.adapterParityTokens, smollm2_prompts: p.smollm2AdapterPrompts, smollm2_tokens: p.smollm2AdapterTokens }))' > "$dir/spec.json"
.cache/peers/venv/bin/python scripts/reference/mlx_lm_adapters.py "$dir" "$model_dir" test/fixtures/parity-prompts.json "$dir/spec.json" test/fixtures/parity-adapters-mlx-lm.json
