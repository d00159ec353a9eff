"""A client for :mod:`actionprior.inference.server`, with the Policy interface.

with PolicyClient("ws://127.0.0.1:8765") as policy:
    policy.reset()
    action = policy.act({"embodiment": "panda", "state": s, "images": {...}, "instruction": "lift"})

By default every ``act`` is one request and the server executes the chunks. With ``asynchronous=True`` the
client asks for whole chunks in the background and executes them itself (the server's execution mode,
read from its ``info``), so ``act`` returns at once while the next chunk is computed: a background thread
sends the request and puts the reply on a thread-safe queue, ``act`` takes arrived chunks from it. A chunk
that arrives ``d`` steps after its observation is aligned to the present step (its first ``d`` actions are
skipped, never replayed); only when no chunk covers the present step does ``act`` wait. ``delay_steps=d``
makes the delay exactly ``d`` steps instead (a chunk is used from ``d`` steps after its request on, waiting
for it if needed): a deterministic simulation of inference latency for evaluation.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from concurrent.futures import Future
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from actionprior.inference.execution import ChunkExecutor, ExecutionConfig, check_coverage
from actionprior.inference.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    REPLY_LIMITS,
    bounded_text,
    decode,
    encode,
)


class PolicyServerError(RuntimeError):
    """The server refused a request (malformed observation, ...) or failed; the server's reason is the text."""


