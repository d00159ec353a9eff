"""Camera videos as LeRobot 0.4.4 writes them: every episode encoded on its own (``encode_video_frames``:
libsvtav1, yuv420p, g=2, crf=30), and a camera's file made by joining episodes without re-encoding
(``concatenate_video_files``: FFmpeg's concat demuxer, packets copied, ``movflags=faststart``).

SVT-AV1 4.1 (the encoder in PyAV's wheels) now and then deadlocks while it flushes the end of a stream (seen
here once in ~25 exports of 2 x 40 episodes: every encoder thread waits on a semaphore, the caller in
``svt_av1_enc_get_packet``). So an episode is encoded in a worker process (spawned; it imports numpy and PyAV
only) under a time limit, and an encode that outlives it is killed and run again.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import shutil
import tempfile
from fractions import Fraction
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np

from actionprior.data.schema import DataError

# How an export writes frames: as video (this module) or as one image file per frame.
FRAME_MODES = ("video", "images")
VIDEO_CODEC = "libsvtav1"
VIDEO_PIX_FMT = "yuv420p"
VIDEO_OPTIONS = {"g": "2", "crf": "30"}
# An episode of a few hundred small frames encodes in well under a second; a stuck encoder is given this much.
ENCODE_TIMEOUT_S = 60.0
ENCODE_TIMEOUT_PER_FRAME_S = 0.5
ENCODE_TRIES = 3


def frame_rate(fps: float) -> Fraction:
    return Fraction(fps).limit_denominator(1001)


def encode_episode(path: str, frames: np.ndarray, fps: float) -> int:
    """Encode uint8 ``[T, H, W, 3]`` frames into a new mp4 at ``path``; its size in bytes."""
    import av

    # SVT-AV1 prints a banner of info lines per stream on stderr unless told otherwise; errors still show.
    os.environ.setdefault("SVT_LOG", "1")
    rate = frame_rate(fps)
    with av.open(path, "w") as container:
        stream = container.add_stream(VIDEO_CODEC, rate=rate, options=dict(VIDEO_OPTIONS))
        stream.pix_fmt = VIDEO_PIX_FMT
        stream.height, stream.width = int(frames.shape[1]), int(frames.shape[2])
        for t, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            # Explicit presentation times: left unset, SVT-AV1's frame-parallel encoder now and then hands the
            # muxer packets whose decode times do not increase (EINVAL).
            frame.pts, frame.time_base = t, 1 / rate
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return os.path.getsize(path)


def concatenate(parts: list[Path], out: Path) -> None:
    """Join mp4 ``parts`` (same codec, size and rate) into ``out`` by copying packets, as LeRobot does."""
    import av

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".ffconcat", dir=out.parent, delete=False) as listing:
        listing.write("ffconcat version 1.0\n")
        for part in parts:
            listing.write(f"file '{part.resolve()}'\n")
    tmp = out.with_name(out.name + ".tmp.mp4")
    try:
        with (
            av.open(listing.name, "r", format="concat", options={"safe": "0"}) as source,
            av.open(str(tmp), "w", options={"movflags": "faststart"}) as target,
        ):
            streams = {}
            for stream in source.streams.video:
                streams[stream.index] = target.add_stream_from_template(template=stream, opaque=True)
                streams[stream.index].time_base = stream.time_base
            for packet in source.demux():
                if packet.stream.index not in streams or packet.dts is None:
                    continue
                packet.stream = streams[packet.stream.index]
                target.mux(packet)
        os.replace(tmp, out)
    finally:
        Path(listing.name).unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)


class EpisodeEncoder:
    """Encodes episodes in one spawned worker process, each under a time limit (see the module docstring)."""

    def __init__(
        self,
        timeout_s: float = ENCODE_TIMEOUT_S,
        per_frame_s: float = ENCODE_TIMEOUT_PER_FRAME_S,
        tries: int = ENCODE_TRIES,
    ):
        self.timeout_s = timeout_s
        self.per_frame_s = per_frame_s
        self.tries = tries
        self._pool: Pool | None = None
        self.restarts = 0  # encodes killed and run again (reported by tests and the export)

    def encode(self, path: Path, frames: np.ndarray, fps: float) -> int:
        limit = self.timeout_s + self.per_frame_s * len(frames)
        for _ in range(self.tries):
            if self._pool is None:
                # spawn, not fork: PyAV and pyarrow threads do not survive a fork
                self._pool = mp.get_context("spawn").Pool(1)
            pending = self._pool.apply_async(encode_episode, (str(path), frames, fps))
            try:
                return pending.get(timeout=limit)
            except mp.TimeoutError:
                self._kill()
                self.restarts += 1
                path.unlink(missing_ok=True)
        raise DataError(
            f"{path}: the AV1 encoder hung {self.tries} times (over {limit:.0f} s each); "
            "export with --frames images instead"
        )

    def _kill(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


class CameraFile:
    """One camera's current mp4 file: episodes are encoded into ``parts`` and joined at :meth:`close`."""

    def __init__(self, path: Path, fps: float, encoder: EpisodeEncoder, scratch: Path):
        self.path = path
        self.fps = fps
        self.encoder = encoder
        scratch.mkdir(parents=True, exist_ok=True)
        self.parts_dir = Path(tempfile.mkdtemp(prefix="episodes-", dir=scratch))
        self.parts: list[Path] = []
        self.frames = 0
        self.bytes = 0

    @property
    def size_mb(self) -> float:
        return self.bytes / 2**20

    def write(self, frames: np.ndarray) -> None:
        part = self.parts_dir / f"{len(self.parts):06d}.mp4"
        self.bytes += self.encoder.encode(part, frames, self.fps)
        self.parts.append(part)
        self.frames += len(frames)

    def close(self) -> None:
        try:
            if self.parts:
                concatenate(self.parts, self.path)
        finally:
            shutil.rmtree(self.parts_dir, ignore_errors=True)

    def discard(self) -> None:
        shutil.rmtree(self.parts_dir, ignore_errors=True)
