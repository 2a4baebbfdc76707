#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that experiments/gpu_check.sh
# installs on a GPU host that cannot reach a package index: the GPU image
# (Python 3.12, JAX with CUDA, flax, optax, orbax, tensorstore, torch) lacks
# grain, ml-collections and tensorboardX, and two of grain's requirements,
# array-record and portpicker. Their other requirements (absl-py, cloudpickle,
# etils, numpy, protobuf, PyYAML, packaging, psutil) are in that image.
# Versions are this checkout's .venv's (pip freeze), for CPython 3.12 on
# manylinux x86_64.
#
#   experiments/gpu_wheels.sh [PIP]      # PIP: default .venv/bin/pip
set -euo pipefail
cd "$(dirname "$0")/.."
pip=${1:-.venv/bin/pip}
names=(grain ml-collections tensorboardX array-record portpicker)

freeze=$("$pip" freeze)
pins=()
for name in "${names[@]}"; do
  pattern=$(sed 's/[-_.]/[-_.]/g' <<<"$name")  # pip freeze may spell - as _
  pin=$(grep -iE "^${pattern}==" <<<"$freeze") \
    || { echo "gpu_wheels: $name is not installed in $pip's environment" >&2; exit 1; }
  pins+=("$pin")
done

rm -rf .whl  # one version of each: two would stop the install
"$pip" download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux1_x86_64 -d .whl "${pins[@]}"
ls -l .whl
du -sh .whl
