"""Shard files of a dataset: which to read for a view and split, and their raw and decoded samples.

Shards are plain WebDataset tars (written by ``wds.TarWriter``) streamed by :mod:`actionprior.data.tario`,
which groups members into samples with WebDataset's key rule but parses headers ~10x faster than
``tarfile``. Fields are decoded with :mod:`actionprior.data.schema` (``allow_pickle=False``); WebDataset's
``.decode()`` is never used because its default handlers can unpickle. Shard names come from the
manifest (untrusted) and are combined with the user's dataset path only by :mod:`actionprior.data.location`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from actionprior.data.location import contained, file_url, is_remote, open_local
from actionprior.data.reader import load_manifest
from actionprior.data.schema import (
    DataError,
    Episode,
    check_file_name,
    decode_png,
    decode_trajectory,
    frame_field,
    show,
)
from actionprior.data.splits import Split, in_split
from actionprior.data.tario import iter_tar_samples
from actionprior.embodiments import EmbodimentRegistry

View = Literal["trajectory", "observation"]


@dataclass(frozen=True)
class ShardSource:
    """One dataset as a stream sees it: the shard files of one view that hold episodes of one split."""

    directory: str
    weight: float
    urls: tuple[str, ...]
    num_episodes: int
    num_transitions: int


def shard_source(
    directory: str | Path,
    view: View,
    split: Split,
    val_fraction: float,
    weight: float = 1.0,
    manifest: dict[str, Any] | None = None,
) -> ShardSource:
    """The shards of one view holding episodes of ``split``. ``directory`` is the dataset path as the user
    wrote it: a local directory, or a ``{name}`` template / URL base (see :mod:`actionprior.data.location`).
    """
    location = directory if is_remote(directory) else Path(directory)
    manifest = manifest if manifest is not None else load_manifest(directory)
    field = "traj" if view == "trajectory" else "obs"
    urls, episodes, transitions = [], 0, 0
    for shard in manifest["shards"]:
        chosen = [e for e in shard["episodes"] if in_split(e["key"], split, val_fraction)]
        if chosen:
            name = check_file_name(shard[field], f"{directory}/manifest.json: shard '{field}'")
            if not is_remote(location) and not contained(location, name):
                raise DataError(
                    f"{directory}/{name}: resolves outside the dataset folder (a symlink); refusing to read it"
                )
            urls.append(file_url(location, name))
            episodes += len(chosen)
            transitions += sum(int(e["length"]) for e in chosen)
    return ShardSource(str(directory), float(weight), tuple(urls), episodes, transitions)


def _open_shard(url: str) -> BinaryIO:
    # One place where shard files are opened (tests record the URLs here). URLs are built by shard_source
    # from a validated shard name: a local path is opened with open() (never a URL opener, so no name can
    # become a command); a user-written template or URL base goes through WebDataset's gopen.
    if is_remote(url):
        import webdataset as wds

        return wds.gopen(url, "rb")
    return open_local(url)


def iter_shard(url: str) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__`` plus bytes per field) of one tar, streamed, with a clear error for broken
    tars (the reader holds at most one sample; see :mod:`actionprior.data.limits`)."""
    try:
        stream = _open_shard(url)
    except OSError as exc:
        raise DataError(f"{url}: cannot read shard ({exc.strerror or show(str(exc), 200)})") from None
    failed = True
    try:
        yield from iter_tar_samples(stream, url, verify=False)
        failed = False
    except OSError as exc:
        raise DataError(f"{url}: cannot read shard ({exc.strerror or show(str(exc), 200)})") from None
    finally:
        # A pipe reports its command's exit status on close. After a refusal (or a consumer that stopped
        # early) that status would only hide the real message, so it counts only after a clean read.
        try:
            stream.close()
        except Exception as exc:
            if not failed:
                raise DataError(f"{url}: the stream failed on close ({show(str(exc), 200)})") from None


def decode_sample(
    sample: dict[str, Any], registry: EmbodimentRegistry
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Trajectory fields of a raw sample, validated against the embodiment spec."""
    where = f"{sample.get('__url__', '?')}:{sample['__key__']}"
    state, action, meta = decode_trajectory(sample, where)
    name = meta["embodiment"]
    if name not in registry:
        raise DataError(f"{where}: embodiment {show(name)} is not in the registry {registry.names}")
    spec = registry[name]
    if state.shape[1] != spec.state_dim or action.shape[1] != spec.action_dim:
        raise DataError(
            f"{where}: state/action dims {state.shape[1]}/{action.shape[1]} do not match "
            f"embodiment '{name}' ({spec.state_dim}/{spec.action_dim})"
        )
    return state, action, meta


def iter_episodes(
    directory: str | Path,
    registry: EmbodimentRegistry,
    split: Split = "all",
    val_fraction: float = 0.0,
    with_frames: bool = False,
    embodiment: str | None = None,
) -> Iterator[Episode]:
    """Whole episodes of one split, in manifest order, unnormalised (e.g. for open-loop evaluation).

    ``embodiment``: only that embodiment's episodes; shards whose manifest entries list none are not read,
    and the frames of other embodiments' episodes are not decoded.
    """
    manifest = load_manifest(directory)
    if embodiment is not None:
        shards = [s for s in manifest["shards"] if any(e["embodiment"] == embodiment for e in s["episodes"])]
        manifest = {**manifest, "shards": shards}
    view: View = "observation" if with_frames else "trajectory"
    source = shard_source(directory, view, split, val_fraction, manifest=manifest)
    for url in source.urls:
        for sample in iter_shard(url):
            if not in_split(sample["__key__"], split, val_fraction):
                continue
            state, action, meta = decode_sample(sample, registry)
            if embodiment is not None and meta["embodiment"] != embodiment:
                continue
            frames = {}
            if with_frames:
                where = f"{url}:{sample['__key__']}"
                for cam in meta.get("cameras", []):
                    stack = [frame_at(sample, cam, t, where) for t in range(len(state))]
                    if len({f.shape for f in stack}) > 1:
                        raise DataError(f"{where}: camera '{cam}' has frames of different sizes")
                    frames[cam] = np.stack(stack)
            extra = {k: v for k, v in meta.items() if k not in Episode.__dataclass_fields__}
            for k in ("length", "cameras", "schema_version"):
                extra.pop(k, None)
            yield Episode(
                key=sample["__key__"],
                embodiment=meta["embodiment"],
                task=meta["task"],
                instruction=meta["instruction"],
                state=state,
                action=action,
                success=bool(meta["success"]),
                control_rate_hz=float(meta["control_rate_hz"]),
                frames=frames,
                extra=extra,
            )


def frame_at(sample: dict[str, Any], camera: str, t: int, where: str) -> np.ndarray:
    """The decoded frame of ``camera`` at step ``t`` of a raw observation sample (one line when it is missing)."""
    name = frame_field(camera, t)
    if name not in sample:
        raise DataError(f"{where}: missing frame field '{name}'")
    return decode_png(sample[name], f"{where} {name}")
