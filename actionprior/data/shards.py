"""Shard files of a dataset: which to read for a view and split, and their raw and decoded samples.

Shards are plain WebDataset tars (written by ``wds.TarWriter``) streamed by :mod:`actionprior.data.tario`,
which groups members into samples with WebDataset's key rule but parses headers ~10x faster than
``tarfile``. Fields are decoded with :mod:`actionprior.data.schema` (``allow_pickle=False``); WebDataset's
``.decode()`` is never used because its default handlers can unpickle. Shard names come from the
manifest (untrusted) and are combined with the user's dataset path only by :mod:`actionprior.data.location`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from actionprior.data.checksums import FileSum, HashingReader, expected_sum, mismatch
from actionprior.data.location import contained, file_url, is_remote, open_local, shown_path
from actionprior.data.reader import load_manifest
from actionprior.data.schema import (
    MANIFEST_FILE,
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
from actionprior.data.verify import DatasetMemory, Finding, ShardAudit, skipped_member_findings
from actionprior.data.video_frames import (
    FrameCache,
    VideoSettings,
    codec_problem,
    decode_video_frames,
    frame_storage,
    video_field,
)
from actionprior.embodiments import EmbodimentRegistry

log = logging.getLogger(__name__)

View = Literal["trajectory", "observation"]


@dataclass(frozen=True)
class ShardFile:
    """One shard file of a view as the manifest lists it: where it is, its checksum (None for a dataset
    written before checksums) and the episodes it must hold (key -> manifest entry)."""

    url: str
    shard: str
    checksum: FileSum | None
    episodes: Mapping[str, Mapping[str, Any]]


@dataclass(frozen=True)
class ShardSource:
    """One dataset as a stream sees it: the shard files of one view that hold episodes of one split.

    ``cameras`` are the camera names of each embodiment of the dataset's manifest; ``verify`` says whether
    readers check each file's checksum (and, without one, its tar headers) on the bytes they read; ``video`` is
    how the observation shards store frames as video (None: PNG frames, or the trajectory view).
    """

    directory: str
    weight: float
    urls: tuple[str, ...]
    num_episodes: int
    num_transitions: int
    files: tuple[ShardFile, ...] = ()
    cameras: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    verify: bool = True
    video: VideoSettings | None = None


_MENTIONED: set[tuple[str, str]] = set()  # (what, dataset): notices given once per dataset and process


def _first_time(what: str, directory: str | Path) -> bool:
    """Whether ``what`` has not been said yet about this dataset in this process. A local dataset is known by
    its real path: one path string (``.``) can name several folders in a process."""
    key = (what, str(directory) if is_remote(directory) else str(Path(directory).resolve()))
    if key in _MENTIONED:
        return False
    _MENTIONED.add(key)
    return True


def shard_source(
    directory: str | Path,
    view: View,
    split: Split,
    val_fraction: float,
    weight: float = 1.0,
    manifest: dict[str, Any] | None = None,
    verify: bool = True,
) -> ShardSource:
    """The shards of one view holding episodes of ``split``. ``directory`` is the dataset path as the user
    wrote it: a local directory, or a ``{name}`` template / URL base (see :mod:`actionprior.data.location`).
    ``verify=False`` reads them without checking their checksums.
    """
    location = directory if is_remote(directory) else Path(directory)
    manifest = manifest if manifest is not None else load_manifest(directory)
    field_ = "traj" if view == "trajectory" else "obs"
    files, episodes, transitions = [], 0, 0
    for shard in manifest["shards"]:
        chosen = [e for e in shard["episodes"] if in_split(e["key"], split, val_fraction)]
        if chosen:
            name = check_file_name(shard[field_], f"{shown_path(directory, MANIFEST_FILE)}: shard '{field_}'")
            if not is_remote(location) and not contained(location, name):
                raise DataError(
                    f"{shown_path(directory, name)}: resolves outside the dataset folder (a symlink); "
                    "refusing to read it"
                )
            listed = {e["key"]: e for e in shard["episodes"]}
            url = file_url(location, name)
            files.append(ShardFile(url, shard["name"], expected_sum(shard, field_), listed))
            episodes += len(chosen)
            transitions += sum(int(e["length"]) for e in chosen)
    unsummed = sum(f.checksum is None for f in files)
    if verify and unsummed and _first_time("no checksums", directory):
        log.warning(
            "%s: %d of %d shard files have no checksum in manifest.json (written before checksums); they are "
            "read with their tar headers checked, not their bytes: `actionprior data check %s --rehash` adds "
            "checksums",
            directory,
            unsummed,
            len(files),
            directory,
        )
    cameras = {name: tuple(spec.get("cameras", [])) for name, spec in manifest["embodiments"].items()}
    urls = tuple(f.url for f in files)
    video = None
    if view == "observation" and frame_storage(manifest) == "video":  # the trajectory view never looks
        where = shown_path(directory, MANIFEST_FILE)
        video = VideoSettings.from_record(manifest["frames"], where)
        problem = codec_problem(manifest["frames"]["codec"])
        if problem:
            raise DataError(f"{where}: {problem}")
    return ShardSource(
        str(directory), float(weight), urls, episodes, transitions, tuple(files), cameras, verify, video
    )


def _open_shard(url: str) -> BinaryIO:
    # One place where shard files are opened (tests record the URLs here). URLs are built by shard_source
    # from a validated shard name: a local path is opened with open() (never a URL opener, so no name can
    # become a command); a user-written template or URL base goes through WebDataset's gopen.
    if is_remote(url):
        import webdataset as wds

        return wds.gopen(url, "rb")
    return open_local(url)


def iter_shard(
    url: str, expected: FileSum | None = None, verify: bool = True, skipped: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__`` plus bytes per field) of one tar, streamed, with a clear error for broken
    tars (the reader holds at most one sample; see :mod:`actionprior.data.limits`).

    With ``verify``, the file is checked as it is read: against its ``expected`` size and SHA-256 (hashed on
    the bytes read anyway; a mismatch is raised after the last sample, so callers that must not use a
    damaged shard's samples collect them first, as the stream does), or without one by its tar header
    checksums. Names of members that belong to no sample go to ``skipped``.
    """
    try:
        raw = _open_shard(url)
    except OSError as exc:
        raise DataError(f"{url}: cannot read shard ({exc.strerror or show(str(exc), 200)})") from None
    hashing = verify and expected is not None
    stream: Any = HashingReader(raw) if hashing else raw
    failed = True
    try:
        if hashing and not is_remote(url):
            size = os.fstat(raw.fileno()).st_size  # a partial copy is refused before it is read
            if size != expected.size:  # type: ignore[union-attr]
                raise DataError(f"{url}: {mismatch(FileSum(size, ''), expected)}")  # type: ignore[arg-type]
        yield from iter_tar_samples(stream, url, verify=verify and not hashing, skipped=skipped)
        if hashing:
            problem = mismatch(stream.result(), expected)  # type: ignore[arg-type]
            if problem:
                raise DataError(f"{url}: {problem}")
        failed = False
    except OSError as exc:
        raise DataError(f"{url}: cannot read shard ({exc.strerror or show(str(exc), 200)})") from None
    finally:
        # A pipe reports its command's exit status on close. After a refusal (or a consumer that stopped
        # early) that status would only hide the real message, so it counts only after a clean read.
        try:
            raw.close()
        except Exception as exc:
            if not failed:
                raise DataError(f"{url}: the stream failed on close ({show(str(exc), 200)})") from None


