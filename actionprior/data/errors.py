"""The data layer's error type and how untrusted values appear in its messages.

The lowest module of :mod:`actionprior.data`: everything that reads a dataset raises :class:`DataError`, and
the modules that read untrusted bytes (:mod:`~actionprior.data.location`, :mod:`~actionprior.data.safe_json`,
:mod:`~actionprior.data.schema`) import it from here, so none of them needs another.
"""

from __future__ import annotations

from typing import Any


class DataError(ValueError):
    """Malformed data: the message names the file and sample key."""


def show(value: Any, limit: int = 60) -> str:
    """``repr`` of an untrusted value for an error message, cut to ``limit`` characters."""
    text = repr(value) if not isinstance(value, dict | list) else f"<{type(value).__name__} of {len(value)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
