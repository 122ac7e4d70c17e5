#!/usr/bin/env bash
# The whole test suite: sets up what is missing (quick when already done), type-checks, then bun test.
# Downloads (the MLX wheel, the default model) are cached under .cache/ in the project.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MLX_HOME="${MLX_HOME:-$PWD/.cache/mlx-home}"
# Types first (seconds): a type error fails the run before the long tests start.
node_modules/.bin/tsc --noEmit -p .
# The layout is Biome's (biome.json); `node_modules/.bin/biome format --write .` applies it.
node_modules/.bin/biome format .
node_modules/.bin/tsc --noEmit -p src/web
# Model-backed tests load real weights on a 2-core CPU: allow them minutes, not seconds.
exec node_modules/.bin/bun test --timeout 600000 "$@"
