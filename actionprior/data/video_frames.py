"""Camera frames stored as video: one compressed member per camera per episode of an observation shard.

An observation sample of a dataset whose manifest says ``"frames": {"storage": "video", ...}`` holds
``<camera>.mp4`` (H.264 in MP4, encoded with PyAV's libx264) instead of ``<camera>.<t:05d>.png`` per step.
Frames compress across time (a 224x224 simulated camera: ~38 KB per PNG, ~1.4 KB per H.264 frame at CRF 23),
and a reader decodes only what it samples: it seeks to the key frame at or before a wanted step and decodes
forward to it (:meth:`VideoMember.frames`), so a sampled frame costs on average ``gop / 2`` decoded frames.

* **Settings** (:class:`VideoSettings`, recorded in the manifest): the lossy default is libx264, yuv420p
  (yuv444p for odd sizes, which 4:2:0 cannot hold), CRF 23, a key frame every ``gop`` frames (no scene-cut
  key frames, closed GOPs); ``lossless`` is libx264rgb at QP 0 (RGB, decodes bit-equal to the PNG frames).
  Frames keep their stored size (non-square too); the stream fits them to the model's size at load.
* **Untrusted input.** A member is opened from memory (never a path or URL), must hold one video stream of a
  codec on :data:`DECODABLE_CODECS` that this PyAV build decodes, frames within ``MAX_IMAGE_PIXELS`` of the
  size the header declares, and exactly ``length`` frames; decoding stops at the last wanted frame and never
  runs past ``length + 1`` frames. Every failure is one :class:`DataError` line naming the member.
* **Cache.** :class:`FrameCache` keeps decoded RGB frames per worker (LRU, bounded in bytes and entries): a
  later request for a frame of a stretch already decoded (the same shard drawn again) costs no decoding.
"""

from __future__ import annotations

import io
import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from actionprior.data import limits
from actionprior.data.errors import DataError, show

VIDEO_SUFFIX = "mp4"
VIDEO_FIELD = re.compile(r"^(?P<camera>[A-Za-z0-9_]+)\.mp4\Z")
FRAME_STORAGES = ("png", "video")
# Codecs a reader decodes from a shard: what the writer produces, and what LeRobot datasets use. Untrusted
# bytes never reach a decoder of a rarer codec (less exercised code).
DECODABLE_CODECS = ("h264", "hevc", "av1", "libdav1d", "vp9")
ENCODERS = {False: "libx264", True: "libx264rgb"}
DEFAULT_CRF = 23
DEFAULT_GOP = 8
DEFAULT_PRESET = "veryfast"
# The frame rate the writer gives a member's time line (frames are indexed by presentation time x rate).
_RATE = Fraction(30)


def video_field(camera: str) -> str:
    return f"{camera}.{VIDEO_SUFFIX}"


@dataclass(frozen=True)
class VideoSettings:
    """How frames are encoded. ``lossless``: libx264rgb QP 0 (bit-equal RGB); else libx264 at ``crf``."""

    crf: int = DEFAULT_CRF
    gop: int = DEFAULT_GOP
    lossless: bool = False
    preset: str = DEFAULT_PRESET

    def __post_init__(self) -> None:
        if not 0 <= self.crf <= 51:
            raise DataError(f"video CRF must be in [0, 51], got {self.crf}")
        if not 1 <= self.gop <= 1000:
            raise DataError(f"video keyframe interval (GOP) must be in [1, 1000], got {self.gop}")
        if self.preset not in _PRESETS:
            raise DataError(f"video preset must be one of {_PRESETS}, got {show(self.preset)}")

    @property
    def encoder(self) -> str:
        return ENCODERS[self.lossless]

    def record(self) -> dict[str, Any]:
        """The manifest's ``frames`` entry."""
        return {
            "storage": "video",
            "codec": "h264",
            "encoder": self.encoder,
            "container": VIDEO_SUFFIX,
            "pix_fmt": "rgb24" if self.lossless else "yuv420p (yuv444p for odd sizes)",
            "crf": None if self.lossless else self.crf,
            "qp": 0 if self.lossless else None,
            "lossless": self.lossless,
            "gop": self.gop,
            "preset": self.preset,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any], where: str) -> VideoSettings:
        problems = frames_record_problems(record)
        if problems:
            raise DataError(f"{where}: {problems[0]}")
        return cls(
            crf=int(record.get("crf") or DEFAULT_CRF),
            gop=int(record["gop"]),
            lossless=bool(record["lossless"]),
            preset=str(record.get("preset", DEFAULT_PRESET)),
        )


