#!/usr/bin/env bash
# The prepared GPU check for a lent H100/H200: CUDA correctness, then the search and data benchmarks.
#
# usage (from the repo root):  tools/gpu_check.sh [--cpu-dry-run]
#   --cpu-dry-run  the same stages on CPU at tiny sizes (no GPU needed): tests the plumbing.
#
# Stages, each under its own time limit, each ending in one PASS/FAIL/SKIP/TIMEOUT line:
#   env          python ($PYTHON, else .venv/bin/python if present, else python3), torch, CUDA; on a GPU
#                machine installs the project with `pip install -e .` only if torch is missing or
#                CPU-only (never in a dry run); otherwise runs from the checkout (PYTHONPATH) and takes pure-Python
#                dependencies the image lacks (hydra, omegaconf, antlr4) from carried venv folders
#                (.venv/lib/python3.*/site-packages/<pkg>) or wheels in ${WHEELS:-.whl}.
#   correctness  tools/gpu_check.py (supernet fwd/bwd CUDA vs CPU, bf16 loss, alpha gradients,
#                second order in fp32 under autocast, DeviceLoader CUDA vs CPU, 2-epoch tiny search,
#                packed seeds vs separate searches, search and retrain CUDA graph vs eager,
#                bf16 vs fp32 genotype of one small search: the evidence search.amp's default waits on).
#   bench_search `unrealnas bench search` paper preset, darts and darts2, baseline vs optimised, then
#                the packed-seed rows: single engine vs packed S=1 and S=5, eager and CUDA graph
#                (ops_per_iter, s/iter, images/s, paper_seeds_h).
#   bench_data   `unrealnas bench data quick=true`.
#   bench_compile `unrealnas bench search methods=darts compile=true` (last and optional: compiling may
#                be slow; running out of time there is TIMEOUT, not FAIL).
# Output: everything tee'd to $OUT/gpu_check.log; $OUT/gpu_check.json (stages, rc, seconds) plus
# the JSON of each stage (gpu_check_correctness.json, bench_search.json, bench_data.json,
# bench_search-packed.json, bench_search_compile.json). OUT defaults to /tmp/gpu_check. Budget: the
# first stages take about 3-5 minutes on an H100 (limits 180 + 180 + 80 s); the compile stage gets what is left of
# ${GPU_CHECK_BUDGET_S:-520} s (at least 60 s), so the whole script ends within about 9 minutes (one device call is at most 10).
#
# With the device tool: carry [".venv/lib/python3.11/site-packages/hydra",
# ".venv/lib/python3.11/site-packages/omegaconf", ".venv/lib/python3.11/site-packages/antlr4"]
# and run `bash tools/gpu_check.sh` with timeout_s 600.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 2
OUT=${OUT:-/tmp/gpu_check}
mkdir -p "$OUT"
LOG=$OUT/gpu_check.log
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1

DRY=0
if [[ "${1:-}" == "--cpu-dry-run" ]]; then DRY=1; fi
# the checkout's venv where there is one (a dev machine); the image's python3 on a bare device machine
if [[ -z "${PYTHON:-}" && -x "$REPO/.venv/bin/python" ]]; then PY=$REPO/.venv/bin/python; else PY=${PYTHON:-python3}; fi
START=$(date +%s)
STAGES=()

record() {  # record NAME STATUS RC SECONDS DETAIL
  STAGES+=("$(printf '{"stage": "%s", "status": "%s", "rc": %s, "seconds": %s, "detail": "%s"}' "$1" "$2" "$3" "$4" "${5//\"/\'}")")
  echo "$2 $1: ${5} [${4} s]"
}

run_stage() {  # run_stage NAME LIMIT_S COMMAND...
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit} s): $*"
  local t0 rc
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  local dt=$(($(date +%s) - t0))
  if [[ $rc -eq 0 ]]; then
    record "$name" PASS 0 "$dt" "ok"
  elif [[ ($rc -eq 124 || $rc -eq 137) && ${OPTIONAL:-0} -eq 1 ]]; then
    record "$name" TIMEOUT "$rc" "$dt" "optional stage: no result within ${limit} s (not counted as a failure)"
  elif [[ $rc -eq 124 || $rc -eq 137 ]]; then
    record "$name" FAIL "$rc" "$dt" "timed out after ${limit} s"
  else
    record "$name" FAIL "$rc" "$dt" "exit status $rc"
  fi
}

# ---------------------------------------------------------------- env
echo "=== env: $(date -u +%FT%TZ) repo $REPO dry_run=$DRY"
command -v nvidia-smi >/dev/null && nvidia-smi -L
t0=$(date +%s)
need_install=0
if [[ $DRY -eq 1 ]]; then
  echo "dry run: using $PY as it is (never installs anything)"
