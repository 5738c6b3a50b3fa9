#!/usr/bin/env bash
# The wheels that bench/gpu_check.py needs beyond a bare GPU machine's torch + transformers stack
# (`indexer` imports PyAV, pydantic and sentencepiece), for CPython 3.12 on x86-64 Linux, into
# bench/wheelhouse/ (git-ignored; about 40 MB: carry it to the machine with the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip download --quiet --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --dest bench/wheelhouse av pydantic sentencepiece pyyaml
du -sh bench/wheelhouse
ls bench/wheelhouse
