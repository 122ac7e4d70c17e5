#!/usr/bin/env bash
# Records mlx-lm's outputs on the tiny random-weight model of each architecture
# (test/fixtures/parity-tiny-mlx-lm.json, read by test/parity-architectures.test.ts).
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_LLAMA_CPP=0 bash bench/setup-peers.sh
dir=.cache/parity/tiny
rm -rf "$dir"
node_modules/.bin/bun scripts/reference/write-tiny-models.ts "$dir"
prompt=$(node_modules/.bin/bun -e 'import { tinyParityPrompt } from "./test/helpers/tiny-parity"; console.log(JSON.stringify(tinyParityPrompt))')
tokens=$(node_modules/.bin/bun -e 'import { tinyParityTokens } from "./test/helpers/tiny-parity"; console.log(tinyParityTokens)')
.cache/peers/venv/bin/python scripts/reference/mlx_lm_tiny.py "$dir" "$prompt" "$tokens" test/fixtures/parity-tiny-mlx-lm.json