def iter_checked(
    source: ShardSource,
    file: ShardFile,
    registry: EmbodimentRegistry,
    memory: DatasetMemory,
    with_frames: bool,
    wanted: Callable[[str], bool] | None = None,
) -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray, dict[str, Any]]]:
    """``(sample, state, action, meta)`` of the samples of one shard file whose key is ``wanted`` (default:
    all), checked as ``data check`` checks them (:mod:`actionprior.data.verify`): the first problem is a
    DataError naming file, key and field; members no reader loads are skipped with one warning per dataset
    (and process). Samples not wanted (the other split) are not decoded: only their keys are checked (and
    their bytes, by the file's checksum). Frames are checked by their PNG headers (video members: by their
    container headers), and decoded only where a reader samples them."""
    skipped: list[str] = []
    # With a verified checksum every byte is vouched for: the size of each camera's first frame is enough.
    # Without one (a dataset from before checksums) every frame's PNG header is read: no pixel bomb or frame
    # of another size hides in a frame the stream happens not to sample.
    summed = file.checksum is not None and source.verify
    frames = ("first" if summed else "headers") if with_frames else None
    audit = ShardAudit(file.shard, file.episodes, source.cameras, frames, memory, video=source.video)
    for sample in iter_shard(file.url, file.checksum, source.verify, skipped):
        if wanted is not None and not wanted(sample["__key__"]):
            _refuse_or_warn(source, file.url, audit.key(sample["__key__"]))
            continue
        state, action, meta = decode_sample(sample, registry)
        _refuse_or_warn(source, file.url, audit.sample(file.url, sample, meta, len(state)))
        yield sample, state, action, meta
    _refuse_or_warn(source, file.url, skipped_member_findings(skipped) + audit.end())


