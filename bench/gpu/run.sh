#!/usr/bin/env bash
# The GPU check of issue 21 as one command, for a bare, offline device machine (docs/gpu-check.md).
#
#   bash bench/gpu/run.sh                      # every stage, in the order below
#   bash bench/gpu/run.sh mem-large16 time32   # only these (a rerun of what failed or was not reached)
#
# Stages: env smoke share16 time16 time32 mem-base16 mem-base32 mem-large16 mem-large32.
# Each stage runs under `timeout` (its own cap, and never past the budget GPU_CHECK_BUDGET seconds, default
# 420, counted from the start); a stage that fails or times out is recorded and the next one still runs; one
# that the budget no longer allows is recorded as skipped. After every stage the results so far are packed,
# so a run stopped from outside still leaves them. Under $OUT (default ./gpu-out), at most 4 files:
#   log.txt          everything every stage printed
#   stages.tsv       stage, status (ok | failed rc=N | timeout | skipped: why), seconds
#   summary.md       the results as Markdown tables (bench/gpu/summarize.py)
#   results.tar.gz   every stage's JSON and log (env.log: versions, imports, nvidia-smi)
# Carried from the machine that calls it (ignored paths, see bench/gpu/wheels.sh): .whl/ (wheels the device
# image lacks) and .gpu-carry/glue/RTE (the RTE files step_share and step_time train on).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/gpu-out}
BUDGET=${GPU_CHECK_BUDGET:-420}
PY=${PYTHON:-python3}
START=$(date +%s)
WORK=$(mktemp -d)
mkdir -p "$OUT"
: >"$OUT/log.txt"
printf 'stage\tstatus\tseconds\n' >"$OUT/stages.tsv"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
export HF_HOME=${HF_HOME:-$WORK/hf}  # datasets' cache of the RTE files: a fresh, writable place

say() { echo "[gpu-check $(($(date +%s) - START))s] $*" | tee -a "$OUT/log.txt"; }