_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


def frames_record_problems(record: Any) -> list[str]:
    """Problems of a manifest's ``frames`` entry (absent: PNG frames). Types only: no decoder is consulted, so
    that the trajectory view never depends on video support."""
    if record is None:
        return []
    if not isinstance(record, Mapping) or record.get("storage") not in FRAME_STORAGES:
        return [f"'frames' must be an object with storage 'png' or 'video', got {show(record)}"]
    if record["storage"] == "png":
        return []
    out = []
    if record.get("codec") != "h264" or record.get("encoder") not in ENCODERS.values():
        out.append(
            f"frames.codec {show(record.get('codec'))} / encoder {show(record.get('encoder'))}: this "
            f"actionprior writes h264 with {sorted(ENCODERS.values())}"
        )
    gop = record.get("gop")
    if not isinstance(gop, int) or isinstance(gop, bool) or not 1 <= gop <= 1000:
        out.append(f"frames.gop must be an integer in [1, 1000], got {show(gop)}")
    if not isinstance(record.get("lossless"), bool):
        out.append(f"frames.lossless must be true or false, got {show(record.get('lossless'))}")
    crf = record.get("crf")
    if crf is not None and (not isinstance(crf, int) or isinstance(crf, bool) or not 0 <= crf <= 51):
        out.append(f"frames.crf must be an integer in [0, 51] or null, got {show(crf)}")
    return out


def frame_storage(manifest: Mapping[str, Any]) -> str:
    """``"png"`` or ``"video"``: how a (validated) manifest's observation shards store frames."""
    record = manifest.get("frames")
    return "png" if record is None else str(record["storage"])


def codec_problem(name: str) -> str | None:
    """Why frames of codec ``name`` cannot be decoded here, or None."""
    import av

    if name not in DECODABLE_CODECS:
        return f"video codec {show(name)} is not one actionprior decodes ({', '.join(DECODABLE_CODECS)})"
    if name not in av.codecs_available:
        return (
            f"video codec {show(name)} is not available in this PyAV build (av {av.__version__}); "
            "install a PyAV wheel that has it, or `data convert --frames png` the dataset elsewhere"
        )
    return None


# -- encoding -----------------------------------------------------------------------------------------


def encode_video(frames: np.ndarray, settings: VideoSettings) -> bytes:
    """uint8 ``[T, H, W, 3]`` frames as one MP4 member (see the module doc for the settings)."""
    import av

    t, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    if settings.lossless:
        pix_fmt, options = "rgb24", {"qp": "0"}
    else:
        pix_fmt = "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p"
        options = {"crf": str(settings.crf)}
    # Fixed key frames (no scene-cut ones, closed GOPs), so a reader's seek lands at most gop - 1 frames early.
    options.update(
        preset=settings.preset,
        g=str(settings.gop),
        keyint_min=str(settings.gop),
        sc_threshold="0",
        x264opts="scenecut=0:open-gop=0",
    )
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(settings.encoder, rate=_RATE, options=options)
        stream.pix_fmt = pix_fmt
        stream.height, stream.width = h, w
        stream.codec_context.thread_count = 1  # encoders run in parallel worker processes
        for i in range(t):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24")
            frame.pts, frame.time_base = i, 1 / _RATE
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


# -- decoding -----------------------------------------------------------------------------------------


class FrameCache:
    """Decoded RGB frames by ``(member, t)``, least recently used first out; bounded in bytes and entries."""

    def __init__(self, max_bytes: int = 64 * 2**20, max_entries: int = 4096):
        self.max_bytes = int(max_bytes)
        self.max_entries = int(max_entries)
        self._frames: OrderedDict[tuple[str, int], np.ndarray] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, member: str, t: int) -> np.ndarray | None:
        frame = self._frames.get((member, t))
        if frame is None:
            self.misses += 1
            return None
        self._frames.move_to_end((member, t))
        self.hits += 1
        return frame

    def put(self, member: str, t: int, frame: np.ndarray) -> None:
        if frame.nbytes > self.max_bytes or self.max_entries < 1 or (member, t) in self._frames:
            return
        self._frames[member, t] = frame
        self.nbytes += frame.nbytes
        while self.nbytes > self.max_bytes or len(self._frames) > self.max_entries:
            _, old = self._frames.popitem(last=False)
            self.nbytes -= old.nbytes

    def __len__(self) -> int:
        return len(self._frames)


