#!/usr/bin/env bash
# The prepared GPU check for a lent H100/H200: CUDA correctness (pytest -m gpu), then the benchmarks.
#
# usage (from anywhere):  bash tools/gpu_check.sh [--cpu-dry-run] [OUT_DIR]
#   OUT_DIR        where the report goes: default $OUT (the device tool's folder), else /tmp/gpu_check
#   --cpu-dry-run  the same stages on CPU at tiny sizes (no GPU needed): tests the plumbing
#                  (tools/gpu_sim.sh runs it in a copy of the GPU image's environment).
#
# With the device tool (docs/benchmarks.md, "On a lent GPU"): run `bash tools/gpu_wheels.sh` here
# first, then one call: carry [".whl"], command `bash tools/gpu_check.sh`, timeout_s 560.
#
# Stages, each with a budget (seconds, constants below) printed at its start and its time at its end;
# one PASS/FAIL/SKIP/TIMEOUT line each. A stage runs under `timeout` with min(its budget, what is left
# of BUDGET_S); a stage that would start with less than half its budget left is SKIPPED, so the
# script ends within BUDGET_S (480 s = 8 minutes) plus a few seconds for the report.
#   env            python ($PYTHON, else .venv/bin/python of the checkout, else python3); the wheels in
#                  .whl/ (hydra-core, omegaconf, antlr4: tools/gpu_wheels.sh) installed with
#                  `pip install --no-index --no-deps --target $SITE` when hydra/omegaconf are missing;
#                  PYTHONPATH=$SITE:$REPO. Never installs or replaces torch.
#   correctness    `pytest -m gpu -k cuda tests/gpu/test_gpu.py` (the cuda variants; the cpu ones run in the
#                  ordinary suite) -> correctness.xml (junit, measured values as properties). Only that
#                  file: collecting tests/ would import submitit (tests/unit/launch/test_launch.py), absent there.
#                  Dry run: `-m 'gpu and not slow'` (the quick cpu variants).
#   bench_search   `unrealnas bench search preset=paper steps=8 warmup=3 packed=1,5` -> bench_search.json:
#                  darts and darts2; per_edge vs the engine at S=1 and S=5; fp32 and bf16; eager and
#                  graph (first order); every row SearchEngine.step, with ops and paper-search hours
#   bench_retrain  `unrealnas bench retrain preset=paper train.cuda_graph=on targets=cifar10,imagenet`:
#                  eager images/s and, the same step replayed as a CUDA graph, graph_images_per_s
#                  -> bench_retrain.json
#   bench_data     `unrealnas bench data quick=true` -> bench_data.json
#   bench_compile  optional, only with >= its budget left: `bench search methods=darts compile=true`
#                  (out of time there is TIMEOUT, not FAIL); its rows go into gpu_check.json/.md only
# OUT_DIR then holds at most 7 files (the device tool returns 8): gpu_check.json, gpu_check.md,
# gpu_check.log, correctness.xml, bench_search.json, bench_retrain.json, bench_data.json.
# Exit status 0 when no stage FAILED.
set -uo pipefail

# ---------------------------------------------------------------- budgets (seconds)
BUDGET_S=${GPU_CHECK_BUDGET_S:-480}
B_ENV=30
B_CORRECTNESS=200
B_SEARCH=150
B_RETRAIN=50
B_DATA=50
B_COMPILE=120

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
DRY=0
OUT_ARG=""
for a in "$@"; do
  case $a in
    --cpu-dry-run) DRY=1 ;;
    -h|--help) sed -n '2,32p' "$0"; exit 0 ;;
    *) OUT_ARG=$a ;;
  esac
done
OUT=${OUT_ARG:-${OUT:-/tmp/gpu_check}}
mkdir -p "$OUT" || exit 2
OUT=$(cd "$OUT" && pwd)
LOG=$OUT/gpu_check.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x "$REPO/.venv/bin/python" ]]; then PY=$REPO/.venv/bin/python
else PY=python3
fi
WORK=$(mktemp -d /tmp/gpu_check_work.XXXX)
STAGES=$WORK/stages.tsv
: >"$STAGES"
START=$(date +%s)

