#!/usr/bin/env bash
# Build the pure-Python wheels the GPU image lacks into .whl/ (git-ignored), for the device tool to carry.
#
# usage (from anywhere, on a machine with the package registry):  bash tools/gpu_wheels.sh
#
# The lent GPU machine has torch, numpy, h5py, scipy, scikit-learn, matplotlib, tqdm, tensorboard,
# pytest, PyYAML, packaging but not hydra-core, omegaconf and antlr4-python3-runtime (omegaconf's
# parser), and no network (docs/benchmarks.md, "On a lent GPU"). tools/gpu_check.sh installs these
# wheels there with `pip install --no-index --no-deps --target`. submitit is not needed: only
# unrealnas.launch.runner imports it at module level, and nothing the check runs imports that.
#
# Versions: those installed in the development venv ($PYTHON, else .venv/bin/python of this checkout,
# else /work/main/.venv/bin/python, else python3), so the GPU runs what the tests here ran.
# Idempotent: a wheel already in .whl/ with the wanted version is kept; wheels of other versions of
# the same package are removed. antlr4-python3-runtime 4.9.3 is a source archive on the registry;
# `pip wheel --no-deps` builds its py3-none-any wheel. Every wheel must be py3-none-any (checked).
# Also writes .whl/COMMIT (HEAD, clean/dirty): run it right before the device call.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${WHEELS:-$REPO/.whl}
if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x "$REPO/.venv/bin/python" ]]; then PY=$REPO/.venv/bin/python
elif [[ -x /work/main/.venv/bin/python ]]; then PY=/work/main/.venv/bin/python
else PY=python3
fi
PACKAGES=(hydra-core omegaconf antlr4-python3-runtime)
mkdir -p "$DEST"

for pkg in "${PACKAGES[@]}"; do
  version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$pkg")
  stem=${pkg//-/_}  # wheel file names use underscores
  have=$(compgen -G "$DEST/${stem}-${version}-py3-none-any.whl" || true)
  for old in "$DEST/${stem}"-*.whl; do  # other versions of the same package
    if [[ -e "$old" && "$old" != "$have" ]]; then rm -v "$old"; fi
  done
  if [[ -n "$have" ]]; then
    echo "have $(basename "$have")"
    continue
  fi
  echo "building $pkg==$version"
  "$PY" -m pip wheel --quiet --no-deps --wheel-dir "$DEST" "$pkg==$version"
done

# The device tool copies the working tree without .git: record the commit for the report (gpu_report.py).
if sha=$(git -C "$REPO" rev-parse HEAD 2>/dev/null); then
  dirty=$(git -C "$REPO" status --porcelain --untracked-files=no | grep -q . && echo dirty || echo clean)
  echo "$sha $dirty $(date -u +%FT%TZ)" >"$DEST/COMMIT"
fi

bad=0
for w in "$DEST"/*.whl; do
  if [[ $w != *-py3-none-any.whl ]]; then echo "not a pure-Python wheel: $w" >&2; bad=1; fi
done
ls -l "$DEST"
echo "carry [\".whl\"] with the device tool; tools/gpu_check.sh installs these (docs/benchmarks.md)"
exit $bad
