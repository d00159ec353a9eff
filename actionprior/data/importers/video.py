"""Frames of a video at given timestamps, decoded with PyAV (FFmpeg): AV1, H.264, HEVC, VP9, ...

A :class:`VideoReader` keeps one container open and, for each request, seeks to the key frame at or before
the first wanted timestamp and decodes forward only as far as the last one (LeRobot v3.0 packs many
episodes into one file; an episode is located by its ``from_timestamp``). When the decoder already stands
just before the requested stretch (the next episode of the same file) it goes on decoding instead of
seeking back to a key frame and decoding again what it has just thrown away. Each wanted timestamp gets the
decoded frame whose presentation time is nearest, and it must be closer than half a frame period: a
missing, dropped or truncated stretch of video is an error, never a silently repeated frame.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from actionprior.data.images import (
    DEFAULT_INTERPOLATION,
    INTERPOLATIONS,
    MAX_FRAME_PIXELS,
    ResizeMode,
    fitted_size,
    place,
)
from actionprior.data.importers.common import (
    ImportFailure,
)


class VideoReader:
    def __init__(self, path: str | Path, fps: float, where: str, threads: int = 0):
        self.path = Path(path)
        self.tol = 0.5 / fps
        self.where = where
        if not self.path.is_file():
            raise ImportFailure(f"{self.path}: {where}: video file missing")
        try:
            self.container = av.open(str(self.path))
        except av.FFmpegError as exc:
            raise ImportFailure(f"{self.path}: {where}: cannot open video ({_short(exc)})") from None
        if not self.container.streams.video:
            self.close()
            raise ImportFailure(f"{self.path}: {where}: no video stream")
        self.stream = self.container.streams.video[0]
        ctx = self.stream.codec_context
        if ctx.width * ctx.height > MAX_FRAME_PIXELS:
            self.close()
            raise ImportFailure(f"{self.path}: {where}: {ctx.width}x{ctx.height} frames are too large")
        ctx.thread_count = threads  # 0: FFmpeg picks; 1 per process when several workers share the cores
        ctx.thread_type = "AUTO"
        # One reformatter for all frames: VideoFrame.to_ndarray(format=...) sets up a new swscale context per
        # frame, 4x the cost of decoding a small frame.
        self._rgb = VideoReformatter()
        self._frames: Iterator[av.VideoFrame] | None = None
        self._pending: tuple[float, av.VideoFrame] | None = None  # decoded, not yet handed out

    # Continue decoding rather than seek when the wanted stretch starts at most this far ahead.
    MAX_SKIP_S = 2.0

    def _next(self) -> tuple[float, av.VideoFrame] | None:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        assert self._frames is not None
        for frame in self._frames:
            if frame.pts is not None:
                return float(frame.pts * self.stream.time_base), frame
        return None

    @property
    def height_width(self) -> tuple[int, int]:
        ctx = self.stream.codec_context
        return ctx.height, ctx.width

    def frames_at(self, timestamps: np.ndarray, size: int, mode: ResizeMode, where: str) -> list[np.ndarray]:
        """The frame nearest each timestamp (seconds in the file's time line), made square like
        :func:`~actionprior.data.images.fit_image` does: swscale scales while it converts to RGB."""
        nh, nw = fitted_size(*self.height_width, size, mode)
        timestamps = np.asarray(timestamps, dtype=np.float64)
        first, last = float(timestamps.min()), float(timestamps.max())
        times: list[float] = []
        frames: list[np.ndarray] = []
        try:
            ahead = self._pending[0] if self._pending is not None else None
            if ahead is None or not (ahead <= first + self.tol and first - ahead < self.MAX_SKIP_S):
                base = self.stream.time_base
                self.container.seek(max(0, int((first - self.tol) / base)), stream=self.stream, backward=True)
                self._frames = self.container.decode(self.stream)
                self._pending = None
            while (item := self._next()) is not None:
                t, frame = item
                if t < first - self.tol:
                    continue
                if t > last + self.tol:
                    self._pending = item  # the first frame of what comes next
                    break
                times.append(t)
                rgb = self._rgb.reformat(
                    frame,
                    width=nw,
                    height=nh,
                    format="rgb24",
                    interpolation=INTERPOLATIONS[DEFAULT_INTERPOLATION],
                ).to_ndarray()
                frames.append(place(rgb, size, mode))
        except av.FFmpegError as exc:
            raise ImportFailure(f"{self.path}: {where}: corrupt video ({_short(exc)})") from None
        if not times:
            raise ImportFailure(
                f"{self.path}: {where}: no video frame between {first:.3f} s and {last:.3f} s "
                "(truncated or corrupt video?)"
            )
        decoded = np.asarray(times)
        order = np.argsort(decoded, kind="stable")  # presentation order (B-frames decode out of order)
        decoded = decoded[order]
        idx = np.clip(np.searchsorted(decoded, timestamps), 1, len(decoded) - 1) if len(decoded) > 1 else None
        if idx is None:
            nearest = np.zeros(len(timestamps), dtype=np.int64)
        else:
            left_closer = np.abs(timestamps - decoded[idx - 1]) <= np.abs(decoded[idx] - timestamps)
            nearest = np.where(left_closer, idx - 1, idx)
        gap = np.abs(decoded[nearest] - timestamps)
        bad = np.flatnonzero(gap >= self.tol)
        if bad.size:
            i = int(bad[0])
            raise ImportFailure(
                f"{self.path}: {where}: no video frame within {self.tol * 1000:.0f} ms of t={timestamps[i]:.3f} s "
                f"(row {i}; decoded frames span {decoded[0]:.3f}-{decoded[-1]:.3f} s; truncated video?)"
            )
        return [frames[order[j]] for j in nearest]

    def close(self) -> None:
        self.container.close()

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]
