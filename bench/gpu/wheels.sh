#!/usr/bin/env bash
# Stage here what the GPU check carries to the offline device machine (docs/gpu-check.md), in the repo root:
#   .whl/                 the wheels its image lacks: datasets and its two needs the image does not have (dill,
#                         multiprocess); every other dependency of sftune is in the image (device KINDS.md)
#   .whl/typer/           typer 0.29 (the version pyproject.toml asks for) and its pydantic stack, installed by
#                         run.sh only if sftune's CLI does not import with the image's own typer (version unknown)
#   .gpu-carry/glue/RTE   the real RTE files that bench/step_share.py and bench/step_time.py train on
# Both paths are git-ignored, so they travel only when the run call names them in `carry`.
#
#   bash bench/gpu/wheels.sh                 # then: run(command="bash bench/gpu/run.sh", carry=[".whl", ".gpu-carry"])
#   EXTRA_WHEELS="typer==0.29.2 ..." bash bench/gpu/wheels.sh   # more wheels, if env.txt shows another import failing
#
# Versions are pinned to what this project's tests run with (pip show datasets dill multiprocess here); the
# device's Python is 3.12 on x86-64 (KINDS.md). Fails if the staged files pass 16 MiB (the device's whole
# limit is 64 MiB, the repository included).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
PY=${PYTHON:-python3}
WHEELS=${WHEELS:-"datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19"}
TYPER=${TYPER:-"typer==0.29.2 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    annotated-doc==0.0.7 typing-extensions==4.16.0"}
GLUE=${GLUE:-$ROOT/../shared/data/glue}

download() {  # DIR PACKAGE...: wheels for the device's CPython 3.12 on x86-64, without their dependencies
    local dir=$1
    shift
    $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dir" "$@"
}
rm -rf .whl && mkdir -p .whl/typer
# shellcheck disable=SC2086 # word splitting of the package lists is wanted
download .whl $WHEELS ${EXTRA_WHEELS:-}
# shellcheck disable=SC2086
download .whl/typer $TYPER

if [ ! -f "$GLUE/RTE/train.tsv" ]; then
    echo "wheels.sh: no RTE files at $GLUE/RTE (set GLUE=the folder holding RTE/train.tsv)" >&2
    exit 2
fi
rm -rf .gpu-carry && mkdir -p .gpu-carry/glue/RTE
cp "$GLUE"/RTE/*.tsv .gpu-carry/glue/RTE/

ls -la .whl .whl/typer .gpu-carry/glue/RTE
kib=$(du -sk .whl .gpu-carry | awk '{s += $1} END {print s}')
echo "staged: ${kib} KiB (.whl + .gpu-carry)"
if [ "$kib" -gt 16384 ]; then
    echo "wheels.sh: ${kib} KiB staged, more than the 16 MiB this check allows itself of the 64 MiB carry limit" >&2
    exit 1
fi
