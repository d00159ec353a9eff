"""How a camera frame becomes the model's square image: one implementation for every path that makes one.

Collection, import, the training stream, open-loop evaluation and inference all fit frames with
:func:`fit_image`; the batch contract (:class:`~actionprior.data.batch.BatchBuilder`) applies an
:class:`ImageFit` to every frame it stacks, so a policy takes camera frames at their native size.

* ``pad`` (the default, letterbox) scales the longer side to ``size`` and centres the image on black bars: the
  whole field of view is kept. ``crop`` scales the shorter side to ``size`` and cuts the centre.
* Scaling is FFmpeg's swscale through PyAV (the ``area`` filter by default, the right one for the large
  downscales of camera frames; ``bilinear`` and ``bicubic`` too), the code that also scales video frames while
  they are decoded during import.
* A frame already ``size x size`` passes unchanged (no copy, no rescaling): pre-fitted frames and the square
  frames the simulators render cost nothing and are bit-exact.

The choice travels with the data: an import records it (manifest ``import.image``: ``resize``,
``interpolation``, the cameras' native ``source_sizes``), the DataModule takes it from its datasets
(:func:`image_fit_of_manifests`) and a Stage 2 checkpoint stores it (``vla.image``). A live frame whose aspect
ratio differs from the one training's frames had is still fitted, and :meth:`ImageFit.aspect_note` says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from actionprior.data.errors import DataError, show

ResizeMode = Literal["pad", "crop"]
RESIZE_MODES: tuple[str, ...] = ("pad", "crop")
# Our names for swscale's filters (PyAV's interpolation names).
INTERPOLATIONS = {"area": "AREA", "bilinear": "BILINEAR", "bicubic": "BICUBIC"}
DEFAULT_INTERPOLATION = "area"
# Bounded readers: refuse frames larger than this many pixels (a 4K frame is 8.3 M).
MAX_FRAME_PIXELS = 16_000_000
_ASPECT_TOLERANCE = 0.01  # relative: rounding of a frame size does not count as another aspect ratio


def fitted_size(h: int, w: int, size: int, mode: ResizeMode = "pad") -> tuple[int, int]:
    """``(height, width)`` an ``h x w`` frame is scaled to before :func:`place` pads or crops it to ``size``."""
    scale = size / max(h, w) if mode == "pad" else size / min(h, w)
    return max(1, round(h * scale)), max(1, round(w * scale))


def place(resized: np.ndarray, size: int, mode: ResizeMode = "pad") -> np.ndarray:
    """A frame already scaled to :func:`fitted_size`, letterboxed (pad) or centre-cut (crop) to ``size``."""
    nh, nw = resized.shape[:2]
    if nh == size and nw == size:
        return resized
    if mode == "crop":
        top, left = (nh - size) // 2, (nw - size) // 2
        return np.ascontiguousarray(resized[top : top + size, left : left + size])
    out = np.zeros((size, size, 3), dtype=np.uint8)
    top, left = (size - nh) // 2, (size - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def fit_image(
    frame: np.ndarray, size: int, mode: ResizeMode = "pad", interpolation: str = DEFAULT_INTERPOLATION
) -> np.ndarray:
    """A uint8 RGB ``[H, W, 3]`` frame made square ``[size, size, 3]``, keeping the aspect ratio (module doc)."""
    h, w = frame.shape[:2]
    if h == size and w == size:
        return frame
    import av

    nh, nw = fitted_size(h, w, size, mode)
    src = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
    resized = src.reformat(width=nw, height=nh, interpolation=INTERPOLATIONS[interpolation]).to_ndarray()
    return place(resized, size, mode)


@dataclass(frozen=True)
class ImageFit:
    """The image contract of a model: its square ``size`` and how frames are fitted to it.

    ``source_sizes``: per camera, the native ``(height, width)`` of the frames the training data was fitted from,
    where the data records it (imports do); a camera without an entry was trained on square frames.
    """

    size: int
    resize: ResizeMode = "pad"
    interpolation: str = DEFAULT_INTERPOLATION
    source_sizes: Mapping[str, tuple[int, int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.size, int) or isinstance(self.size, bool) or not 1 <= self.size <= 4096:
            problems.append(f"size must be an integer in [1, 4096], got {show(self.size)}")
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize must be one of {RESIZE_MODES}, got {show(self.resize)}")
        if self.interpolation not in INTERPOLATIONS:
            problems.append(
                f"interpolation must be one of {sorted(INTERPOLATIONS)}, got {show(self.interpolation)}"
            )
        for camera, hw in dict(self.source_sizes).items():
            if not _is_size(hw):
                problems.append(
                    f"source_sizes[{show(str(camera))}] must be [height, width] > 0, got {str(hw)[:60]}"
                )
        if problems:
            raise ValueError("invalid image contract: " + "; ".join(problems))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        return fit_image(frame, self.size, self.resize, self.interpolation)

    def aspect_note(self, camera: str, height: int, width: int) -> str | None:
        """One line when an ``height x width`` frame of ``camera`` has another aspect ratio than training's frames
        (it is fitted all the same); None when it matches, or is already ``size x size``."""
        if height == self.size and width == self.size:
            return None
        th, tw = self.source_sizes.get(camera, (1, 1))
        if abs((width / height) / (tw / th) - 1.0) <= _ASPECT_TOLERANCE:
            return None
        trained = f"{tw}x{th} frames" if camera in self.source_sizes else "square frames"
        return (
            f"camera '{camera}': {width}x{height} frames (aspect {width / height:.2f}) are fitted by "
            f"{self.resize} to {self.size}x{self.size}, but the model was trained on {trained} "
            f"(aspect {tw / th:.2f}); objects appear at other places than in training"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "size": self.size,
            "resize": self.resize,
            "interpolation": self.interpolation,
            "source_sizes": {cam: list(hw) for cam, hw in self.source_sizes.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ImageFit:
        """From a checkpoint's ``vla.image`` (untrusted): one line naming ``where`` when malformed."""
        if not isinstance(data, Mapping) or set(data) - {"size", "resize", "interpolation", "source_sizes"}:
            raise DataError(
                f"{where}: the image contract must be a mapping of size/resize/interpolation/source_sizes"
            )
        try:
            sizes = data.get("source_sizes") or {}
            if not isinstance(sizes, Mapping) or len(sizes) > 16:
                raise ValueError(f"source_sizes must map at most 16 cameras, got {show(sizes)}")
            return cls(
                data.get("size"),  # type: ignore[arg-type]
                data.get("resize", "pad"),
                data.get("interpolation", DEFAULT_INTERPOLATION),
                {str(k): _as_size(v) for k, v in sizes.items()},
            )
        except ValueError as exc:
            raise DataError(f"{where}: {exc}") from None


