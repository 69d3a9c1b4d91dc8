#!/usr/bin/env bash
# Build llama.cpp's own command-line tools (llama-speculative-simple, llama-cli, ...) from the exact
# llama.cpp source that the installed llama-cpp-python vendors, for `edgespec bench --compare llama-cpp`.
# Usage: scripts/build_llama_cpp_tools.sh [OUT_DIR]   (default: ./.llama-cpp-tools); CMAKE_ARGS are passed on.
# Where edgespec loads models without AMX (a CPU whose AMX kernels crash, or EDGESPEC_AMX=off), the tools
# are built without it too, for the CPU's other instruction sets; CMAKE_ARGS naming GGML_NATIVE or
# GGML_AMX_* take that choice instead.
set -euo pipefail
out=$(realpath -m "${1:-.llama-cpp-tools}")
py=${PYTHON:-python3}
ver=$("$py" -c 'import llama_cpp; print(llama_cpp.__version__)')
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$py" -m pip download --no-deps --no-binary :all: -q -d "$work" "llama-cpp-python==$ver"
tar -xzf "$work"/llama_cpp_python-*.tar.gz -C "$work"
src=$(echo "$work"/llama_cpp_python-*/vendor/llama.cpp)
cpu_args=""
case "${CMAKE_ARGS:-}" in
    *GGML_NATIVE*|*GGML_AMX*) ;;
    *) cpu_args=$("$py" -m edgespec.bench.llamacpp cmake-args) \
           || { echo "could not ask edgespec which CPU paths it uses here: a native build (AMX wherever the CPU has it)" >&2; cpu_args=""; } ;;
esac
cmake -S "$src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF $cpu_args ${CMAKE_ARGS:-} >"$work/configure.log" 2>&1 \
    || { tail -40 "$work/configure.log"; exit 1; }
cmake --build "$work/build" -j "$(nproc)" --target llama-speculative-simple llama-simple >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log"; exit 1; }
mkdir -p "$out"
cp "$work"/build/bin/llama-speculative-simple "$work"/build/bin/llama-simple "$out"/
echo "built llama.cpp $ver tools in $out"
