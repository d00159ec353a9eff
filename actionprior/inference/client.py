"""A small synchronous client for :mod:`actionprior.inference.server`, with the Policy interface.

with PolicyClient("ws://127.0.0.1:8765") as policy:
    policy.reset()
    action = policy.act({"embodiment": "panda", "state": s, "images": {...}, "instruction": "lift"})
"""

from __future__ import annotations

from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from actionprior.inference.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    REPLY_LIMITS,
    bounded_text,
    decode,
    encode,
)


class PolicyServerError(RuntimeError):
    """The server refused a request (malformed observation, ...) or failed; the server's reason is the text."""


class PolicyClient:
    def __init__(self, url: str, timeout: float = 60.0, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.url = url
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.last_inference_ms = 0.0  # server-side time of the last answer
        self.last_model_ms = 0.0  # model time when the last answer replanned, else 0
        self.last_replanned = False
        try:
            self._ws: ClientConnection = connect(
                url, open_timeout=timeout, max_size=2 * max_message_bytes, compression=None
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"cannot reach the policy server at {url} ({exc}); start one with `actionprior serve --ckpt ...`"
            ) from exc

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            self._ws.send(encode(request))
            raw = self._ws.recv(timeout=self.timeout)
        except ConnectionClosed as exc:
            why = bounded_text(exc.rcvd.reason, 200) if exc.rcvd and exc.rcvd.reason else "no reason given"
            raise PolicyServerError(f"the policy server at {self.url} closed the connection: {why}") from exc
        reply = decode(raw, self.max_message_bytes, REPLY_LIMITS)
        if not isinstance(reply, dict) or "ok" not in reply:
            raise PolicyServerError(f"unexpected reply from {self.url}: {reply!r:.200}")
        if not reply["ok"]:
            raise PolicyServerError(bounded_text(str(reply.get("error", "unknown error")), 2000))
        return reply

    def act(self, observation: dict[str, Any]) -> np.ndarray:
        reply = self._call({"type": "act", "observation": observation})
        self.last_inference_ms = float(reply["inference_ms"])
        self.last_model_ms = float(reply.get("model_ms", 0.0))
        self.last_replanned = bool(reply.get("replanned", False))
        return reply["action"]

    def reset(self) -> None:
        self._call({"type": "reset"})

    def info(self) -> dict[str, Any]:
        return self._call({"type": "info"})["info"]

    def send_raw(self, payload: bytes) -> dict[str, Any]:
        """Send pre-encoded bytes and return the decoded reply without raising (for diagnostics)."""
        self._ws.send(payload)
        return decode(self._ws.recv(timeout=self.timeout), self.max_message_bytes, REPLY_LIMITS)

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
