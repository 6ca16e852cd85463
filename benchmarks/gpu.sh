#!/usr/bin/env bash
# GPU checks for a lent GPU machine (one NVIDIA H200, 16 cores, nothing outside reachable), run from the repo
# root of a copy of the working tree; finishes in under 8 minutes (every part runs under `timeout`, and a
# part that would start too late is skipped). The Python parts are benchmarks/gpu_bench.py:
#   (a) every registered method, a few bf16 steps through RobustDistiller on the built-in teacher
#   (b) ResNet-18 224 px RSLAD step images/s: eager, channels_last, torch.compile, both; FLOPs, fraction of peak
#   (c) ONNX on onnxruntime's CUDA provider: parity (max |logit diff| vs torch) and speed
#   (d) pytest -m gpu
# Output: $OUT if set, else benchmarks/results/gpu/: gpu.json (every part), gpu.md (the summary), gpu.log.
#
#   bash benchmarks/gpu.sh                         # with .venv/bin/python
#   PYTHON=python3 bash benchmarks/gpu.sh          # another interpreter (e.g. the GPU image's own)
#
# Nothing is installed from a package index (there is none there). If $PYTHON cannot import robust_student, the
# checkout is installed without dependencies into a temporary folder; wheels placed in .whl/ (ignored by git)
# are installed the same way first (e.g. open_clip_torch, ftfy, wcwidth where the interpreter lacks them).
# Check the Python half on a CPU: .venv/bin/python benchmarks/gpu_bench.py --cpu-smoke
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-.venv/bin/python}
RESULTS=${OUT:-benchmarks/results/gpu}
BUDGET=${GPU_SH_BUDGET_S:-430}     # seconds after start by which the last part must end; the summary follows
START=$SECONDS
WORK=$(mktemp -d "${TMPDIR:-/tmp}/robust_student_gpu.XXXXXX")
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

declare -A RC
ORDER=()

run_part() {  # run_part NAME LIMIT_S COMMAND...: COMMAND under timeout, capped by what is left of BUDGET
    local name=$1 limit=$2 left rc t0
    shift 2
    left=$(( BUDGET - (SECONDS - START) ))
    ORDER+=("$name")
    if (( left < 20 )); then
        echo "== $name: skipped, only ${left}s of the ${BUDGET}s budget left"
        RC[$name]=skipped
        return
    fi
    (( limit > left )) && limit=$left
    echo "== $name (time limit ${limit}s)"
    t0=$SECONDS
    timeout -k 10 "$limit" "$@"
    rc=$?
    RC[$name]=$rc
    local why=""
    (( rc == 124 || rc == 137 )) && why=" (stopped by its time limit)"
    echo "== $name: exit $rc after $(( SECONDS - t0 ))s$why"
}

main() {
    echo "gpu.sh: $(date -u '+%Y-%m-%d %H:%M:%S') UTC, $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')," \
         "python $PY, results in $RESULTS"
    if ! "$PY" -c 'import sys' >/dev/null 2>&1; then
        echo "gpu.sh: cannot run $PY. Carry a working virtual environment, or set PYTHON to an interpreter that has" \
             "torch with CUDA (on the lent GPU machine: PYTHON=python3)." >&2
        return 2
    fi
    if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
        "$PY" -c 'import torch; print(f"torch {torch.__version__} (CUDA build {torch.version.cuda}): '\
'torch.cuda.is_available() is False")' 2>&1 | tail -1 >&2
        echo "gpu.sh: torch.cuda is not available here: these checks need a CUDA GPU. On a CPU run" \
             ".venv/bin/python benchmarks/gpu_bench.py --cpu-smoke" >&2
        return 3
    fi
    nvidia-smi 2>/dev/null | head -15

    # The package and its missing dependencies, without an index (none is reachable there).
    local site="$WORK/site"
    if compgen -G ".whl/*.whl" >/dev/null; then
        echo "== installing .whl/*.whl into $site"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || return 4
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if ! "$PY" -c 'import robust_student' >/dev/null 2>&1; then
        echo "== robust_student is not importable by $PY: installing this checkout (no dependencies) into $site"
        "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target "$site" . || return 4
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    fi
    if ! "$PY" -c 'import robust_student, robust_student.export, open_clip' 2>"$WORK/import.err"; then
        echo "gpu.sh: $PY cannot import what the checks need:" >&2
        tail -3 "$WORK/import.err" >&2
        echo "gpu.sh: put the missing wheels in .whl/ (carried with the tree) and rerun" >&2
        return 4
    fi

    local bench=(benchmarks/gpu_bench.py --work "$WORK" --out "$RESULTS")
    run_part env 45 "$PY" "${bench[@]}" --part env
    run_part methods 130 "$PY" "${bench[@]}" --part methods
    run_part throughput_eager 75 "$PY" "${bench[@]}" --part throughput --variants eager channels_last
    run_part onnx 60 "$PY" "${bench[@]}" --part onnx
    run_part pytest 50 bash -c "'$PY' -m pytest -m gpu -q -p no:cacheprovider tests >'$WORK/pytest.log' 2>&1; \
        rc=\$?; tail -25 '$WORK/pytest.log'; exit \$rc"
    # last: compiling is the slowest and least predictable part; rows are saved after each variant
    run_part throughput_compile 200 "$PY" "${bench[@]}" --part throughput --append \
        --variants compile compile+channels_last

    local status=() failed=0
    for name in "${ORDER[@]}"; do
        status+=("$name=${RC[$name]}")
        # pytest's 5: no test collected (no test is marked gpu)
        [[ ${RC[$name]} == 0 || ( $name == pytest && ${RC[$name]} == 5 ) ]] || failed=1
    done
    timeout -k 5 30 "$PY" "${bench[@]}" --part summary --status "${status[@]}" || failed=1
    echo "gpu.sh: done in $(( SECONDS - START ))s; $RESULTS/gpu.md, $RESULTS/gpu.json" \
         "(parts: ${status[*]})"
    return $failed
}

main 2>&1 | tee "$RESULTS/gpu.log"
status=${PIPESTATUS[0]}
rm -rf "$WORK"
exit "$status"
