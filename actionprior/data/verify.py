"""What one shard file must hold, checked the same way by ``data check`` and by the stream: one verdict.

``data check`` reports every finding; the stream refuses a shard on its first finding, except for members a
sample should not have (unknown extensions, pickles, frames nobody announced, members outside any sample):
the readers never load those, so the stream skips them and says so once per dataset. Checking a dataset
first is then a speed-up, not a safety requirement.

The byte-level checks (checksums, tar headers, what follows the end of the archive) live where the bytes
are read (:mod:`actionprior.data.shards`, :mod:`actionprior.data.tario`); the checks here need the samples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from actionprior.data import limits
from actionprior.data.schema import (
    FRAME_FIELD,
    SAFE_FILE_NAME,
    SCHEMA_VERSION,
    DataError,
    decode_png,
    frame_field,
    png_header_size,
    show,
)
from actionprior.data.video_frames import VideoMember, VideoSettings, video_field

TRAJECTORY_FIELDS = frozenset({"state.npy", "action.npy", "meta.json"})
# WebDataset's default decoders unpickle these (and torch.load runs pickles): worth naming as such.
PICKLE_SUFFIXES = (".pyd", ".pickle", ".pkl", ".pth", ".pt", ".ckpt")


@dataclass(frozen=True)
class Finding:
    key: str  # the sample key, or "" for the file
    message: str
    skipped: bool = False  # a member no reader loads: the stream warns about it instead of refusing


@dataclass
class DatasetMemory:
    """What the checks remember across the shards of one dataset: the first size seen of each camera."""

    frame_sizes: dict[str, tuple[tuple[int, int], str]] = field(default_factory=dict)


def _unexpected(name: str) -> str:
    if name.endswith(PICKLE_SUFFIXES):
        return f"unexpected member '{name[:100]}' (a pickle; never loaded, but it does not belong in a shard)"
    return f"unexpected member '{name[:100]}' (not a field of an actionprior sample; never loaded)"


def skipped_member_findings(names: Sequence[str]) -> list[Finding]:
    """Members the tar reader set aside: no sample key (``README``), a ``__`` key, or not a regular file."""
    return [Finding("", _unexpected(name), skipped=True) for name in names]


class ShardAudit:
    """The checks of one shard file's samples against its manifest entry, fed sample by sample.

    ``episodes`` maps each key the manifest lists for this file to its entry (``embodiment``, ``length``);
    ``cameras`` maps each embodiment of the dataset's manifest to its camera names; ``frames`` is how frames
    are checked in an observation shard: ``"decode"`` decodes every PNG (``data check``); ``"headers"``
    reads every frame's size from its PNG header (``data check --no-decode-frames``); ``"first"`` checks
    that every frame is there and reads the size of each camera's first frame (the stream: the frames it
    samples it decodes, and refuses one that is undecodable or of another size then; the checksum covers
    the bytes of the others); None for a trajectory shard. With ``video`` (a dataset storing frames as video)
    each camera has one video member: ``"decode"`` decodes all its frames; otherwise its header is read
    (codec, size, frame count against meta.json's length).
    """

    def __init__(
        self,
        shard: str,
        episodes: Mapping[str, Mapping[str, Any]],
        cameras: Mapping[str, Sequence[str]],
        frames: Literal["decode", "headers", "first"] | None,
        memory: DatasetMemory,
        video: VideoSettings | None = None,
    ):
        self.shard = shard
        self.episodes = episodes
        self.cameras = cameras
        self.frames = frames
        self.memory = memory
        self.video = video
        self.found: set[str] = set()

    def key(self, key: str) -> list[Finding]:
        """Findings from a sample's key alone (what a reader that does not decode the sample still checks):
        listed in the manifest under this shard, and not twice."""
        if key in self.found:
            return [Finding(key, "episode appears twice in the shard")]
        self.found.add(key)
        out = []
        if not SAFE_FILE_NAME.match(key) or "." in key:
            out.append(Finding(key, "sample key must be letters, digits, '_' and '-'"))
        if key not in self.episodes:
            out.append(Finding(key, f"sample not listed in manifest.json under shard '{self.shard}'"))
        return out

    def sample(
        self, file: str, sample: Mapping[str, Any], meta: Mapping[str, Any], length: int
    ) -> list[Finding]:
        """Findings for one decoded sample (``meta`` validated by ``decode_trajectory``, ``length`` steps)."""
        key = sample["__key__"]
        out = self.key(key)
        entry = self.episodes.get(key)
        if out and out[0].message.endswith("twice in the shard"):
            return out
        if entry is not None:
            for name, value in (("embodiment", meta["embodiment"]), ("length", length)):
                if entry.get(name) != value:
                    out.append(
                        Finding(
                            key, f"{name} is {show(value)} but manifest.json says {show(entry.get(name))}"
                        )
                    )
        if meta.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            out.append(
                Finding(
                    key, f"meta.json schema_version {show(meta['schema_version'])}, expected {SCHEMA_VERSION}"
                )
            )
        cameras, spec_cameras = meta.get("cameras", []), self.cameras.get(meta["embodiment"])
        if spec_cameras is not None and cameras and sorted(cameras) != sorted(spec_cameras):
            out.append(
                Finding(
                    key,
                    f"meta.json cameras {sorted(cameras)} disagree with the cameras {sorted(spec_cameras)} of "
                    f"embodiment '{meta['embodiment']}' in manifest.json",
                )
            )
        frames: list[str] = []
        if self.frames:
            out += self._frames(file, key, sample, meta, length, frames)
        others = set(sample) - TRAJECTORY_FIELDS - set(frames) - {"__key__", "__url__"}
        unannounced = sorted(name for name in others if self.frames and FRAME_FIELD.match(name))
        if unannounced:
            out.append(
                Finding(
                    key,
                    f"{len(unannounced)} frame fields not announced by meta.json cameras/length (first: "
                    f"{unannounced[0]}); never loaded",
                    skipped=True,
                )
            )
        for name in sorted(others - set(unannounced)):
            out.append(Finding(key, _unexpected(f"{key}.{name}"), skipped=True))
        return out

    def end(self) -> list[Finding]:
        """Findings once the whole file was read: episodes the manifest lists that it lacks."""
        return [
            Finding(key, "episode listed in manifest.json but absent from the shard")
            for key in sorted(set(self.episodes) - self.found)
        ]

    def _frames(
        self,
        file: str,
        key: str,
        sample: Mapping[str, Any],
        meta: Mapping[str, Any],
        length: int,
        frames: list[str],
    ) -> list[Finding]:
        """Findings about the frames ``meta`` announces; their field names go to ``frames``."""
        out: list[Finding] = []
        cameras = meta.get("cameras", [])
        if len(cameras) * length > limits.MAX_MEMBERS_PER_SAMPLE:
            out.append(
                Finding(
                    key,
                    f"meta.json announces {len(cameras)} cameras x {length} steps of frames, over the cap of "
                    f"{limits.MAX_MEMBERS_PER_SAMPLE} fields per sample",
                )
            )
            return out
        if self.video is not None:
            return self._videos(file, key, sample, cameras, length, frames)
        missing: list[str] = []
        for cam in sorted(cameras):
            names = [frame_field(cam, t) for t in range(length)]
            frames += names
            reported = False
            sized = False
            for fname in names:
                data = sample.get(fname)
                if data is None:
                    missing.append(fname)
                    continue
                if sized and self.frames == "first":
                    continue  # the stream reads the first frame's size; those it samples, it decodes
                sized = True
                try:
                    size = self._frame_size(data, f"{file}:{key} {fname}")
                except DataError as exc:
                    out.append(Finding(key, f"{fname}: undecodable PNG ({str(exc).rsplit(': ', 1)[-1]})"))
                    continue
                problem = self._size_problem(file, key, cam, fname, size)
                if problem is not None and not reported:
                    reported = True
                    out.append(problem)
        if missing:
            out.insert(0, Finding(key, f"{len(missing)} frames missing (first: {min(missing)})"))
        return out

    def _size_problem(
        self, file: str, key: str, cam: str, fname: str, size: tuple[int, int]
    ) -> Finding | None:
        """A finding when ``size`` (width, height) is not the first size seen of ``cam`` in the dataset."""
        if cam not in self.memory.frame_sizes:
            self.memory.frame_sizes[cam] = (size, f"{file.rsplit('/', 1)[-1]}:{key}")
        first, seen_at = self.memory.frame_sizes[cam]
        if size == first:
            return None
        return Finding(
            key,
            f"{fname}: frame size {size[0]}x{size[1]} differs from {first[0]}x{first[1]} of camera '{cam}' in "
            f"{seen_at} (one size per camera)",
        )

    def _videos(
        self,
        file: str,
        key: str,
        sample: Mapping[str, Any],
        cameras: Sequence[str],
        length: int,
        frames: list[str],
    ) -> list[Finding]:
        """Findings about the video member of each camera ``meta`` announces (see the class doc)."""
        out: list[Finding] = []
        for cam in sorted(cameras):
            fname = video_field(cam)
            frames.append(fname)
            data = sample.get(fname)
            if data is None:
                out.append(Finding(key, f"video member '{fname}' missing"))
                continue
            gop = self.video.gop if self.video is not None else 1
            try:
                with VideoMember(data, f"{file}:{key} {fname}", length, gop) as member:
                    if self.frames == "decode":
                        member.all_frames()
                    size = member.size
            except DataError as exc:
                out.append(Finding(key, f"{fname}: {str(exc).rsplit(f'{fname}: ', 1)[-1]}"))
                continue
            problem = self._size_problem(file, key, cam, fname, size)
            if problem is not None:
                out.append(problem)
        return out

    def _frame_size(self, data: bytes, where: str) -> tuple[int, int]:
        if self.frames == "decode":
            frame = decode_png(data, where)
            return frame.shape[1], frame.shape[0]
        size = png_header_size(data)
        if size is None:
            raise DataError(f"{where}: cannot decode PNG frame (no PNG header)")
        if size[0] * size[1] > limits.MAX_IMAGE_PIXELS:
            raise DataError(f"{where}: PNG declares {size[0]}x{size[1]} pixels, over the cap")
        return size
