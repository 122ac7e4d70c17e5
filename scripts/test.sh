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
# Model-backed tests load real weights on a 2-core CPU: allow them minutes, not seconds. A failed
# test's error is printed again at the end (from the JUnit report), where a log's tail keeps it.
report="$(mktemp -d)/junit.xml"
status=0
node_modules/.bin/bun test --timeout 600000 --reporter=junit --reporter-outfile="$report" "$@" || status=$?
if [ "$status" -ne 0 ] && [ -f "$report" ]; then node_modules/.bin/bun scripts/test-failures.ts "$report"; fi
rm -rf "$(dirname "$report")"
exit "$status"