class PolicyClient:
    def __init__(
        self,
        url: str,
        timeout: float = 60.0,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        asynchronous: bool = False,
        delay_steps: int | None = None,
    ):
        if delay_steps is not None and (not asynchronous or delay_steps < 0):
            raise ValueError(
                "delay_steps (>= 0) simulates a delay of the asynchronous client: set asynchronous=True"
            )
        self.url = url
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.asynchronous = asynchronous
        self.delay_steps = delay_steps
        self.last_inference_ms = 0.0  # server-side time of the last answer
        self.last_model_ms = 0.0  # model time when the last answer replanned, else 0
        self.last_replanned = False
        self.last_switched = False
        self.last_delay_steps = 0  # asynchronous: steps between the last chunk's request and its arrival
        self.waited_steps = 0  # asynchronous: steps at which act() had to wait for a chunk (this episode)
        self._info: dict[str, Any] | None = None
        try:
            self._ws: ClientConnection = connect(
                url, open_timeout=timeout, max_size=2 * max_message_bytes, compression=None
            )
        except (OSError, TimeoutError) as exc:
            raise ConnectionError(
                f"cannot reach the policy server at {url} ({exc}); start one with `actionprior serve --ckpt ...`"
            ) from exc
        self._ws_lock = threading.Lock()  # one request on the wire at a time
        if asynchronous:
            self._requests: queue.Queue[tuple[bytes, Future, int | None] | None] = queue.Queue()
            self._arrivals: queue.Queue[tuple[int, Future]] = queue.Queue()  # answered chunk requests
            self._worker = threading.Thread(target=self._serve_requests, name="policy-client", daemon=True)
            self._worker.start()
            info = self.info()
            self._replan_every = int(info["replan_every"])
            self._history_len = int(info.get("history_len") or 0)
            mode = dict(info.get("execution") or {})
            mode.pop("delay_steps", None)  # the delay is this client's
            self._execution = ExecutionConfig(**mode)
            if delay_steps is not None and info.get("chunk_len"):
                check_coverage(int(info["chunk_len"]), self._replan_every, delay_steps)
            self._reset_episode()

    # ------------------------------------------------------------------ transport
    def _exchange(self, payload: bytes) -> dict[str, Any]:
        with self._ws_lock:
            try:
                self._ws.send(payload)
                raw = self._ws.recv(timeout=self.timeout)
            except ConnectionClosed as exc:
                why = (
                    bounded_text(exc.rcvd.reason, 200) if exc.rcvd and exc.rcvd.reason else "no reason given"
                )
                raise PolicyServerError(
                    f"the policy server at {self.url} closed the connection: {why}"
                ) from exc
            except TimeoutError as exc:
                raise PolicyServerError(
                    f"no reply from the policy server at {self.url} in {self.timeout} s"
                ) from exc
        reply = decode(raw, self.max_message_bytes, REPLY_LIMITS)
        if not isinstance(reply, dict) or "ok" not in reply:
            raise PolicyServerError(f"unexpected reply from {self.url}: {reply!r:.200}")
        version = reply.get("version")
        if version != PROTOCOL_VERSION:
            said = "no version (an older actionprior)" if version is None else f"version {version!r:.20}"
            raise PolicyServerError(
                f"the policy server at {self.url} speaks protocol {said}, this client version {PROTOCOL_VERSION}; "
                "use the same actionprior version on client and server"
            )
        if not reply["ok"]:
            raise PolicyServerError(bounded_text(str(reply.get("error", "unknown error")), 2000))
        return reply

    def _serve_requests(self) -> None:
        """The background thread of an asynchronous client: every request goes through here, in order."""
        while (item := self._requests.get()) is not None:
            payload, result, chunk_step = item
            try:
                result.set_result(self._exchange(payload))
            except BaseException as exc:  # handed to the caller, which raises it
                result.set_exception(exc)
            if chunk_step is not None:
                self._arrivals.put((chunk_step, result))

    def _submit(self, request: dict[str, Any], chunk_step: int | None = None) -> Future:
        """Queue a request for the background thread; a chunk request's answer also goes to the arrivals."""
        result: Future = Future()
        self._requests.put((encode({**request, "version": PROTOCOL_VERSION}), result, chunk_step))
        return result

    def _call(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.asynchronous:
            return self._submit(request).result()
        return self._exchange(encode({**request, "version": PROTOCOL_VERSION}))

    # ------------------------------------------------------------------ policy interface
    def act(self, observation: dict[str, Any]) -> np.ndarray:
        if self.asynchronous:
            return self._act_async(observation)
        reply = self._call({"type": "act", "observation": observation})
        self.last_inference_ms = float(reply["inference_ms"])
        self.last_model_ms = float(reply.get("model_ms", 0.0))
        self.last_replanned = bool(reply.get("replanned", False))
        self.last_switched = bool(reply.get("switched", self.last_replanned))
        return reply["action"]

    def reset(self) -> None:
        if self.asynchronous:
            with contextlib.suppress(
                Exception
            ):  # a reply on its way belongs to the old episode, its error too
                self._drain(wait=True)
            self._reset_episode()
        self._call({"type": "reset"})

    def info(self) -> dict[str, Any]:
        if self._info is None:
            self._info = self._call({"type": "info"})["info"]
        return self._info

    def normalize_action(self, embodiment: str, actions: np.ndarray) -> np.ndarray | None:
        """Actions in the served policy's normalised units (None when the server does not say them)."""
        affine = (self.info().get("action_normalization") or {}).get(embodiment)
        if not affine:
            return None
        center = np.asarray(affine["center"], np.float32)
        scale = np.asarray(affine["scale"], np.float32)
        return ((np.asarray(actions, np.float32) - center) / scale).astype(np.float32)

    def send_raw(self, payload: bytes) -> dict[str, Any]:
        """Send pre-encoded bytes and return the decoded reply without raising (for diagnostics)."""
        with self._ws_lock:
            self._ws.send(payload)
            return decode(self._ws.recv(timeout=self.timeout), self.max_message_bytes, REPLY_LIMITS)

    def close(self) -> None:
        if self.asynchronous and self._worker.is_alive():
            self._requests.put(None)
            self._worker.join(self.timeout)
        self._ws.close()

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ asynchronous execution
    def _reset_episode(self) -> None:
        self._executor = ChunkExecutor(self._replan_every, self._execution)
        self._pending: int | None = None  # step of the request in flight
        self._executed: list[tuple[np.ndarray, np.ndarray]] = []  # since the last request
        self.last_delay_steps = 0
        self.waited_steps = 0

    def _drain(self, wait: bool) -> None:
        """Take arrived chunks into the executor (``wait``: until the request in flight has answered)."""
        while self._pending is not None:
            try:
                start, result = self._arrivals.get(block=wait, timeout=self.timeout if wait else None)
            except queue.Empty:
                if wait:
                    raise PolicyServerError(f"no chunk from {self.url} in {self.timeout} s") from None
                return
            self._pending = None
            reply = result.result()  # raises the request's error here, in the control loop
            if int(reply["start_step"]) != start:
                raise PolicyServerError(
                    f"chunk for step {reply['start_step']} arrived, expected step {start}"
                )
            step = self._executor.step
            if self.delay_steps is None or self._executor.last_request is None:
                arrival = step  # when it came (the first chunk of an episode is waited for)
            else:
                arrival = max(step, start + self.delay_steps)
            self._executor.add(np.asarray(reply["chunk"], np.float32), start, arrival=arrival)
            self.last_delay_steps = arrival - start
            self.last_inference_ms = float(reply["inference_ms"])
            self.last_model_ms = float(reply.get("model_ms", 0.0))

    def _request_chunk(self, observation: dict[str, Any], step: int) -> None:
        request: dict[str, Any] = {
            "type": "chunk",
            "observation": observation,
            "step": step,
            # frozen by rtc: the fixed delay, or the last one measured
            "delay_steps": self.delay_steps if self.delay_steps is not None else self.last_delay_steps,
        }
        recent = self._executed[-self._history_len :] if self._history_len else []
        if recent:
            request["executed"] = {
                "states": np.stack([s for s, _ in recent]),
                "actions": np.stack([a for _, a in recent]),
            }
        self._executed = []
        self._submit(request, chunk_step=step)
        self._pending = step

    def _act_async(self, observation: dict[str, Any]) -> np.ndarray:
        executor = self._executor
        step = executor.step
        self._drain(wait=False)
        self.last_replanned = self._pending is None and executor.due()
        if self.last_replanned:
            self._request_chunk(observation, step)
        if (
            self._pending is not None
            and self.delay_steps is not None
            and step >= self._pending + self.delay_steps
        ):
            self._drain(wait=True)  # simulated delay: the chunk is due now, however fast the server was
        if not executor.covered(step):
            self.waited_steps += int(step > 0)
            self._drain(wait=True)
        action = executor.next_action()
        self.last_switched = executor.switched
        self._executed.append((np.asarray(observation["state"], np.float32), action))
        return action