elif ! $PY -c "import torch" 2>/dev/null; then
  echo "torch is not importable: installing the project"
  need_install=1
elif [[ $DRY -eq 0 ]] && ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "torch is CPU-only here: installing the project (its torch pin brings a CUDA build)"
  need_install=1
fi
if [[ $need_install -eq 1 ]]; then
  $PY -m pip install -q -e . || echo "pip install -e . failed (no network on the device machine?)"
fi
# run from this checkout, installed or not
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
SITE=$(mktemp -d /tmp/gpu_check_site.XXXX)
for mod in hydra omegaconf antlr4; do
  if ! $PY -c "import $mod" 2>/dev/null; then
    carried=$(ls -d "$REPO"/.venv/lib/python3*/site-packages/"$mod" 2>/dev/null | head -n 1)
    if [[ -n "$carried" ]]; then
      ln -s "$carried" "$SITE/$mod" && echo "using carried $carried"
    elif compgen -G "${WHEELS:-$REPO/.whl}/*.whl" >/dev/null; then
      $PY -m pip install -q --no-index --no-deps --no-compile --target "$SITE" "${WHEELS:-$REPO/.whl}"/*.whl
    fi
  fi
done
export PYTHONPATH="$PYTHONPATH:$SITE"
$PY - <<'EOF'
import sys, torch
print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.cuda.is_available()}",
      f"({torch.cuda.get_device_name()})" if torch.cuda.is_available() else "")
EOF
if $PY -c "import unrealnas.config, unrealnas.nas.supernet, h5py" 2>&1; then
  record env PASS 0 $(($(date +%s) - t0)) "unrealnas importable"
else
  record env FAIL 1 $(($(date +%s) - t0)) "unrealnas or a dependency is not importable (see above)"
fi
if [[ $DRY -eq 0 ]] && ! $PY -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  record cuda FAIL 1 0 "no CUDA device visible to torch"
fi

# ---------------------------------------------------------------- stages
if [[ $DRY -eq 1 ]]; then
  run_stage correctness 600 $PY tools/gpu_check.py --cpu-dry-run --out "$OUT"
  run_stage bench_search 300 $PY -m unrealnas bench search preset=smoke device=cpu threads=1 steps=1 warmup=1 \
    packed=1,5 json="$OUT/bench_search.json"
  run_stage bench_data 600 $PY -m unrealnas bench data preset=smoke device=cpu threads=1 quick=true images=512 \
    fractal=false json="$OUT/bench_data.json"
  record bench_compile SKIP 0 0 "not in --cpu-dry-run (torch.compile of the supernet takes minutes on CPU)"
else
  run_stage correctness 180 $PY tools/gpu_check.py --out "$OUT"
  run_stage bench_search 180 $PY -m unrealnas bench search preset=paper steps=10 warmup=3 packed=1,5 \
    json="$OUT/bench_search.json"
  run_stage bench_data 80 $PY -m unrealnas bench data quick=true json="$OUT/bench_data.json"
  # compiling the paper supernet may take minutes: give it what is left of the ~8 minute budget
  left=$((${GPU_CHECK_BUDGET_S:-520} - ($(date +%s) - START)))
  OPTIONAL=1 run_stage bench_compile $((left > 60 ? left : 60)) $PY -m unrealnas bench search preset=paper \
    methods=darts compile=true steps=20 warmup=3 packed=null json="$OUT/bench_search_compile.json"
fi

# ---------------------------------------------------------------- summary
TOTAL=$(($(date +%s) - START))
FAILED=0
for s in "${STAGES[@]}"; do [[ $s == *'"status": "FAIL"'* ]] && FAILED=$((FAILED + 1)); done
{
  printf '{"dry_run": %s, "total_s": %s, "failed": %s, "stages": [' "$([[ $DRY -eq 1 ]] && echo true || echo false)" \
    "$TOTAL" "$FAILED"
  (IFS=,; printf '%s' "${STAGES[*]}")
  printf ']}\n'
} >"$OUT/gpu_check.json"
echo "=== summary (${TOTAL} s), $OUT/gpu_check.json:"
for s in "${STAGES[@]}"; do echo "  $s"; done
if [[ $FAILED -eq 0 ]]; then echo "PASS gpu_check: all stages passed in ${TOTAL} s"; else echo "FAIL gpu_check: $FAILED stage(s) failed"; fi
rm -rf "$SITE"
exit $((FAILED > 0))
