#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh Debian 12 machine for unrealnas:
#   - Debian packages: FFCV's build deps (libturbojpeg0-dev, libopencv-dev, pkg-config), graphviz
#     (the dot program that draws the cells; without it a matplotlib drawing is made) and a
#     one-node SLURM for the integration tests (slurm-wlm, munge, slurmdbd, mariadb-server);
#   - a virtual environment in .venv with the package, its ffcv extra and the dev tools.
# Re-running it installs only what is missing. Set UNREALNAS_SKIP_APT=1 to skip the apt step
# (e.g. without root on a cluster login node): the ffcv extra, which builds against those
# packages, is skipped too; everything but FFCV loading works without it.
# Versions: pyproject.toml has ranges; constraints.txt pins this machine's torch/torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(libturbojpeg0-dev libopencv-dev pkg-config graphviz slurm-wlm munge slurmdbd mariadb-server)
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [[ "${UNREALNAS_SKIP_APT:-0}" != 1 ]]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    SUDO=""
    [[ $(id -u) -ne 0 ]] && SUDO="sudo"
    echo "setup: installing Debian packages: ${missing[*]}"
    $SUDO apt-get update -qq
    # policy-rc.d-style failures to start services are harmless here: start.sh starts what tests need
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
# torch/torchvision: pyproject.toml has ranges, constraints.txt this machine's exact versions (pip
# takes them from the local wheel store where there is one). The ffcv extra needs the apt packages.
if [[ "${UNREALNAS_SKIP_APT:-0}" == 1 ]]; then
  EXTRAS=dev; IMPORTS="unrealnas, torch, torchvision, h5py, hydra, submitit"
else
  EXTRAS=ffcv,dev; IMPORTS="unrealnas, torch, torchvision, h5py, hydra, submitit, ffcv"
fi
stamp="$VENV/.unrealnas-installed"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" || constraints.txt -nt "$stamp" ]] \
    || ! "$VENV/bin/python" -c "import $IMPORTS" 2>/dev/null; then
  echo "setup: installing unrealnas[$EXTRAS] into $VENV (a fresh venv takes ~2-3 minutes)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[$EXTRAS]" 2>&1 \
    | grep -v "is ignored" || true
  "$VENV/bin/python" -c "import $IMPORTS"
  touch "$stamp"
fi
echo "setup: ok ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
