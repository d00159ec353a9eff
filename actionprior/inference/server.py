"""Policy server: one policy behind a websocket, msgpack messages (see :mod:`protocol`), no pickle.

Each connection is one control stream (one robot, one episode at a time): it gets its own history and
chunks (:meth:`BasePolicy.fork`) while all connections share the weights. A client either asks for one action
per step (``act``: the server executes chunks as ``--execution`` says) or, asynchronously, for whole chunks
(``chunk``: the client executes them while the next is computed; the server keeps what ``rtc`` continues). Requests are validated
against the embodiment spec stored in the checkpoint; a malformed request is answered with an error
message and the server keeps serving. Binds to 127.0.0.1 unless told otherwise: the server executes
no code from clients, but it is an unauthenticated endpoint that drives a robot.

Abuse bounds: a request is size-checked and parsed under :data:`~protocol.REQUEST_LIMITS` (a map of
300,000 keys is refused from its header); error replies and log lines are cut to a few hundred characters
and never echo a client's input in full; rejected-request warnings are rate-limited (a count of the
suppressed ones is logged instead), so neither the log nor the memory grows with an abuser's traffic.
At most ``max_connections`` clients are served at once (each holds a thread and a forked policy); one more
is closed at once with code 1013 "try again later" and a reason the client raises as a one-line error.
"""

from __future__ import annotations

import argparse
import ipaddress
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.sync.server import Server, ServerConnection, serve

from actionprior.inference.base import BasePolicy
from actionprior.inference.execution import add_execution_arguments, execution_from_args
from actionprior.inference.observation import ObservationError
from actionprior.inference.protocol import (
    DEFAULT_MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    ProtocolError,
    bounded_text,
    check_request_version,
    decode,
    encode,
    error_reply,
)

log = logging.getLogger(__name__)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
DEFAULT_MAX_CONNECTIONS = 16
MAX_LOGGED_CHARS = 200
# websockets logs every connection at INFO; a client reconnecting in a loop would fill the log. Our own
# rate-limited lines report connections instead.
_WEBSOCKETS_LOG = logging.getLogger(f"{__name__}.websockets")
_WEBSOCKETS_LOG.setLevel(logging.WARNING)


class RateLimitedLog:
    """At most ``per_interval`` lines per ``interval_s`` (all connections together); the lines dropped
    meanwhile are counted and reported with the next line that gets through."""

    def __init__(self, logger: logging.Logger, per_interval: int = 10, interval_s: float = 10.0):
        self.logger, self.per_interval, self.interval_s = logger, per_interval, interval_s
        self._lock = threading.Lock()
        self._window_start = time.monotonic()
        self._emitted = 0
        self.suppressed = 0  # since the last line that got through

    def warning(self, message: str) -> bool:
        return self.log(logging.WARNING, message)

    def info(self, message: str) -> bool:
        return self.log(logging.INFO, message)

    def log(self, level: int, message: str) -> bool:
        with self._lock:
            now = time.monotonic()
            if now - self._window_start >= self.interval_s:
                self._window_start, self._emitted = now, 0
            if self._emitted >= self.per_interval:
                self.suppressed += 1
                return False
            self._emitted += 1
            dropped, self.suppressed = self.suppressed, 0
        suffix = f" ({dropped} similar messages suppressed)" if dropped else ""
        self.logger.log(level, "%s%s", bounded_text(message, MAX_LOGGED_CHARS), suffix)
        return True


