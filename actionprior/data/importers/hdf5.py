"""``actionprior data import hdf5 SRC.hdf5 --out data_shards/NAME``: a robomimic-layout HDF5 file to shards.

The layout (robomimic's dataset docs, https://robomimic.github.io/docs/datasets/overview.html; LIBERO uses
it too)::

    data                      attrs: env_args (JSON string), total; LIBERO: problem_info (JSON)
    data/demo_<i>/actions     [T, A]
    data/demo_<i>/states      [T, S]   flattened simulator states
    data/demo_<i>/obs/<key>   [T, ...] low-dim vectors or uint8 [T, H, W, 3] images
    mask/<filter>             demo names (bytes), e.g. mask/train, mask/valid

The state vector is the concatenation of ``--state-keys`` (obs keys, or ``states`` for the simulator
state); cameras are ``--cameras short=obs_key`` (default: every ``*_image`` obs key). ``--flip-images``
rotates frames by 180 degrees (LIBERO renders them upside down). The instruction comes from
``--instruction`` or the file's attributes (``language_instruction`` on the demo or on ``data``, or
LIBERO's ``problem_info``).
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from actionprior.data.images import MAX_FRAME_PIXELS, RESIZE_MODES, fit_image, image_record
from actionprior.data.importers.common import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SHARD_EPISODES,
    ImportFailure,
    Unit,
    camera_mapping,
    check_contiguous,
    import_record,
    make_episode,
    parse_episode_selection,
    plan_units,
)
from actionprior.data.importers.spec_guess import concat_names, import_spec, slug
from actionprior.data.schema import Episode
from actionprior.embodiments import EmbodimentSpec

DEMO = re.compile(r"^demo_(\d+)$")
DEFAULT_STATE_KEYS = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
KNOWN_NAMES = {
    "robot0_eef_pos": ["eef_x", "eef_y", "eef_z"],
    "robot0_eef_quat": ["eef_qx", "eef_qy", "eef_qz", "eef_qw"],
    "robot0_gripper_qpos": ["gripper_left", "gripper_right"],
}
OSC_ACTION_NAMES = ["dx", "dy", "dz", "droll", "dpitch", "dyaw", "gripper"]


def _attr_text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "SO":
        return _attr_text(value.item())
    return value if isinstance(value, str) else None


def _json_attr(group: h5py.Group, name: str, where: str) -> dict[str, Any]:
    text = _attr_text(group.attrs.get(name))
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImportFailure(f"{where}: attribute '{name}' is not valid JSON ({exc})") from None
    return value if isinstance(value, dict) else {}


def _instruction(f: h5py.File, demo: str, where: str) -> str | None:
    for group in (f["data"][demo], f["data"]):
        text = _attr_text(group.attrs.get("language_instruction"))
        if text:
            return text
    text = _json_attr(f["data"], "problem_info", where).get("language_instruction")
    return " ".join(text.split()) if isinstance(text, str) and text.strip() else None


@dataclass
class Hdf5Source:
    path: str
    demos: dict[int, str]  # episode index -> group name
    state_keys: tuple[str, ...]
    cameras: tuple[tuple[str, str], ...]
    embodiment: str
    fps: float
    instruction: str | None
    flip: bool
    image_size: int
    resize: str

    def load_unit(self, unit: Unit) -> list[Episode]:
        with h5py.File(self.path, "r") as f:
            return [self._episode(f, i) for i in unit.episodes]

    def _read(self, group: h5py.Group, name: str, where: str) -> np.ndarray:
        if name not in group or not isinstance(group[name], h5py.Dataset):
            raise ImportFailure(f"{where}: dataset '{group.name}/{name}' missing")
        return group[name][()]

    def _episode(self, f: h5py.File, index: int) -> Episode:
        demo = self.demos[index]
        where = f"{self.path}: {demo}"
        group = f["data"][demo]
        action = self._read(group, "actions", where).astype(np.float32)
        parts = []
        for key in self.state_keys:
            arr = (
                self._read(group, "states", where)
                if key == "states"
                else self._read(group["obs"], key, where)
            )
            parts.append(arr.reshape(len(arr), -1).astype(np.float32))
        lengths = {len(p) for p in parts}
        if len(lengths) > 1:
            raise ImportFailure(
                f"{where}: state keys {list(self.state_keys)} have different lengths {sorted(lengths)}"
            )
        state = np.concatenate(parts, axis=1)
        frames, source_hw = {}, {}
        for short, key in self.cameras:
            ds = group["obs"].get(key)
            if not isinstance(ds, h5py.Dataset) or ds.ndim != 4 or ds.shape[-1] != 3 or ds.dtype != np.uint8:
                raise ImportFailure(f"{where}: camera obs '{key}' must be a uint8 [T, H, W, 3] dataset")
            if ds.shape[1] * ds.shape[2] > MAX_FRAME_PIXELS:
                raise ImportFailure(f"{where}: camera obs '{key}' frames are too large {ds.shape[1:3]}")
            raw = ds[()]
            if self.flip:
                raw = raw[:, ::-1, ::-1]
            source_hw[short] = list(raw.shape[1:3])
            frames[short] = np.stack(
                [fit_image(np.ascontiguousarray(x), self.image_size, self.resize) for x in raw]
            )  # type: ignore[arg-type]
        instruction = self.instruction or _instruction(f, demo, where)
        if not instruction:
            raise ImportFailure(
                f"{where}: no language instruction in the file's attributes; pass --instruction"
            )
        return make_episode(
            key=f"{self.embodiment}_{index:06d}",
            where=where,
            embodiment=self.embodiment,
            instruction=instruction,
            state=state,
            action=action,
            control_rate_hz=self.fps,
            frames=frames,
            extra={
                "source": f"hdf5:{Path(self.path).name}",
                "source_format": "robomimic hdf5",
                "source_episode": index,
                "source_demo": demo,
                "image_size": self.image_size,
                "image_resize": self.resize,
                "image_flipped": self.flip,
                "source_image_hw": source_hw,
            },
        )


def plan(
    src: str | Path,
    *,
    state_keys: str | None = None,
    cameras: str | None = None,
    instruction: str | None = None,
    fps: float | None = None,
    flip_images: bool = False,
    filter_key: str | None = None,
    image_size: int = DEFAULT_IMAGE_SIZE,
    resize: str = "pad",
    episodes: str | None = None,
    embodiment: str | None = None,
    spec_path: str | Path | None = None,
    control_mode: str | None = None,
    gripper_state_dims: str | None = None,
    gripper_action_dims: str | None = None,
    shard_episodes: int = DEFAULT_SHARD_EPISODES,
) -> tuple[Hdf5Source, list[Unit], EmbodimentSpec, dict[str, Any]]:
    path = Path(src).resolve()
    if not path.is_file():
        raise ImportFailure(f"{path}: no such file")
    if image_size <= 0:
        raise ImportFailure(f"--image-size must be positive, got {image_size}")
    if resize not in RESIZE_MODES:
        raise ImportFailure(f"--resize must be one of {RESIZE_MODES}, got '{resize}'")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ImportFailure(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        if "data" not in f or not isinstance(f["data"], h5py.Group):
            raise ImportFailure(f"{path}: no 'data' group (not the robomimic layout)")
        demos: dict[int, str] = {}
        for name in f["data"]:
            m = DEMO.match(name)
            if m:
                demos[int(m.group(1))] = name
        if not demos:
            raise ImportFailure(f"{path}: 'data' holds no demo_<i> groups")
        check_contiguous(list(demos), f"{path}: data")
        env_args = _json_attr(f["data"], "env_args", f"{path}: data")
        available = sorted(demos)
        if filter_key:
            mask = f.get(f"mask/{filter_key}")
            if not isinstance(mask, h5py.Dataset):
                have = sorted(f["mask"]) if isinstance(f.get("mask"), h5py.Group) else []
                raise ImportFailure(f"{path}: no filter 'mask/{filter_key}' (filters: {have})")
            names = {_attr_text(n) for n in mask[()]}
            unknown = sorted(n for n in names if n not in demos.values())
            if unknown:
                raise ImportFailure(f"{path}: mask/{filter_key} names unknown demos {unknown[:5]}")
            available = [i for i in available if demos[i] in names]
        selected = parse_episode_selection(episodes, available, f"{path}: data")
        first = f["data"][demos[selected[0]] if selected else demos[available[0]]]
        if "actions" not in first:
            raise ImportFailure(f"{path}: {first.name}: dataset 'actions' missing")
        obs = first.get("obs")
        obs_keys = sorted(obs) if isinstance(obs, h5py.Group) else []
        if state_keys:
            keys = tuple(k.strip() for k in state_keys.split(",") if k.strip())
        elif all(k in obs_keys for k in DEFAULT_STATE_KEYS):
            keys = DEFAULT_STATE_KEYS
        else:
            raise ImportFailure(
                f"{path}: choose the state vector with --state-keys (obs keys: {obs_keys}, or 'states')"
            )
        dims, parts = [], []
        for key in keys:
            ds = (
                first.get("states")
                if key == "states"
                else (obs.get(key) if isinstance(obs, h5py.Group) else None)
            )
            if not isinstance(ds, h5py.Dataset):
                raise ImportFailure(f"{path}: {first.name}: obs key '{key}' missing (obs keys: {obs_keys})")
            dim = int(np.prod(ds.shape[1:]))
            dims.append(dim)
            parts.append(
                (
                    key,
                    KNOWN_NAMES.get(key)
                    if len(KNOWN_NAMES.get(key, [])) == dim
                    else [f"{key}_{i}" for i in range(dim)],
                )
            )
        action_dim = int(np.prod(first["actions"].shape[1:]))
        default = {k: k.removesuffix("_image") for k in obs_keys if k.endswith("_image")}
        mapping = camera_mapping(cameras, obs_keys, default, f"{path}: {first.name}", "obs key")
        native: dict[str, tuple[int, int]] = {}
        for short, key in mapping:
            if len(obs[key].shape) == 4:  # [T, H, W, 3]: checked per episode when it is read
                native[short] = (int(obs[key].shape[1]), int(obs[key].shape[2]))
        rate = fps or (env_args.get("env_kwargs") or {}).get("control_freq")
        if not isinstance(rate, (int, float)) or rate <= 0:
            raise ImportFailure(f"{path}: no control_freq in env_args; pass --fps")
        controller = json.dumps(env_args.get("env_kwargs", {}).get("controller_configs", {}))
        osc = "OSC_POSE" in controller
        action_names = (
            OSC_ACTION_NAMES if osc and action_dim == 7 else [f"action_{i}" for i in range(action_dim)]
        )
        if osc and action_dim == 7 and gripper_action_dims is None:
            gripper_action_dims = "6"
        env_name = str(env_args.get("env_name") or "")
        if instruction is None:
            for i in selected:
                if not _instruction(f, demos[i], f"{path}: {demos[i]}"):
                    raise ImportFailure(
                        f"{path}: {demos[i]}: no language instruction in the file's attributes; pass --instruction"
                    )
    name = embodiment or slug(f"hdf5_{env_name or path.stem}")
    image = image_record(image_size, resize, native)  # type: ignore[arg-type]
    shorts = [s for s, _ in mapping]
    sim = {
        "source": "robomimic_hdf5",
        "image": image,
        "image_flipped": flip_images,
        "camera_obs": dict(mapping),
        "state_keys": list(keys),
        "env_args": env_args,
    }
    spec = import_spec(
        spec_path,
        embodiment,
        name=name,
        state_names=concat_names(parts),
        action_names=action_names,
        control_rate_hz=float(rate),
        cameras=shorts,
        description=f"imported from robomimic-layout HDF5 {path.name} (env {env_name or 'unknown'})",
        sim=sim,
        control_mode=control_mode or ("osc_pose_delta" if osc else "unspecified"),
        gripper_state=gripper_state_dims,
        gripper_action=gripper_action_dims,
    )
    source = Hdf5Source(
        path=str(path),
        demos={i: demos[i] for i in selected},
        state_keys=keys,
        cameras=tuple(mapping),
        embodiment=spec.name,
        fps=float(rate),
        instruction=instruction,
        flip=flip_images,
        image_size=image_size,
        resize=resize,
    )
    with h5py.File(path, "r") as f:
        lengths = [int(f["data"][demos[i]]["actions"].shape[0]) for i in selected]
    units = plan_units(spec.name, selected, lengths, shard_episodes)
    record = import_record(
        "robomimic hdf5",
        str(path),
        selected,
        shard_episodes,
        image,
        dict(mapping),
        spec,
        filter=filter_key,
        flip_images=flip_images,
        state_keys=list(keys),
        instruction=instruction,
    )
    return source, units, spec, record


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", type=Path, help="robomimic-layout .hdf5 file")
    p.add_argument(
        "--state-keys",
        default=None,
        help=f"obs keys concatenated into the state ('states' = simulator state); default {','.join(DEFAULT_STATE_KEYS)}",
    )
    p.add_argument("--cameras", default=None, help="short=obs_key,... (default: every *_image obs key)")
    p.add_argument(
        "--instruction", default=None, help="instruction of every episode (default: from attributes)"
    )
    p.add_argument("--fps", type=float, default=None, help="control rate (default: env_args control_freq)")
    p.add_argument("--flip-images", action="store_true", help="rotate frames 180 degrees (LIBERO)")
    p.add_argument("--filter", dest="filter_key", default=None, help="import only the demos of mask/<FILTER>")


def run_from_args(args: argparse.Namespace) -> tuple[Hdf5Source, list[Unit], EmbodimentSpec, dict[str, Any]]:
    return plan(
        args.src,
        state_keys=args.state_keys,
        cameras=args.cameras,
        instruction=args.instruction,
        fps=args.fps,
        flip_images=args.flip_images,
        filter_key=args.filter_key,
        image_size=args.image_size,
        resize=args.resize,
        episodes=args.episodes,
        embodiment=args.embodiment,
        spec_path=args.spec,
        control_mode=args.control_mode,
        gripper_state_dims=args.gripper_state_dims,
        gripper_action_dims=args.gripper_action_dims,
        shard_episodes=args.shard_episodes,
    )