def _refuse_or_warn(source: ShardSource, url: str, findings: list[Finding]) -> None:
    for finding in findings:
        where = f"{url}:{finding.key}" if finding.key else url
        if not finding.skipped:
            raise DataError(
                f"{where}: {finding.message} (`actionprior data check {source.directory}` lists all)"
            )
    skipped = [f for f in findings if f.skipped]
    if skipped and _first_time("skipped members", source.directory):
        where = f"{url}:{skipped[0].key}" if skipped[0].key else url
        more = f" (and {len(skipped) - 1} more in this file)" if len(skipped) > 1 else ""
        log.warning(
            "%s: skipped %s%s; `actionprior data check %s` lists all",
            where,
            skipped[0].message,
            more,
            source.directory,
        )


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
    verify: bool = True,
    *,
    embodiment: str | None = None,
    shards: Sequence[str] | None = None,
) -> Iterator[Episode]:
    """Whole episodes of one split, in manifest order, unnormalised (e.g. for open-loop evaluation).

    Shards are checked as the stream checks them (:func:`iter_checked`); a checksum mismatch is known only
    at the end of a shard, so it is raised after that shard's episodes (evaluation then fails as a whole).
    ``embodiment``: only that embodiment's episodes; shards whose manifest entries list none are not read,
    and the frames of other embodiments' episodes are not decoded. ``shards``: only the shards of these names.
    """
    manifest = load_manifest(directory)
    if shards is not None:
        manifest = {**manifest, "shards": [s for s in manifest["shards"] if s["name"] in set(shards)]}
    keys: set[str] | None = None
    if embodiment is not None:
        shards = [s for s in manifest["shards"] if any(e["embodiment"] == embodiment for e in s["episodes"])]
        manifest = {**manifest, "shards": shards}
        keys = {e["key"] for s in shards for e in s["episodes"] if e["embodiment"] == embodiment}
    view: View = "observation" if with_frames else "trajectory"
    source = shard_source(directory, view, split, val_fraction, manifest=manifest, verify=verify)
    memory = DatasetMemory()

    def wanted(key: str) -> bool:
        return in_split(key, split, val_fraction) and (keys is None or key in keys)

    for file in source.files:
        url = file.url
        for sample, state, action, meta in iter_checked(source, file, registry, memory, with_frames, wanted):
            frames = {}
            if with_frames:
                where = f"{url}:{sample['__key__']}"
                for cam in meta.get("cameras", []):
                    stack = camera_frames(sample, cam, None, len(state), where, source.video)
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


def camera_frames(
    sample: Mapping[str, Any],
    camera: str,
    timesteps: Sequence[int] | None,
    length: int,
    where: str,
    video: VideoSettings | None,
    cache: FrameCache | None = None,
) -> list[np.ndarray]:
    """The decoded frames of ``camera`` at ``timesteps`` (None: every step) of a raw observation sample, from
    its PNG members or (``video``) its video member."""
    steps = range(length) if timesteps is None else timesteps
    if video is None:
        return [frame_at(sample, camera, int(t), where) for t in steps]
    name = video_field(camera)
    if name not in sample:
        raise DataError(f"{where}: missing video field '{name}'")
    return decode_video_frames(sample[name], f"{where} {name}", length, timesteps, cache, video.gop)


def frame_at(sample: Mapping[str, Any], camera: str, t: int, where: str) -> np.ndarray:
    """The decoded frame of ``camera`` at step ``t`` of a raw observation sample (one line when it is missing)."""
    name = frame_field(camera, t)
    if name not in sample:
        raise DataError(f"{where}: missing frame field '{name}'")
    return decode_png(sample[name], f"{where} {name}")