class VideoMember:
    """One camera's frames of one episode, from the bytes of its ``.mp4`` member (untrusted).

    ``length`` is the episode's step count (meta.json): the video must hold exactly that many frames.
    Opening reads the container header only; :meth:`frames` decodes.
    """

    def __init__(self, data: bytes, where: str, length: int, gop: int = DEFAULT_GOP):
        import av

        self.where = where
        self.length = int(length)
        self.gop = int(gop)
        try:
            self.container = av.open(io.BytesIO(data), "r", format="mp4")
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise DataError(
                f"{where}: cannot open video member (truncated or corrupt? {_short(exc)})"
            ) from None
        try:
            self._check_header()
        except BaseException:
            self.close()
            raise

    def _check_header(self) -> None:
        video = self.container.streams.video
        if not video:
            raise DataError(f"{self.where}: no video stream in the member (truncated or corrupt?)")
        if len(self.container.streams) != 1 or len(video) != 1:
            raise DataError(
                f"{self.where}: video member must hold exactly one video stream, has "
                f"{len(video)} video of {len(self.container.streams)} streams"
            )
        self.stream = video[0]
        ctx = self.stream.codec_context
        name = ctx.name if ctx is not None else "none"
        problem = codec_problem(name)
        if problem:
            raise DataError(f"{self.where}: {problem}")
        self.width, self.height = int(ctx.width), int(ctx.height)
        if not (self.width > 0 and self.height > 0) or self.width * self.height > limits.MAX_IMAGE_PIXELS:
            raise DataError(
                f"{self.where}: video declares {self.width}x{self.height} pixels (cap {limits.MAX_IMAGE_PIXELS})"
            )
        declared = int(self.stream.frames or 0)
        if declared and declared != self.length:
            raise DataError(
                f"{self.where}: video holds {declared} frames but meta.json length is {self.length}"
            )
        ctx.thread_count = 1  # one decoder thread: loader workers already use every core
        self._base = self.stream.start_time or 0
        self._tb = self.stream.time_base
        # Frames are indexed by presentation time at the stream's frame rate (ours: 30; LeRobot's: the fps).
        rate = self.stream.average_rate or self.stream.guessed_rate
        if rate is None or not 0 < rate <= 1000 or self._tb is None or self._tb <= 0:
            raise DataError(
                f"{self.where}: video declares no usable frame rate ({show(str(rate))}; corrupt member?)"
            )
        self._rate = Fraction(rate)
        from av.video.reformatter import VideoReformatter

        self._rgb = VideoReformatter()

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` as the header declares it."""
        return self.width, self.height

    def _index(self, frame: Any) -> int:
        if frame.pts is None:
            raise DataError(f"{self.where}: a video frame has no presentation time (corrupt member)")
        return round((frame.pts - self._base) * self._tb * self._rate)

    def _rgb_of(self, frame: Any) -> np.ndarray:
        if frame.width != self.width or frame.height != self.height:
            raise DataError(
                f"{self.where}: a frame of {frame.width}x{frame.height} in a video of {self.width}x{self.height}"
            )
        return self._rgb.reformat(frame, format="rgb24").to_ndarray()

    def frames(
        self, timesteps: Iterable[int], cache: FrameCache | None = None, key: str | None = None
    ) -> dict[int, np.ndarray]:
        """``{t: uint8 [H, W, 3]}`` for each wanted step: seek to the key frame at or before it and decode forward,
        unless it lies at most ``gop`` frames after the last frame decoded (frames passed on the way go to
        ``cache`` too)."""
        import av

        wanted = sorted({int(t) for t in timesteps})
        if wanted and not 0 <= wanted[0] <= wanted[-1] < self.length:
            raise DataError(f"{self.where}: frame {wanted[-1]} asked of a {self.length}-step episode")
        key = key or self.where
        out: dict[int, np.ndarray] = {}
        todo = []
        for t in wanted:
            hit = cache.get(key, t) if cache is not None else None
            if hit is not None:
                out[t] = hit
            else:
                todo.append(t)
        frames = None
        position = -1  # index of the last frame decoded in the current run
        budget = 0
        try:
            for t in todo:
                if frames is None or t <= position or t - position > self.gop:
                    pts = self._base + int(t / (self._rate * self._tb))
                    self.container.seek(pts, stream=self.stream, backward=True, any_frame=False)
                    frames = self.container.decode(self.stream)
                    position = -1
                    budget = self.length + 1  # one run never decodes more than the whole episode
                while position < t:
                    frame = next(frames, None)
                    budget -= 1
                    if frame is None or budget < 0:
                        raise DataError(
                            f"{self.where}: frame {t} is missing from the video (truncated member, or fewer "
                            f"frames than meta.json length {self.length})"
                        )
                    index = self._index(frame)
                    if index > t:
                        raise DataError(
                            f"{self.where}: frame {t} is missing from the video (jumped to {index})"
                        )
                    if index < position:
                        continue  # frames in decode order are presentation order; a repeat is skipped
                    position = index
                    if index == t or cache is not None:
                        rgb = self._rgb_of(frame)
                        if cache is not None:
                            cache.put(key, index, rgb)
                        if index == t:
                            out[t] = rgb
        except av.FFmpegError as exc:
            raise DataError(f"{self.where}: corrupt video member ({_short(exc)})") from None
        return out

    def all_frames(self) -> np.ndarray:
        """Every frame, ``[length, H, W, 3]``: exactly ``length`` frames, in order, or one DataError line."""
        import av

        out = []
        try:
            for frame in self.container.decode(self.stream):
                index = self._index(frame)
                if index != len(out) or len(out) >= self.length:
                    raise DataError(
                        f"{self.where}: video frame {len(out)} has index {index}; the member holds other frames "
                        f"than meta.json length {self.length} says (more, dropped or reordered)"
                    )
                out.append(self._rgb_of(frame))
        except av.FFmpegError as exc:
            raise DataError(f"{self.where}: corrupt video member ({_short(exc)})") from None
        if len(out) != self.length:
            raise DataError(
                f"{self.where}: video holds {len(out)} decodable frames but meta.json length is {self.length} "
                "(truncated member?)"
            )
        return np.stack(out)

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoMember:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def decode_video_frames(
    data: bytes,
    where: str,
    length: int,
    timesteps: Sequence[int] | None = None,
    cache: FrameCache | None = None,
    gop: int = DEFAULT_GOP,
) -> list[np.ndarray]:
    """The frames at ``timesteps`` (all of them when None) of one ``.mp4`` member, in the order asked. ``gop``:
    the key frame interval the manifest records (a wanted frame at most that far ahead is decoded to rather
    than sought)."""
    with VideoMember(data, where, length, gop) as member:
        if timesteps is None:
            return list(member.all_frames())
        got = member.frames(timesteps, cache)
    return [got[int(t)] for t in timesteps]


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


# -- command lines ------------------------------------------------------------------------------------


def add_frame_arguments(parser: Any) -> None:
    """``--frames`` and the video settings, shared by ``data collect``, ``data import`` and ``data convert``."""
    parser.add_argument(
        "--frames",
        choices=FRAME_STORAGES,
        default="png",
        help="how observation shards store camera frames: one PNG per frame, or one video per camera and "
        "episode (10-40x smaller; see docs/importing.md)",
    )
    parser.add_argument(
        "--video-crf",
        type=int,
        default=DEFAULT_CRF,
        help=f"--frames video: H.264 CRF (default {DEFAULT_CRF})",
    )
    parser.add_argument(
        "--video-gop",
        type=int,
        default=DEFAULT_GOP,
        help=f"--frames video: a key frame every N frames (default {DEFAULT_GOP}); a sampled frame costs ~N/2 decodes",
    )
    parser.add_argument(
        "--video-lossless",
        action="store_true",
        help="--frames video: lossless RGB H.264 (libx264rgb QP 0; decodes bit-equal to PNG frames, ~5x larger)",
    )


def video_settings_from_args(args: Any) -> VideoSettings | None:
    """The video settings the command line asks for, or None for PNG frames."""
    if args.frames != "video":
        return None
    return VideoSettings(crf=args.video_crf, gop=args.video_gop, lossless=args.video_lossless)
