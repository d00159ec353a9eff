"""A tiny encoded video member for tests of the video frame reader (PyAV, in memory)."""

from __future__ import annotations

import io

import numpy as np


def encoded_video(length: int, codec: str = "libx264", size: int = 8) -> bytes:
    """``length`` frames of ``size`` px squares (frame ``t`` filled with ``t``) as an mp4 of ``codec``."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(codec, rate=30)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        for t in range(length):
            frame = av.VideoFrame.from_ndarray(np.full((size, size, 3), t, np.uint8), format="rgb24")
            frame.pts = t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()