def _is_size(hw: Any) -> bool:
    return (
        isinstance(hw, list | tuple)
        and len(hw) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= MAX_FRAME_PIXELS for x in hw)
    )


def _as_size(hw: Any) -> tuple[int, int]:
    return (int(hw[0]), int(hw[1])) if _is_size(hw) else hw


def image_record(
    size: int, mode: ResizeMode, source_sizes: Mapping[str, tuple[int, int]] | None = None
) -> dict:
    """How an import made its frames square; stored in the manifest (``import.image``) and the embodiment spec."""
    record: dict[str, Any] = {
        "size": int(size),
        "resize": mode,
        "pad_value": 0,
        "interpolation": f"swscale {DEFAULT_INTERPOLATION}",
        "function": "actionprior.data.images.fit_image",
    }
    if source_sizes:
        record["source_sizes"] = {cam: [int(h), int(w)] for cam, (h, w) in source_sizes.items()}
    return record


def image_fit_of_manifests(manifests: Iterable[tuple[str, Mapping[str, Any]]], size: int) -> ImageFit:
    """The image contract of training on these datasets at ``size``: their recorded fit (an import's
    ``import.image``; none for collected datasets, whose frames are rendered square), which must agree."""
    modes: dict[str, str] = {}
    sizes: dict[str, tuple[int, int]] = {}
    for where, manifest in manifests:
        record = (
            (manifest.get("import") or {}).get("image")
            if isinstance(manifest.get("import"), Mapping)
            else None
        )
        if record is None:
            continue
        if not isinstance(record, Mapping):
            raise DataError(f"{where}/manifest.json: import.image must be a mapping, got {show(record)}")
        mode = record.get("resize", "pad")
        if mode not in RESIZE_MODES:
            raise DataError(
                f"{where}/manifest.json: import.image.resize must be one of {RESIZE_MODES}, got {show(mode)}"
            )
        modes[where] = mode
        recorded = record.get("source_sizes") or {}
        if not isinstance(recorded, Mapping):
            raise DataError(f"{where}/manifest.json: import.image.source_sizes must be a mapping")
        for camera, hw in recorded.items():
            if not _is_size(hw):
                raise DataError(
                    f"{where}/manifest.json: import.image.source_sizes[{show(str(camera))}] must be [height, width], "
                    f"got {str(hw)[:60]}"
                )
            sizes.setdefault(str(camera), (int(hw[0]), int(hw[1])))
    if len(set(modes.values())) > 1:
        raise DataError(
            f"the datasets fitted their frames differently ({modes}): a model has one image contract; "
            "import them with the same --resize"
        )
    return ImageFit(size, next(iter(modes.values()), "pad"), DEFAULT_INTERPOLATION, sizes)  # type: ignore[arg-type]
