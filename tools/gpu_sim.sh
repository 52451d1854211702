#!/usr/bin/env bash
# Simulate the lent GPU machine's environment here and run `tools/gpu_check.sh --cpu-dry-run` in it.
#
# usage: bash tools/gpu_sim.sh [SIM_DIR]     (default /tmp/gpu_sim; removed and rebuilt each time)
#
# What it builds (docs/benchmarks.md, "Simulating the image"):
#   SIM_DIR/venv  a venv on the dev venv's base Python whose site-packages holds one .pth naming
#                 SIM_DIR/pkgs: symlinks to every package of the dev venv ($VENV, else .venv of the
#                 checkout, else /work/main/.venv) EXCEPT what the image lacks: hydra(-core),
#                 omegaconf, antlr4, submitit, graphviz, ffcv, pytorch-pfn-extras and unrealnas
#                 itself (its editable finder). torch, numpy, scipy, pytest, ... are seen; the rest not.
#   SIM_DIR/repo  a clean `git clone` of HEAD (commit first: uncommitted changes are not in it), its
#                 .git removed as the device tool's copy has none, plus the .whl folder the device call
#                 carries (built with tools/gpu_wheels.sh when missing).
# Then, with PIP_NO_INDEX=1 and no pip configuration (no network, as there), no PYTHON, PYTHONPATH
# or OUT, and SIM_DIR/venv/bin first on PATH (so `python3` is the simulated one, as on the image):
#   bash tools/gpu_check.sh --cpu-dry-run SIM_DIR/out
# Exit status: the check's. The Python is 3.11 here and 3.12 there; the wheels are py3-none-any.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SIM=${1:-/tmp/gpu_sim}
if [[ -n "${VENV:-}" ]]; then SRC=$VENV
elif [[ -x "$REPO/.venv/bin/python" ]]; then SRC=$REPO/.venv
else SRC=/work/main/.venv
fi
LACKING='^(hydra|hydra_core|omegaconf|antlr4|antlr4_python3_runtime|submitit|graphviz|ffcv|pytorch_pfn_extras|ppe|unrealnas|__editable__.*|_*editable_*.*)([-.].*)?$'

[[ "$SIM" == /tmp/* ]] || { echo "SIM_DIR must be under /tmp (it is removed first): $SIM" >&2; exit 2; }
rm -rf "$SIM"
mkdir -p "$SIM/pkgs"
t0=$(date +%s)

BASE=$("$SRC/bin/python" -c "import sys; print(sys._base_executable)")
"$BASE" -m venv "$SIM/venv"
SITE_SRC=$("$SRC/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
SITE_SIM=$("$SIM/venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
skipped=()
for p in "$SITE_SRC"/*; do
  name=$(basename "$p")
  case $name in *.pth|pip|pip-*|setuptools|setuptools-*|_distutils_hack|__pycache__) continue ;; esac
  if [[ $name =~ $LACKING ]]; then skipped+=("$name"); continue; fi
  ln -s "$p" "$SIM/pkgs/$name"
done
echo "$SIM/pkgs" >"$SITE_SIM/gpu_image.pth"
echo "simulated image: $(ls "$SIM/pkgs" | wc -l) entries linked from $SITE_SRC; left out: ${skipped[*]}"

# the image has torch & co. and lacks hydra & co.: check before running anything
cd / && "$SIM/venv/bin/python" - <<'EOF'  # from / : the checkout on sys.path would hide a leak
import importlib.util, sys
import torch, numpy, scipy, h5py, sklearn, matplotlib, tqdm, yaml, pytest  # noqa: F401
missing = [m for m in ("hydra", "omegaconf", "antlr4", "submitit", "graphviz", "unrealnas")
           if importlib.util.find_spec(m) is not None]
if missing:
    sys.exit(f"the simulated image must not see {missing}")
print(f"simulated image ok: python {sys.version.split()[0]}, torch {torch.__version__}; no hydra/omegaconf/antlr4/"
      "submitit/graphviz/unrealnas")
EOF

git clone -q "$REPO" "$SIM/repo"
echo "clone of $(git -C "$SIM/repo" rev-parse HEAD)$(git -C "$REPO" status --porcelain --untracked-files=no | grep -q . \
  && echo ' (the checkout has uncommitted changes: not in the clone)')"
if ! compgen -G "$REPO/.whl/*.whl" >/dev/null; then bash "$REPO/tools/gpu_wheels.sh"; fi
cp -r "$REPO/.whl" "$SIM/repo/.whl"
echo "$(git -C "$SIM/repo" rev-parse HEAD) clean $(date -u +%FT%TZ)" >"$SIM/repo/.whl/COMMIT"  # the clone's
rm -rf "$SIM/repo/.git"
echo "set-up: $(($(date +%s) - t0)) s"

t1=$(date +%s)
set +e
(cd "$SIM/repo" && env -u PYTHON -u PYTHONPATH -u OUT -u VIRTUAL_ENV PIP_NO_INDEX=1 PIP_CONFIG_FILE=/dev/null \
  PATH="$SIM/venv/bin:$PATH" OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} bash tools/gpu_check.sh --cpu-dry-run "$SIM/out")
rc=$?
echo "gpu_sim: tools/gpu_check.sh --cpu-dry-run exit status $rc in $(($(date +%s) - t1)) s; report $SIM/out/gpu_check.md"
exit $rc
