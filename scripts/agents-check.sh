#!/usr/bin/env bash
# Coding agents against `mlx serve` (not CI: each is a download of hundreds of MB, installed under
# .cache/agents when missing): OpenAI's Codex CLI over the Responses API, and Anthropic's Claude
# Code over the Messages API.
# - Codex sends what other clients do not: store false, include reasoning.encrypted_content,
#   reasoning.summary, client_metadata, a `namespace` tool and the built-in web_search.
# - Claude Code sends system messages among the turns, output_config.effort, thinking "adaptive",
#   context_management edits, cache_control on system and message blocks, and 24 tools.
# Their prompts (instructions and tools) are ~10,000 and ~18,000 tokens, past the default model's
# 8,192, so the check serves a tiny scripted model (it answers "Hello from mlx serve.", whatever
# the agent's sampling) with a 32,768-token context.
#   bash scripts/agents-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
codex_version=0.171.0
claude_version=2.1.197
export MLX_HOME=${MLX_HOME:-$PWD/.cache/mlx-home}
bun=$PWD/node_modules/.bin/bun
agents=$PWD/.cache/agents
codex=$agents/node_modules/.bin/codex
claude=$agents/node_modules/.bin/claude
if [ ! -x "$codex" ] || [ "$("$codex" --version 2>/dev/null)" != "codex-cli $codex_version" ] ||
  [ ! -x "$claude" ] || [ "$("$claude" --version 2>/dev/null)" != "$claude_version (Claude Code)" ]; then
  mkdir -p "$agents"
  # The launchers and this platform's binaries (npm leaves optional packages out of a --prefix install).
  npm install --prefix "$agents" --no-save "@openai/codex@$codex_version" \
    "@openai/codex-linux-x64@npm:@openai/codex@$codex_version-linux-x64" \
    "@anthropic-ai/claude-code@$claude_version" "@anthropic-ai/claude-code-linux-x64@$claude_version" >/dev/null
fi

work=$(mktemp -d /tmp/mlx-agents-check.XXXXXX)
server=""
cleanup() {
  [ -n "$server" ] && kill "$server" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# The script's logits made 8 times as sure, so that the agents' temperature 1 samples it as greedy;
# its context made the agents' size.
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
mkdir -p "$work/codex-home" "$work/claude-home" "$work/repo"
cd "$work/repo"
# Prints what failed (the agent's last lines of errors) unless the agent printed the model's answer.
check() {
  local agent=$1
  shift
  if ! timeout 300 "$@" >"$work/$agent.out" 2>"$work/$agent.err"; then
    echo "FAILED: $agent against mlx serve:" >&2
    cat "$work/$agent.out" >&2
    grep -v '^warning\|^WARNING' "$work/$agent.err" | tail -5 >&2
    exit 1
  fi
  grep -q "Hello from mlx serve." "$work/$agent.out" || {
    echo "FAILED: $agent printed: $(cat "$work/$agent.out")" >&2
    exit 1
  }
}

cat >"$work/codex-home/config.toml" <<CONFIG
model = "$work/tiny"
model_provider = "mlx"

[model_providers.mlx]
name = "mlx serve"
base_url = "http://127.0.0.1:$port/v1"
wire_api = "responses"
CONFIG
CODEX_HOME=$work/codex-home check codex "$codex" exec --skip-git-repo-check "Say hello" </dev/null
echo "ok: codex $codex_version exec printed the model's answer, through mlx serve's /v1/responses"

# Claude Code's own home, and none of its traffic but the Messages API's.
HOME=$work/claude-home ANTHROPIC_BASE_URL=http://127.0.0.1:$port ANTHROPIC_AUTH_TOKEN=local ANTHROPIC_API_KEY="" \
  CLAUDE_CODE_MAX_OUTPUT_TOKENS=64 CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1 DISABLE_TELEMETRY=1 \
  check claude "$claude" -p --model "$work/tiny" "Say hello"
echo "ok: claude $claude_version -p printed the model's answer, through mlx serve's /v1/messages"
