#!/usr/bin/env bash
# OpenAI's Codex CLI against `mlx serve` over the Responses API (not CI: Codex is a 420 MB
# download, installed under .cache/codex when missing). Codex sends what other clients do not:
# store false, include reasoning.encrypted_content, reasoning.summary, client_metadata, a
# `namespace` tool and the built-in web_search. Its prompt (instructions and tools) is ~10,000
# tokens, past the default model's 8,192, so the check serves a tiny scripted model (it answers
# "Hello from mlx serve.", whatever Codex's sampling) with a 32,768-token context.
#   bash scripts/codex-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
codex_version=0.171.0
export MLX_HOME=${MLX_HOME:-$PWD/.cache/mlx-home}
bun=$PWD/node_modules/.bin/bun
codex_dir=$PWD/.cache/codex
codex=$codex_dir/node_modules/.bin/codex
if [ ! -x "$codex" ] || [ "$("$codex" --version 2>/dev/null)" != "codex-cli $codex_version" ]; then
  mkdir -p "$codex_dir"
  # The launcher and this platform's binary (npm leaves optional packages out of a --prefix install).
  npm install --prefix "$codex_dir" --no-save "@openai/codex@$codex_version" \
    "@openai/codex-linux-x64@npm:@openai/codex@$codex_version-linux-x64" >/dev/null
fi

work=$(mktemp -d /tmp/mlx-codex-check.XXXXXX)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# The script's logits made 8 times as sure, so that Codex's temperature 1 samples it as greedy;
# its context made Codex's size.
"$bun" -e "
import { readFileSync, writeFileSync } from 'node:fs';
import * as mx from './src/mlx';
import { writeScriptedModel } from './test/helpers/scripted-model';
const dir = '$work/tiny';
writeScriptedModel(dir, ['Hello', ' from', ' mlx', ' serve', '.']);
const { tensors } = mx.loadSafetensors(dir + '/model.safetensors');
tensors.set('lm_head.weight', mx.multiply(tensors.get('lm_head.weight')!, 8));
mx.saveSafetensors(dir + '/model.safetensors', tensors, { format: 'mlx' });
const config = JSON.parse(readFileSync(dir + '/config.json', 'utf8'));
writeFileSync(dir + '/config.json', JSON.stringify({ ...config, max_position_embeddings: 32768 }));
"
port=$("$bun" -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })')
"$bun" src/main.ts serve -m "$work/tiny" --host 127.0.0.1 --port "$port" >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 1; done
mkdir -p "$work/home" "$work/repo"
cat >"$work/home/config.toml" <<CONFIG
model = "$work/tiny"
model_provider = "mlx"

[model_providers.mlx]
name = "mlx serve"
base_url = "http://127.0.0.1:$port/v1"
wire_api = "responses"
CONFIG
cd "$work/repo"
if ! CODEX_HOME=$work/home timeout 300 "$codex" exec --skip-git-repo-check "Say hello" >"$work/out.txt" 2>"$work/err.txt"; then
  echo "FAILED: codex exec against mlx serve:" >&2
  grep -v '^warning\|^WARNING' "$work/err.txt" | tail -5 >&2
  exit 1
fi
grep -q "Hello from mlx serve." "$work/out.txt" || { echo "FAILED: codex printed: $(cat "$work/out.txt")" >&2; exit 1; }
echo "ok: codex $codex_version exec printed the model's answer, through mlx serve's /v1/responses"
