#!/usr/bin/env bash
# Build llama.cpp's own llama-quantize, llama-perplexity and llama-imatrix from the vendored tree of the
# pinned llama-cpp-python sdist, as yardsticks for the benchmarks (scripts/bench_quantize.py,
# scripts/bench_eval.py). ggprec never runs them: they are not a runtime dependency.
#
#     bash scripts/build_llama_tools.sh            # prints the folder holding the three binaries
#
# The binaries go to $GGPREC_LLAMA_TOOLS (default: $GGPREC_CACHE or ~/.cache/ggprec, then
# llama-tools/<version>/bin); a second run finds them there and builds nothing. The build uses the same
# CMake defaults as the wheel (Release, GGML_NATIVE on) plus RPC, and only these targets: 3-6 minutes
# on 2 cores, under `nice` because the machine may be shared. Needs cmake, a C++ compiler and pip.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
TOOLS=(llama-quantize llama-perplexity llama-imatrix)
ROOT="${GGPREC_LLAMA_TOOLS:-${GGPREC_CACHE:-$HOME/.cache/ggprec}/llama-tools/$VERSION}"
BIN="$ROOT/bin"
PYTHON="${PYTHON:-python3}"
JOBS="${JOBS:-$(nproc)}"

have_all() {
    for t in "${TOOLS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done
}

if have_all; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$ROOT"
SRC="$ROOT/src"
if [[ ! -d "$SRC/vendor/llama.cpp" ]]; then
    dl="$(mktemp -d "$ROOT/download.XXXXXX")"
    trap 'rm -rf "$dl"' EXIT
    "$PYTHON" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$dl" >&2
    tar -xzf "$dl/llama_cpp_python-$VERSION.tar.gz" -C "$dl"
    rm -rf "$SRC"
    mv "$dl/llama_cpp_python-$VERSION" "$SRC"
fi

BUILD="$ROOT/build"
nice -n 10 cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DGGML_RPC=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >&2
nice -n 10 cmake --build "$BUILD" --parallel "$JOBS" --target "${TOOLS[@]}" >&2

# The binaries find their shared libraries (libllama, libggml*) in the build tree through their RPATH,
# so they are linked into bin/, not copied.
mkdir -p "$BIN"
for t in "${TOOLS[@]}"; do ln -sf "$BUILD/bin/$t" "$BIN/$t"; done
have_all
echo "$BIN"
