#!/usr/bin/env bash
# The peer environment: LeRobot 0.4.4 (its ACT and Diffusion Policy) in a virtualenv of its own, apart from
# actionprior's (which pins torch 2.13.0, outside LeRobot's torch<2.11).
#
#   bash benchmarks/peers/setup_lerobot.sh [VENV]      # default: benchmarks/peers/.venv-lerobot (git-ignored)
#
# What goes in:
# - lerobot==0.4.4 with its whole dependency list (its modules import diffusers, pyserial, ... even for ACT);
# - torch 2.9.1 / torchvision 0.24.1 (lerobot 0.4.4 asks torch<2.11, torchvision<0.26; on x86_64 PyPI's
#   builds are CUDA builds, which run on the CPU too) and torchcodec 0.9 (the release built for torch 2.9;
#   pip would otherwise take 0.10, built for torch 2.10);
# - actionprior itself, `--no-deps` and editable, with only numpy, msgpack, websockets and pyyaml: enough for
#   our wire protocol and server (actionprior/inference/{protocol,server,base,observation}.py) that
#   benchmarks/peers/lerobot_server.py uses, without our torch pin.
# Takes a few GB of downloads; PYTHON=... picks the interpreter (default python3, >= 3.10).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
venv=${1:-"$repo/benchmarks/peers/.venv-lerobot"}
python=${PYTHON:-python3}

if [[ -e "$venv" && ! -x "$venv/bin/python" ]]; then
  echo "setup_lerobot.sh: $venv exists and is not a virtualenv; remove it or name another folder" >&2
  exit 2
fi
start=$(date +%s)
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check)

# One resolve for torch and lerobot together, so that nothing upgrades torch past the pinned release.
"${pip[@]}" "lerobot==0.4.4" "torch==2.9.1" "torchvision==0.24.1" "torchcodec==0.9.*"
"${pip[@]}" --no-deps -e "$repo"
# pip then lists actionprior's unmet requirements (torch==2.13.0, lightning, numpy<2, ...) as "dependency
# conflicts": expected, they are the ones this environment leaves out on purpose.
"${pip[@]}" numpy msgpack websockets pyyaml

# Proof that both sides import: LeRobot's ACT and DP with their processors, and our protocol and server.
"$venv/bin/python" - <<'PY'
import importlib

import lerobot
import torch

for name in (
    "lerobot.policies.act.modeling_act",
    "lerobot.policies.diffusion.modeling_diffusion",
    "lerobot.policies.factory",
    "lerobot.scripts.lerobot_train",
    "actionprior.inference.protocol",
    "actionprior.inference.server",
    "actionprior.inference.base",
    "actionprior.inference.observation",
    "actionprior.embodiments",
):
    importlib.import_module(name)
print(f"lerobot {lerobot.__version__}, torch {torch.__version__}: ACT, Diffusion Policy and actionprior's server import")
PY
echo "setup_lerobot.sh: $venv ready in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1)"