left() { echo $((BUDGET_S - ($(date +%s) - START))); }

record() {  # record NAME STATUS BUDGET SECONDS DETAIL
  printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "${5//$'\t'/ }" >>"$STAGES"
  echo "$2 $1: $5 [$4 s of $3 s]"
}

# can_start NAME BUDGET: true when at least half the stage's budget is left (else records SKIP)
can_start() {
  local l
  l=$(left)
  if ((l < $2 / 2)); then
    record "$1" SKIP "$2" 0 "skipped: ${l} s of the ${BUDGET_S} s budget left, the stage needs at least $(($2 / 2)) s"
    return 1
  fi
}

run_stage() {  # run_stage NAME BUDGET COMMAND...
  local name=$1 budget=$2
  shift 2
  can_start "$name" "$budget" || return 0
  local limit l t0 rc dt
  l=$(left)
  limit=$((budget < l ? budget : l))
  echo "=== $name: budget ${budget} s, limit ${limit} s, $(left) s of ${BUDGET_S} s left: $*"
  t0=$(date +%s)
  timeout --kill-after=5 "$limit" "$@"
  rc=$?
  dt=$(($(date +%s) - t0))
  echo "=== $name: ${dt} s (budget ${budget} s), exit status $rc"
  if [[ $rc -eq 0 ]]; then
    record "$name" PASS "$budget" "$dt" "ok"
  elif [[ ($rc -eq 124 || $rc -eq 137) && ${OPTIONAL:-0} -eq 1 ]]; then
    record "$name" TIMEOUT "$budget" "$dt" "optional stage: no result within ${limit} s (not a failure)"
  elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
    record "$name" FAIL "$budget" "$dt" "timed out after ${limit} s"
  else
    record "$name" FAIL "$budget" "$dt" "exit status $rc"
  fi
}

