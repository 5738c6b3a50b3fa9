#!/usr/bin/env bash
# bench/gpu_check.py on a bare GPU machine, from the repository root: the wheels in bench/wheelhouse/
# (bench/gpu_wheelhouse.sh writes them) are unpacked onto the path first (a wheel is a zip archive:
# no pip and no network needed there), then the check runs. Arguments go to gpu_check.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G "bench/wheelhouse/*.whl" >/dev/null; then
    site="$(mktemp -d)"
    for wheel in bench/wheelhouse/*.whl; do
        python -m zipfile -e "$wheel" "$site"
    done
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
exec python bench/gpu_check.py "$@"
