#!/usr/bin/env bash
# Installs the systems we measure against, project-locally under .cache/peers/ (never a
# run-time dependency of mlx): mlx-lm on the same MLX version as ours, the Hugging Face
# tokenizers/transformers used as references, and llama.cpp through node-llama-cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
peers=.cache/peers
say() { printf '[peers] %s\n' "$*" >&2; }

if [ ! -f "$peers/.python-ready" ]; then
  say "creating $peers/venv with mlx-lm"
  python3 -m venv "$peers/venv"
  "$peers/venv/bin/pip" install --quiet --disable-pip-version-check --cache-dir .cache/pip \
    "mlx-lm==0.32.2" "mlx[cpu]==0.32.4" "tokenizers" "transformers" "gguf" >&2
  touch "$peers/.python-ready"
fi

if [ "${WITH_LLAMA_CPP:-1}" = 1 ] && [ ! -f "$peers/.node-ready" ]; then
  say "installing node-llama-cpp (prebuilt llama.cpp binaries) into $peers/node"
  mkdir -p "$peers/node"
  (cd "$peers/node" && [ -f package.json ] || echo '{"private":true}' > package.json)
  (cd "$peers/node" && npm install --no-audit --no-fund --loglevel=error node-llama-cpp@3 >&2)
  touch "$peers/.node-ready"
fi


# llama.cpp must run from node-llama-cpp's prebuilt binaries (no compiler, no download at
# bench time): fail here, not in the middle of bench/peers.ts, when none fits this machine.
if [ "${WITH_LLAMA_CPP:-1}" = 1 ]; then
  # (a script file, not node -e: node-llama-cpp tests its binary in a child process of the script)
  cat > "$peers/node/check-llama.mjs" <<'JS'
import { getLlama } from "node-llama-cpp";
const llama = await getLlama({ gpu: false, build: "never", progressLogs: false });
console.error(`[peers] llama.cpp ${llama.buildType} binaries load (${llama.cpuMathCores} cores)`);
await llama.dispose();
JS
  (cd "$peers/node" && node check-llama.mjs)
fi
say "peers ready in $peers"
