#!/usr/bin/env bash
# Sets up a fresh checkout, and is quick to re-run: npm dependencies (Bun included), the
# MLX backend wheel in .mlx/, our C ABI shim built against it, and the dist/mlx executable.
#   MLX_BACKEND=cpu|metal|cuda  picks the wheel (default: metal on Apple Silicon, else cpu)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
MLX_VERSION=0.32.4
say() { printf '[setup] %s\n' "$*" >&2; }

# 1. npm dependencies; Bun itself is a pinned dev dependency.
if [ ! -x node_modules/.bin/bun ] || [ package.json -nt node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "installing npm dependencies"
  npm install --no-audit --no-fund --loglevel=error >&2
fi

# The browser tests drive Debian's Chromium (no browser download): installed where missing when
# we may (root with apt-get, as on a fresh CI machine); elsewhere those tests skip.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  say "installing chromium (for the browser tests)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2 || say "could not install chromium: the browser tests will skip"
fi

# 2. The MLX backend wheel, project-local. pip caches the download under .cache/.
os=$(uname -s); arch=$(uname -m)
backend=${MLX_BACKEND:-}
if [ -z "$backend" ]; then
  if [ "$os" = Darwin ] && [ "$arch" = arm64 ]; then backend=metal; else backend=cpu; fi
fi
case "$backend" in
  cpu) wheel=mlx-cpu; deps=--no-deps ;;
  metal) wheel=mlx-metal; deps=--no-deps ;;
  cuda) wheel=mlx-cuda-13; deps= ;; # brings the CUDA runtime libraries it links to
  *) say "unknown MLX_BACKEND '$backend' (cpu, metal or cuda)"; exit 1 ;;
esac
stamp=".mlx/.installed-$wheel-$MLX_VERSION"
if [ ! -f "$stamp" ]; then
  say "installing $wheel==$MLX_VERSION into .mlx/"
  rm -rf .mlx/mlx .mlx/*.dist-info .mlx/.installed-*
  python3 -m pip install --quiet --disable-pip-version-check --cache-dir .cache/pip \
    --target .mlx --upgrade $deps "$wheel==$MLX_VERSION" >&2
  touch "$stamp"
fi
# On the CPU backend, OpenBLAS for MLX's float32 matmuls (see ffi/src/kernels/openblas/sgemm.cpp); its
# symbols carry a scipy_ prefix, so it never clashes with the BLAS the MLX wheel bundles.
OPENBLAS_VERSION=0.3.34.481.3
if [ "$backend" = cpu ] && [ ! -f ".mlx/.installed-scipy-openblas32-$OPENBLAS_VERSION" ]; then
  say "installing scipy-openblas32==$OPENBLAS_VERSION into .mlx/"
  rm -rf .mlx/scipy_openblas32 .mlx/scipy_openblas32-*.dist-info .mlx/.installed-scipy-openblas32-*
  python3 -m pip install --quiet --disable-pip-version-check --cache-dir .cache/pip \
    --target .mlx --no-deps "scipy-openblas32==$OPENBLAS_VERSION" >&2
  touch ".mlx/.installed-scipy-openblas32-$OPENBLAS_VERSION"
fi
mlx_root="$root/.mlx/mlx"
[ -f "$mlx_root/include/mlx/mlx.h" ] || { say "the $wheel wheel has no headers at $mlx_root/include"; exit 1; }

# 3. The shim (ffi/), rebuilt by CMake only when its sources changed.
generator=()
command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)
if [ ! -f build/ffi/CMakeCache.txt ]; then
  cmake -S ffi -B build/ffi "${generator[@]}" -DMLX_ROOT="$mlx_root" -DCMAKE_BUILD_TYPE=Release >&2
fi
cmake --build build/ffi --parallel >&2
lib=libmlx_shim.so; [ "$os" = Darwin ] && lib=libmlx_shim.dylib
# Replaced by a rename, so a running mlx keeps the copy it has mapped.
cp -f "build/ffi/$lib" ".mlx/$lib.new" && mv -f ".mlx/$lib.new" ".mlx/$lib"

# 4. The executable. It finds the shim in ../.mlx/ (or next to itself, or $MLX_SHIM_PATH).
#    ffi-rs (the library's FFI on Node) stays out of it: Bun uses bun:ffi.
mkdir -p dist
node_modules/.bin/bun build --compile src/main.ts --outfile dist/mlx.new --external ffi-rs >/dev/null && mv -f dist/mlx.new dist/mlx
# 5. The library for Node (package.json "exports"): one JavaScript file that node imports as it
#    is, and its types in one declaration file (the source's extensionless imports and Bun types
#    would not check under a consumer's "moduleResolution": "nodenext"). Bun imports the source.
node_modules/.bin/bun build --target node src/index.ts --outfile dist/node/index.js --external ffi-rs >/dev/null
node_modules/.bin/dts-bundle-generator --silent --no-check --project tsconfig.json -o dist/node/index.d.ts src/index.ts
say "ready: dist/mlx and dist/node/index.js ($backend backend, MLX $MLX_VERSION)"
