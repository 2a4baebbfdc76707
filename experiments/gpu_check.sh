#!/usr/bin/env bash
# Runs experiments/gpu_check.py on a GPU host from the source tree, with no
# pip install of hpajax: the wheels experiments/gpu_wheels.sh put in .whl/
# (if any) go into $GPU_CHECK_SITE (default /tmp/site) without their
# dependencies, and PYTHONPATH puts the repository and that folder first.
# Arguments go to gpu_check.py; $PYTHON picks the interpreter (default python3).
#
#   bash experiments/gpu_check.sh [--time_limit=420 ...] | tee gpu_check.jsonl
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
site=${GPU_CHECK_SITE:-/tmp/site}
if compgen -G ".whl/*.whl" >/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" .whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" experiments/gpu_check.py "$@"