# ---------------------------------------------------------------- env
echo "=== env: budget ${B_ENV} s; $(date -u +%FT%TZ) repo $REPO out $OUT dry_run=$DRY python $PY"
t0=$(date +%s)
ENV_OK=1
env_detail="ok"
command -v nvidia-smi >/dev/null && nvidia-smi -L
if [[ $DRY -eq 1 ]]; then SITE=${GPU_CHECK_SITE:-$WORK/site}; else SITE=${GPU_CHECK_SITE:-/tmp/site}; fi
TORCH_BEFORE=$($PY -c "import torch; print(torch.__version__, torch.__file__)" 2>&1)
echo "torch before: $TORCH_BEFORE"
if ! $PY -c "import hydra, omegaconf, antlr4" 2>/dev/null; then
  if compgen -G "$REPO/.whl/*.whl" >/dev/null; then
    echo "hydra/omegaconf/antlr4 missing: installing $(cd "$REPO/.whl" && echo *.whl) into $SITE"
    timeout 60 $PY -m pip install --quiet --no-index --no-deps --no-compile --disable-pip-version-check --upgrade \
      --target "$SITE" "$REPO"/.whl/*.whl || { ENV_OK=0; env_detail="pip install of .whl/*.whl failed"; }
  else
    ENV_OK=0
    env_detail="hydra/omegaconf/antlr4 missing and no wheels in .whl/ (run tools/gpu_wheels.sh, carry [\".whl\"])"
  fi
fi
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
$PY - <<'EOF' || { ENV_OK=0; env_detail="unrealnas or a dependency does not import (see the log)"; }
import sys, torch, hydra, omegaconf, h5py, pytest
import unrealnas, unrealnas.cli, unrealnas.config, unrealnas.search.run, unrealnas.train.retrain
from unrealnas.config import compose_config
compose_config(["preset=smoke"])
print(f"python {sys.version.split()[0]}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
      f"hydra {hydra.__version__}, omegaconf {omegaconf.__version__}, unrealnas from {unrealnas.__file__}")
print("cuda available:", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")
EOF
TORCH_AFTER=$($PY -c "import torch; print(torch.__version__, torch.__file__)" 2>&1)
if [[ "$TORCH_AFTER" != "$TORCH_BEFORE" ]]; then ENV_OK=0; env_detail="torch changed: $TORCH_BEFORE -> $TORCH_AFTER"; fi
if [[ $ENV_OK -eq 1 && $DRY -eq 0 ]] && ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  ENV_OK=0
  env_detail="no CUDA device visible to torch (use --cpu-dry-run without a GPU)"
fi
dt=$(($(date +%s) - t0))
echo "=== env: ${dt} s (budget ${B_ENV} s)"
record env "$([[ $ENV_OK -eq 1 ]] && echo PASS || echo FAIL)" "$B_ENV" "$dt" "$env_detail"

# ---------------------------------------------------------------- stages
if [[ $ENV_OK -eq 0 ]]; then
  for s in correctness bench_search bench_retrain bench_data bench_compile; do
    record "$s" SKIP 0 0 "skipped: the env stage failed"
  done
elif [[ $DRY -eq 1 ]]; then
  run_stage correctness "$B_CORRECTNESS" $PY -m pytest -m "gpu and not slow" -q -p no:cacheprovider tests/gpu/test_gpu.py \
    -o junit_family=xunit1 --junitxml="$OUT/correctness.xml" -rA
  run_stage bench_search "$B_SEARCH" $PY -m unrealnas bench search preset=smoke device=cpu threads=1 steps=1 \
    warmup=1 packed=1,5 json="$OUT/bench_search.json"
  run_stage bench_retrain "$B_RETRAIN" $PY -m unrealnas bench retrain preset=smoke device=cpu steps=1 \
    targets=cifar10 train.cuda_graph=auto json="$OUT/bench_retrain.json"
  run_stage bench_data "$B_DATA" $PY -m unrealnas bench data preset=smoke device=cpu threads=1 quick=true \
    images=512 fractal=false json="$OUT/bench_data.json"
  record bench_compile SKIP "$B_COMPILE" 0 "not in --cpu-dry-run (torch.compile of the supernet takes minutes on CPU)"
else
  # -k cuda: the cuda variants only (the cpu ones, some marked slow, are the ordinary suite's)
  run_stage correctness "$B_CORRECTNESS" $PY -m pytest -m gpu -k cuda -q -p no:cacheprovider tests/gpu/test_gpu.py \
    -o junit_family=xunit1 --junitxml="$OUT/correctness.xml" -rA
  run_stage bench_search "$B_SEARCH" $PY -m unrealnas bench search preset=paper steps=8 warmup=3 packed=1,5 \
    json="$OUT/bench_search.json"
  run_stage bench_retrain "$B_RETRAIN" $PY -m unrealnas bench retrain preset=paper train.cuda_graph=on \
    targets=cifar10,imagenet json="$OUT/bench_retrain.json"
  run_stage bench_data "$B_DATA" $PY -m unrealnas bench data quick=true json="$OUT/bench_data.json"
  if (($(left) >= B_COMPILE)); then
    OPTIONAL=1 run_stage bench_compile "$B_COMPILE" $PY -m unrealnas bench search preset=paper methods=darts \
      compile=true steps=20 warmup=3 supernet=fused packed=1 json="$WORK/bench_search_compile.json"
  else
    record bench_compile SKIP "$B_COMPILE" 0 "optional: $(left) s left, it runs only with its whole ${B_COMPILE} s"
  fi
fi

# ---------------------------------------------------------------- report
TOTAL=$(($(date +%s) - START))
echo "=== report: $OUT/gpu_check.json, $OUT/gpu_check.md (${TOTAL} s)"
$PY "$REPO/tools/gpu_report.py" "$STAGES" "$OUT" "$DRY" "$BUDGET_S" "$TOTAL" "$WORK"
rc=$?
if [[ $rc -gt 1 ]]; then echo "FAIL report: tools/gpu_report.py exit status $rc"; fi
echo "=== summary (${TOTAL} s of ${BUDGET_S} s):"
cut -f1,2,4 "$STAGES" | awk -F'\t' '{printf "  %-14s %-8s %s s\n", $1, $2, $3}'
ls "$OUT"
if [[ $rc -eq 0 ]]; then echo "PASS gpu_check: no stage failed in ${TOTAL} s"; else echo "FAIL gpu_check (see $OUT/gpu_check.md)"; fi
rm -rf "$WORK"
exit $((rc > 0))
