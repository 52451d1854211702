#!/usr/bin/env bash
# The project's test command (what CI runs after tools/setup.sh):
#   1. ruff over the repo, and the import contracts (pyproject.toml [tool.importlinter]: layers, no circles);
#   2. the fast unit and integration tests (pytest's default selection: not slow, not slurm);
#   3. the SLURM integration tests against a real one-node cluster started by slurm/test-cluster.
# Pass extra pytest arguments through, e.g. `bash tools/test.sh -k store`.
# UNREALNAS_SKIP_SLURM=1 skips step 3 (machines without root or the Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python

.venv/bin/ruff check .
.venv/bin/lint-imports
"$PY" -m pytest -q "$@"

if [[ "${UNREALNAS_SKIP_SLURM:-0}" != 1 ]]; then
  started=0
  if ! timeout 5 sinfo >/dev/null 2>&1; then
    slurm/test-cluster/start.sh --dbd
    started=1
  fi
  trap '[[ $started == 1 ]] && slurm/test-cluster/stop.sh' EXIT
  "$PY" -m pytest -q -m "slurm and not slow" "$@"  # the big sweeps: -m "slurm and slow"
fi