# Wheels first, in this shell, so every stage imports them (device README's recipe; not in a CPU rehearsal,
# whose Python has them and may not be 3.12).
if [ "${GPU_CHECK_DRY:-0}" != 1 ] && compgen -G ".whl/*.whl" >/dev/null; then
    if $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        .whl/*.whl >>"$OUT/log.txt" 2>&1; then
        export PYTHONPATH=$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
        say "wheels installed: $(cd .whl && ls *.whl | tr '\n' ' ')"
    else
        export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
        say "wheels FAILED to install (see above); going on with the image's packages"
    fi
else
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
    [ "${GPU_CHECK_DRY:-0}" = 1 ] ||
        say "no .whl/ carried: the image's packages only (datasets is not in it: share/time stages will fail)"
fi
# sftune's CLI (memprofile) with the image's typer, else with the carried typer 0.29 stack.
if ! $PY -c "import sftune.cli" >>"$OUT/log.txt" 2>&1 && compgen -G ".whl/typer/*.whl" >/dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" \
        .whl/typer/*.whl >>"$OUT/log.txt" 2>&1
    export PYTHONPATH=$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}
    say "sftune.cli did not import with the image's typer: installed .whl/typer ($(ls .whl/typer | tr '\n' ' '))"
fi
GLUE=${GLUE:-}
for g in .gpu-carry/glue ../shared/data/glue; do
    if [ -z "$GLUE" ] && [ -f "$g/RTE/train.tsv" ]; then GLUE=$g; fi
done

# GPU_CHECK_DRY=1: the same stages on the CPU with tiny models (a rehearsal of this script, not a measurement).
if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
    DEV=cpu SMOKE_ARGS="--shape tiny --flat-grads on" SHAPE=tiny SHARE_STEPS=3 TIME_STEPS=3
    MEM_BASE=$WORK/tiny-model MEM_LARGE=$WORK/tiny-model MEM_ARGS="--random-init --cpu --steps 2 --seq-len 32"
    $PY -c "import sys; sys.path.insert(0, 'bench/gpu'); import smoke
smoke.model_config('tiny').save_pretrained('$MEM_BASE')"
else
    DEV=cuda SMOKE_ARGS="" SHAPE=roberta-base SHARE_STEPS=4 TIME_STEPS=6
    MEM_BASE=shape:roberta-base MEM_LARGE=shape:roberta-large MEM_ARGS="--steps 3"
fi

pack() {  # the results so far, in one archive (the device returns at most 8 files)
    tar -czf "$OUT/results.tar.gz.tmp" -C "$WORK" --exclude=./hf --exclude=./site --exclude=./tiny-model . &&
        mv "$OUT/results.tar.gz.tmp" "$OUT/results.tar.gz"
}

# stage NAME CAP COMMAND...: run COMMAND under min(CAP, budget left) seconds, its output to NAME.log and log.txt.
stage() {
    local name=$1 cap=$2
    shift 2
    local left=$((START + BUDGET - $(date +%s)))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 20 ]; then
        printf '%s\tskipped: budget (%ss left)\t0\n' "$name" "$left" >>"$OUT/stages.tsv"
        say "$name: skipped, ${left}s of the budget left"
        return
    fi
    say "$name: start (limit ${limit}s): $*"
    local t0 rc status
    t0=$(date +%s)
    set -o pipefail
    # bash -c runs programs and the exported functions alike; timeout signals its whole process group.
    timeout --kill-after=10 "$limit" bash -c '"$@"' "$name" "$@" 2>&1 | tee "$WORK/$name.log" >>"$OUT/log.txt"
    rc=$?
    set +o pipefail
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status="failed rc=$rc" ;;
    esac
    printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" >>"$OUT/stages.tsv"
    say "$name: $status after $(($(date +%s) - t0))s"
    [ "$status" = ok ] || tail -n 8 "$WORK/$name.log"  # in the call's output too: decide on a rerun at once
    pack
}

env_report() {
    nvidia-smi || true
    $PY - <<'EOF'
import importlib, platform
print("python", platform.python_version())
for name in ("torch", "transformers", "accelerate", "datasets", "tokenizers", "typer", "rich", "safetensors",
             "huggingface_hub", "pyarrow", "fsspec", "dill", "multiprocess", "sklearn", "scipy", "yaml", "sftune.cli"):
    try:
        module = importlib.import_module(name)
        print(f"{name:16s} {getattr(module, '__version__', 'ok')}  {getattr(module, '__file__', '')}")
    except Exception as e:  # noqa: BLE001 - report every import, fail at the end
        print(f"{name:16s} IMPORT FAILED: {type(e).__name__}: {e}")
import torch
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else ""
print("cuda", torch.cuda.is_available(), torch.version.cuda, gpu)
EOF
}

# memprofile NAME MODEL BATCH: all registered methods, fp32, grad mode; its JSON (stdout) -> the stage's file.
memprofile() {
    local methods
    methods=$($PY -c "from sftune.registry import methods; print(','.join(methods()))") || return 1
    # shellcheck disable=SC2086 # MEM_ARGS is a list of options
    $PY -m sftune memprofile "$2" rte --methods "$methods" --batch-sizes "$3" --timeout 60 $MEM_ARGS \
        --format json >"$WORK/memprofile-$1-bs$3.json"
}

export -f env_report memprofile
export PY WORK MEM_ARGS

run_stage() {
    local rte="--glue $GLUE"
    case $1 in
        env) stage env 60 env_report ;;
        smoke) stage smoke 120 $PY bench/gpu/smoke.py --device $DEV $SMOKE_ARGS --json "$WORK/smoke.json" ;;
        share16) stage share16 120 $PY bench/step_share.py --device $DEV --shape $SHAPE --steps $SHARE_STEPS \
            --batch-size 16 $rte --json "$WORK/step_share-bs16.json" ;;
        time16 | time32) stage "$1" 100 $PY bench/step_time.py --device $DEV --shape $SHAPE --steps $TIME_STEPS \
            --batch-size "${1#time}" $rte --json "$WORK/step_time-bs${1#time}.json" ;;
        mem-base16 | mem-base32) stage "$1" 90 memprofile roberta-base "$MEM_BASE" "${1#mem-base}" ;;
        mem-large16 | mem-large32) stage "$1" 120 memprofile roberta-large "$MEM_LARGE" "${1#mem-large}" ;;
        *)
            printf '%s\tskipped: unknown stage\t0\n' "$1" >>"$OUT/stages.tsv"
            say "unknown stage '$1' (see the list at the top of bench/gpu/run.sh)"
            ;;
    esac
}

STAGES=("$@")
[ ${#STAGES[@]} -eq 0 ] && STAGES=(env smoke share16 time16 time32 mem-base16 mem-base32 mem-large16 mem-large32)
say "stages: ${STAGES[*]}; budget ${BUDGET}s; GLUE=${GLUE:-none found}; OUT=$OUT"
for s in "${STAGES[@]}"; do
    if [ -z "$GLUE" ] && [[ $s == share* || $s == time* ]]; then
        printf '%s\tskipped: no RTE files (.gpu-carry/glue)\t0\n' "$s" >>"$OUT/stages.tsv"
        continue
    fi
    run_stage "$s"
done
cp "$OUT/stages.tsv" "$WORK/stages.tsv"
timeout 60 $PY bench/gpu/summarize.py "$WORK" >"$OUT/summary.md" 2>>"$OUT/log.txt" || say "summarize failed"
pack
cat "$OUT/stages.tsv"
redo=$(awk -F'\t' 'NR > 1 && $2 != "ok" {printf "%s ", $1}' "$OUT/stages.tsv")
say "done in $(($(date +%s) - START))s"
if [ -n "$redo" ]; then
    say "not ok: ${redo}-> rerun with: bash bench/gpu/run.sh ${redo}"
    exit 1
fi