class PolicyServer:
    """Serves ``policy`` on ``host:port``. ``port=0`` picks a free port (see :attr:`port`)."""

    def __init__(
        self,
        policy: BasePolicy,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ):
        if max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.policy = policy
        self.max_message_bytes = max_message_bytes
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self.rejections = RateLimitedLog(log)
        self.connections = RateLimitedLog(log, per_interval=20)  # a client reconnecting in a loop
        # The model is shared by all connections; one forward at a time keeps results deterministic
        # and memory bounded (CPU inference is already multi-threaded inside torch).
        self._model_lock = threading.Lock()
        # Messages a bit over the limit still arrive, so that they can be answered with an error;
        # websockets closes the connection (code 1009) only beyond this hard cap.
        self._server: Server = serve(
            self._handle_connection,
            host,
            port,
            max_size=2 * max_message_bytes + 1024 * 1024,
            compression=None,
            logger=_WEBSOCKETS_LOG,
        )
        self.host = host
        self.port = self._server.socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def start_in_thread(self) -> threading.Thread:
        """Serve from a daemon thread (tests, notebooks); stop with :meth:`shutdown`."""
        thread = threading.Thread(target=self.serve_forever, name="policy-server", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        self._server.shutdown()

    def __enter__(self) -> PolicyServer:
        self.start_in_thread()
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    def _handle_connection(self, ws: ServerConnection) -> None:
        peer = ws.remote_address  # read now: the socket is gone once the client has left
        if not self._slots.acquire(blocking=False):
            self.connections.warning(f"refused {peer}: {self.max_connections} clients already connected")
            # A close reason must fit in 123 bytes.
            ws.close(
                CloseCode.TRY_AGAIN_LATER,
                f"server busy: {self.max_connections} clients connected; retry later",
            )
            return
        try:
            policy = self.policy.fork()
            self.connections.info(f"client connected: {peer}")
            try:
                for message in ws:
                    ws.send(encode({**self.handle_message(policy, message), "version": PROTOCOL_VERSION}))
            except ConnectionClosed:
                pass
            self.connections.info(f"client disconnected: {peer}")
        finally:
            self._slots.release()

    def handle_message(self, policy: BasePolicy, message: bytes | str) -> dict[str, Any]:
        """One request → one reply. Never raises: every failure becomes an error reply."""
        start = time.perf_counter()
        try:
            request = decode(message, self.max_message_bytes)
            if not isinstance(request, dict) or not isinstance(request.get("type"), str):
                raise ProtocolError("request must be a map with a string 'type' ('act', 'reset' or 'info')")
            kind = request["type"]
            check_request_version(request)
            if kind in ("act", "chunk") and "observation" not in request:
                raise ProtocolError(f"'{kind}' request needs an 'observation' field")
            if kind == "act":
                with self._model_lock:
                    action = policy.act(request["observation"])
                return {
                    "ok": True,
                    "action": action,
                    "inference_ms": (time.perf_counter() - start) * 1e3,
                    "model_ms": policy.last_inference_ms if policy.last_replanned else 0.0,
                    "replanned": policy.last_replanned,
                    "switched": policy.last_switched,
                }
            if kind == "chunk":
                step = _count(request, "step")
                delay = _count(request, "delay_steps", default=0)
                executed = _executed(request.get("executed"))
                with self._model_lock:
                    chunk = policy.plan(request["observation"], step, delay, executed)
                return {
                    "ok": True,
                    "chunk": chunk,
                    "start_step": step,
                    "inference_ms": (time.perf_counter() - start) * 1e3,
                    "model_ms": policy.last_inference_ms,
                }
            if kind == "reset":
                policy.reset()
                return {"ok": True}
            if kind == "info":
                return {"ok": True, "info": policy.describe()}
            raise ProtocolError(f"unknown request type '{kind}'; expected 'act', 'chunk', 'reset' or 'info'")
        except (ProtocolError, ObservationError) as exc:
            message = str(exc)
            self.rejections.warning(f"rejected request: {message}")
            return error_reply(message)
        except Exception as exc:  # a bug or a model failure must not take the server down
            log.exception("internal error while handling a request")
            return error_reply(f"internal server error: {type(exc).__name__}: {exc}")


# Bounds of a chunk request's numbers: a step count far beyond any episode, a delay beyond any chunk.
MAX_STEP = 2**31 - 1
MAX_EXECUTED = 4096


def _count(request: dict[str, Any], key: str, default: int | None = None) -> int:
    value = request.get(key, default)
    if value is None:
        raise ProtocolError(f"'chunk' request needs an integer '{key}'")
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_STEP:
        raise ProtocolError(
            f"'{key}' must be an integer in [0, {MAX_STEP}], got {bounded_text(repr(value), 40)}"
        )
    return value


def _executed(field: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The optional ``executed`` map of a chunk request as (states [k, Ds], actions [k, Da]); the policy checks
    the widths against the embodiment."""
    if field is None:
        return None
    if not isinstance(field, dict) or set(field) != {"states", "actions"}:
        raise ProtocolError("'executed' must be a map with exactly 'states' and 'actions' arrays")
    states, actions = field["states"], field["actions"]
    for name, arr in (("states", states), ("actions", actions)):
        if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.dtype.kind != "f":
            raise ProtocolError(f"'executed.{name}' must be a 2-D float array")
        if len(arr) > MAX_EXECUTED:
            raise ProtocolError(f"'executed.{name}' holds {len(arr)} steps; at most {MAX_EXECUTED}")
    if len(states) != len(actions):
        raise ProtocolError(f"'executed' has {len(states)} states but {len(actions)} actions")
    return states, actions


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="actionprior serve", description="Serve a trained policy over websockets."
    )
    p.add_argument(
        "--ckpt", required=True, help="Stage 2 checkpoint (.ckpt), exported policy folder or hub id"
    )
    p.add_argument("--host", default=DEFAULT_HOST, help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--replan-every",
        type=int,
        default=None,
        help="steps between chunks (default: the chunk length for replan, 1 for ensemble, half the chunk for rtc)",
    )
    p.add_argument("--sample-steps", type=int, default=None, help="Euler steps of the flow decoder")
    p.add_argument(
        "--compile-decoder",
        action="store_true",
        help="compile the decoder's Euler loop (torch.compile; CUDA graphs on a GPU); the first chunk pays it",
    )
    p.add_argument(
        "--stats",
        default=None,
        help="a dataset's stats.json (or folder) whose statistics the checkpoint must have been trained "
        "with, or a fingerprint: the checkpoint's normalisation fingerprint or the `fingerprint` field of "
        "that stats.json",
    )
    add_execution_arguments(p, delay=False)  # an asynchronous client tells its delay with each request
    p.add_argument("--image-size", type=int, default=None, help="if the checkpoint does not record it")
    p.add_argument("--history-len", type=int, default=None, help="if the checkpoint does not record it")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch intra-op threads; 1 is fastest for tiny models on a loaded machine (default: torch's choice)",
    )
    p.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    p.add_argument(
        "--max-connections",
        type=int,
        default=DEFAULT_MAX_CONNECTIONS,
        help="clients served at once; one more is refused with 'server busy' (default: %(default)s)",
    )
    return p


def cli_main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console
    from rich.logging import RichHandler

    from actionprior.inference.policy import Policy

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(show_path=False)])
    console = Console()
    if not _is_loopback(args.host):
        console.print(
            f"[yellow]warning:[/] binding to {args.host}: the policy server has no authentication; "
            "anyone who can reach this port can command the robot"
        )
    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    policy = Policy.load(
        args.ckpt,
        device=args.device,
        replan_every=args.replan_every,
        sample_steps=args.sample_steps,
        expected_stats=args.stats,
        image_size=args.image_size,
        history_len=args.history_len,
        compile_decoder=args.compile_decoder,
        execution=execution_from_args(args),
    )
    server = PolicyServer(policy, args.host, args.port, args.max_message_bytes, args.max_connections)
    console.print(f"serving [bold]{args.ckpt}[/] on [bold]{server.url}[/] (Ctrl-C to stop)")
    console.print(policy.describe())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        console.print("stopping")
    finally:
        server.shutdown()
    return 0
