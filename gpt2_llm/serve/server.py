"""Run the app under uvicorn: listen at once, load the model in the background, stop gracefully.

    start listening --> /health is 503 --> the model loads (a thread) --> /health is 200
    SIGTERM or Ctrl-C --> stop accepting, let in-flight responses finish (at most GRACE seconds),
                          stop the engine, exit 0

A model that cannot be loaded ends the server: the error is one line (a UserError), exit code 1;
nothing else is printed before the model is ready (then one line says where it is served).
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable

from basics import UserError

GRACE = 5  # seconds in-flight responses get to finish after SIGTERM


def check_options(host: str, port: int, max_batch: int, max_queue: int, request_timeout: float | None) -> None:
    problems = []
    if not 0 <= port <= 65535:
        problems.append(f"--port must be between 0 and 65535, got {port}")
    if max_batch < 1:
        problems.append(f"--max-batch must be at least 1, got {max_batch}")
    if max_queue < 1:
        problems.append(f"--max-queue must be at least 1, got {max_queue}")
    if request_timeout is not None and not request_timeout > 0:
        problems.append(f"--request-timeout must be a positive number of seconds, got {request_timeout}")
    if not host:
        problems.append("--host is empty")
    if problems:
        raise UserError("; ".join(problems))
    try:  # a taken port or a foreign address: one line now, not uvicorn's log after the start
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def serve(load: Callable[[], object], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          cors_origins: tuple[str, ...] = (), max_batch: int = 16, max_queue: int = 64,
          request_timeout: float | None = 600.0, say: Callable[[str], None] = print) -> int:  # fmt: skip
    """Serve until SIGTERM or Ctrl-C (exit code 0); a UserError if the model cannot be loaded."""
    import uvicorn

    from .app import create_app

    check_options(host, port, max_batch, max_queue, request_timeout)
    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_load_error(exc: BaseException) -> None:
        failure.append(exc)
        server.should_exit = True

    def loaded_then_say():
        loaded = load()
        say(f"serving {loaded.name} at http://{host_for_url(host)}:{port} ({loaded.model.num_parameters():,} "
            f"parameters, context {loaded.model.config.block_size}; batch up to {max_batch}, "
            f"{'API key required' if api_key else 'no API key'})")
        return loaded

    app = create_app(loaded_then_say, api_key=api_key, cors_origins=cors_origins, max_batch=max_batch,
                     max_queue=max_queue, request_timeout=request_timeout, on_load_error=on_load_error)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", access_log=False,
                            timeout_graceful_shutdown=GRACE, lifespan="on")
    server = uvicorn.Server(config)
    stopped = []
    if threading.current_thread() is threading.main_thread():
        # uvicorn catches SIGTERM and SIGINT while it runs, shuts down gracefully, then raises the
        # signal again for the handler that was there before: these, so that the exit is a clean 0.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stopped.append(signum))
    server.run()
    if failure:
        exc = failure[0]
        if isinstance(exc, UserError):
            raise UserError(str(exc)) from None
        raise exc  # a bug: its traceback
    say("stopped" + (" (signal)" if stopped else ""))
    return 0


def host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
