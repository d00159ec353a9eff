"""Packaging: configs/ ships in the wheel, and a non-editable install works from any directory.

The fast tests check the resolver (actionprior/resources.py), the launchers and the demo from a directory
that is not the checkout. The slow one builds the wheel, installs it into a fresh virtual environment that
cannot see this checkout, and collects one demonstration and trains two Stage 1 steps from elsewhere.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
import torch

from actionprior import cli, demo
from actionprior.resources import (
    ResourceError,
    config_path,
    configs_dir,
    default_config_arg,
    embodiment_dir,
    expand_config_args,
    suite_dir,
)
from lightning_apps.command import LaunchError, TrainCommand

REPO = Path(__file__).resolve().parents[1]
# What the build reads; copied so that building never leaves build/ or *.egg-info in the checkout and a
# stale build/lib cannot leak deleted files into the wheel.
BUILD_INPUTS = ("pyproject.toml", "README.md", "actionprior", "lightning_apps", "configs")


def _folders(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_dir() and p.name != "__pycache__"]


def test_pyproject_lists_every_package_and_config_folder() -> None:
    tomllib = pytest.importorskip("tomllib")
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    expected = {"actionprior", "lightning_apps", "actionprior.configs"}
    for top in ("actionprior", "lightning_apps"):
        expected |= {".".join(p.relative_to(REPO).parts) for p in _folders(REPO / top)}
    expected |= {
        "actionprior.configs." + ".".join(p.relative_to(REPO / "configs").parts)
        for p in _folders(REPO / "configs")
    }
    missing = sorted(expected - listed)
    assert not missing, (
        f"add {missing} to [tool.setuptools] packages in pyproject.toml, or the wheel lacks them"
    )
    assert not sorted(listed - expected), "pyproject.toml lists packages that no longer exist"


def test_a_checkout_reads_its_own_configs_folder() -> None:
    assert configs_dir() == REPO / "configs"
    assert embodiment_dir() == REPO / "configs" / "embodiments"
    assert suite_dir() == REPO / "configs" / "suites"
    assert config_path("cluster/ddp.yaml") == REPO / "configs" / "cluster" / "ddp.yaml"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("stage3.yaml", r"no shipped config 'stage3.yaml'.*'stage1.yaml', 'stage2.yaml'"),
        ("cluster/nccl.yaml", r"no shipped config 'cluster/nccl.yaml'.*'cluster/ddp.yaml'"),
        ("../pyproject.toml", "not a config name"),
        ("/etc/passwd", "not a config name"),
    ],
)
def test_an_unknown_config_name_lists_what_exists(name: str, message: str) -> None:
    with pytest.raises(ResourceError, match=message):
        config_path(name)


def test_only_actionprior_prefixed_config_values_are_rewritten() -> None:
    argv = [
        "fit",
        "-c",
        "actionprior:stage1.yaml",
        "--config=actionprior:cluster/ddp.yaml",
        "-c",
        "stage1.yaml",
    ]
    assert expand_config_args(argv) == [
        "fit", "-c", str(REPO / "configs" / "stage1.yaml"), f"--config={REPO / 'configs' / 'cluster' / 'ddp.yaml'}",
        "-c", "stage1.yaml",  # a user's path stays relative to the working directory
    ]  # fmt: skip


def test_the_cli_names_an_unknown_shipped_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["fit", "-c", "actionprior:stage9.yaml"]) == 2
    assert "no shipped config 'stage9.yaml'" in capsys.readouterr().err


def test_default_configs_prefer_the_working_directory_then_the_package(tmp_path: Path) -> None:
    assert default_config_arg("stage1.yaml", cwd=REPO) == "configs/stage1.yaml"
    assert default_config_arg("stage1.yaml", cwd=tmp_path) == "actionprior:stage1.yaml"
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "stage1.yaml").write_text("seed_everything: 1\n")  # the user's own copy
    assert default_config_arg("stage1.yaml", cwd=tmp_path) == "configs/stage1.yaml"


def test_launchers_work_outside_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cmd = TrainCommand(stage=1, gpus=8, strategy="fsdp", python="python")
    assert cmd.cli_args()[:5] == [
        "fit",
        "-c",
        "actionprior:stage1.yaml",
        "-c",
        "actionprior:cluster/fsdp.yaml",
    ]
    cmd.check_files_exist()  # the shipped files are found without a configs/ here
    # The CUDA-only check reads a shipped config named in ARGS, too.
    with pytest.raises(LaunchError, match="needs CUDA GPUs but GPUS=0"):
        TrainCommand(stage=1, gpus=0, extra_args=("-c", "actionprior:cluster/deepspeed_zero3.yaml"))
    with pytest.raises(LaunchError, match=r"no shipped config 'cluster/nccl.yaml'.*'cluster/ddp.yaml'"):
        TrainCommand(stage=1, gpus=8, strategy="nccl").cli_args()
    with pytest.raises(LaunchError, match="config file.*not found: configs/mine.yaml"):
        TrainCommand(stage=1, extra_args=("-c", "configs/mine.yaml")).check_files_exist()


def test_demo_outside_the_checkout_uses_the_shipped_stage_configs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    calls: list[list[str]] = []
    monkeypatch.setattr(demo, "_run", calls.append)
    assert demo.cli_main(["--runs", "runs", "--data", "data"]) == 0
    stage1, stage2 = (c[c.index("actionprior.cli") + 1 :] for c in calls[1:3])
    assert stage1[:3] == ["fit", "-c", "actionprior:stage1.yaml"]
    assert stage2[:3] == ["fit", "-c", "actionprior:stage2.yaml"]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, (
        f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    )
    return out.stdout


@pytest.mark.slow
@pytest.mark.sim
def test_wheel_in_a_fresh_venv_collects_and_trains_from_another_directory(tmp_path: Path) -> None:
    # The child processes must not see this checkout: no PYTHONPATH, and a working directory elsewhere.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1", MUJOCO_GL="egl", PYOPENGL_PLATFORM="egl")
    src, dist, venv, work = tmp_path / "src", tmp_path / "dist", tmp_path / "venv", tmp_path / "work"
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(REPO / name, src / name)

    # Offline: no build isolation (setuptools comes from this environment) and no index.
    pip = [sys.executable, "-m", "pip"]
    _run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(dist), str(src)],
         tmp_path, env)  # fmt: skip
    (wheel,) = dist.glob("actionprior-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (
        "actionprior/configs/stage1.yaml",
        "actionprior/configs/suites/sim-default.yaml",
        "actionprior/configs/embodiments/metaworld_sawyer.yaml",
        "actionprior/configs/cluster/ddp.yaml",
        "lightning_apps/templates/train.sbatch",
    ):
        assert shipped in names, f"{shipped} is not in {wheel.name}"

    # A venv without pip whose .pth appends this environment's site-packages: torch and the simulators are
    # importable without reinstalling them. A path in a .pth is not itself scanned for .pth files, so this
    # environment's editable install (a .pth import hook) stays inactive in the new venv.
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = str(venv / "bin" / "python")
    site = Path(
        _run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env
        ).strip()
    )
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "_actionprior_test_deps.pth").write_text("\n".join(ours) + "\n")
    # --ignore-installed: never uninstall the actionprior of this environment (visible through the .pth).
    _run([*pip, "--python", python, "install", "--no-deps", "--no-index", "--ignore-installed", str(wheel)],
         tmp_path, env)  # fmt: skip

    work.mkdir()
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    code = (
        "import json, actionprior, actionprior.resources as r; "
        "print(json.dumps([actionprior.__file__, str(r.config_path('stage1.yaml')), str(r.embodiment_dir())]))"
    )
    for path in json.loads(_run([python, "-c", code], work, env)):
        assert Path(path).is_relative_to(site), f"{path} is not from the installed wheel in {site}"

    _run(["actionprior", "data", "collect", "--suite", "sim-default", "--only", "metaworld_sawyer/drawer-open",
          "--episodes-per-task", "1", "--workers", "0", "--image-size", "32", "--out", "data"], work, env)  # fmt: skip
    manifest = json.loads((work / "data" / "manifest.json").read_text())
    assert manifest["num_episodes"] == 1 and manifest["num_transitions"] > 10

    tiny = [
        "--data.datasets=[{path: data}]", "--data.val_fraction=0",  # one episode: nothing to hold out
        "--data.chunk_len=4", "--data.history_len=2", "--data.batch_size=4", "--data.batches_per_epoch=2",
        "--data.shuffle_buffer=8", "--model.init_args.prior.width=32", "--model.init_args.prior.depth=1",
        "--model.init_args.prior.heads=2", "--model.init_args.prior.latent_dim=8", "--model.init_args.warmup_steps=1",
        "--trainer.max_steps=2", "--trainer.default_root_dir=runs", "--trainer.logger.init_args.save_dir=runs",
        "--trainer.enable_progress_bar=false",
    ]  # fmt: skip
    _run(["actionprior", "fit", "-c", "actionprior:stage1.yaml", *tiny], work, env)
    assert torch.load(work / "runs" / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    # The launcher, run here, names the shipped stage config rather than a configs/ this directory lacks.
    line = _run([python, "-m", "lightning_apps.launch", "--stage", "1", "--dry-run", "--", *tiny], work, env)
    assert " -m actionprior.cli fit -c actionprior:stage1.yaml " in line
