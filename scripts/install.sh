#!/usr/bin/env bash
# Creates the virtual environment and installs actionprior with its simulator stack.
# Idempotent: re-running only installs what is missing.
set -euo pipefail
VENV=${1:-.venv}

# Headless MuJoCo rendering through EGL (MUJOCO_GL=egl) needs these Debian packages (Mesa for CPU-only hosts).
RENDER_PKGS="libegl1 libgl1 libopengl0 libegl-mesa0 libgl1-mesa-dri libglapi-mesa"
missing=""
for p in $RENDER_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    echo "installing rendering libraries:$missing"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
  else
    echo "warning: missing rendering libraries:$missing (install them with apt-get as root)" >&2
  fi
fi

PYTHON=${PYTHON:-python3}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch is pinned with == in pyproject.toml: a looser range would pull a multi-GB CUDA build.
# study: matplotlib for the study's plots; cloud: lightning-sdk, whose own CLI parser a launcher test uses.
"$VENV/bin/python" -m pip install -q -e ".[sim,dev,study,cloud]"
"$VENV/bin/python" -c "import torch, lightning, transformers, webdataset, metaworld, actionprior.sim.robosuite_env, robosuite; print('actionprior environment ready: torch', torch.__version__)"
