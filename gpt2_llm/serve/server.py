"""Run the app under uvicorn: listen at once, load the model in the background, stop gracefully.

    start listening --> /health is 503 --> the model loads (a thread) --> /health is 200
    SIGTERM or Ctrl-C --> stop accepting, let in-flight responses finish (at most GRACE seconds),
                          stop the engine, exit 0

A model that cannot be loaded ends the server: the error is one line (a UserError), exit code 1;
nothing else is printed before the model is ready (then one line says where it is served). An
engine that stops on an error it cannot contain ends it too (exit code 1, the traceback in the log
once), so that a supervisor (systemd's Restart=on-failure, a container's restart policy) starts
it again; /health answers 503 from that moment.
"""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable

from basics import UserError

GRACE = 5  # seconds in-flight responses get to finish after SIGTERM


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def check_options(host: str, port: int, max_batch: int, max_queue: int, request_timeout: float | None,
                  max_body: int = 1, prefix_cache_mb: float = 0) -> None:  # fmt: skip
    problems = []
    if not 0 <= port <= 65535:
        problems.append(f"--port must be between 0 and 65535, got {port}")
    if max_batch < 1:
        problems.append(f"--max-batch must be at least 1, got {max_batch}")
    if max_queue < 1:
        problems.append(f"--max-queue must be at least 1, got {max_queue}")
    if request_timeout is not None and not request_timeout > 0:
        problems.append(f"--request-timeout must be a positive number of seconds, got {request_timeout}")
    if max_body < 1:
        problems.append(f"--max-body must be at least 1 byte, got {max_body}")
    if not prefix_cache_mb >= 0:
        problems.append(f"--prefix-cache-mb must be 0 (off) or more, got {prefix_cache_mb}")
    if not host:
        problems.append("--host is empty")
    if problems:
        raise UserError("; ".join(problems))
    try:  # a taken port or a foreign address: one line now, not uvicorn's log after the start
        socket.create_server((host, port), family=socket.AF_INET6 if ":" in host else socket.AF_INET).close()
    except OSError as e:
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The line said when the server listens beyond this machine without a key."""
    if api_key is not None or host in LOOPBACK:
        return None
    return (f"warning: serving on {host} without an API key: anyone who can reach this port can use the model "
            f"(set GPT2_API_KEY or --api-key-file)")


def api_key_of(given: str | None, key_file: str | None, environment: str | None) -> str | None:
    """The API key: --api-key, else the first line of --api-key-file, else $GPT2_API_KEY, else none;
    surrounding whitespace is not part of it (as on the presented token: app.normalised_key)."""
    if given is not None and key_file is not None:
        raise UserError("give --api-key or --api-key-file, not both")
    if key_file is not None:
        try:
            with open(key_file, encoding="utf-8") as f:
                given = f.readline()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read the API key file {key_file}: {getattr(e, 'strerror', None) or e}") from None
        if not given.strip():
            raise UserError(f"the API key file {key_file} is empty")
    elif given is None:
        given = environment or None
    if given is not None and not given.strip():
        raise UserError("--api-key is empty")
    return None if given is None else given.strip()


def serve(load: Callable[[], object], host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          cors_origins: tuple[str, ...] = (), max_batch: int = 16, max_queue: int = 64,
          request_timeout: float | None = 600.0, batch_invariant: bool = False, max_body: int | None = None,
          prefix_cache_mb: float = 0, say: Callable[[str], None] = print) -> int:  # fmt: skip
    """Serve until SIGTERM or Ctrl-C (exit code 0); a UserError if the model cannot be loaded or the
    engine stops on an error it cannot contain."""
    import uvicorn

    from .app import MAX_BODY, create_app

    max_body = MAX_BODY if max_body is None else max_body
    check_options(host, port, max_batch, max_queue, request_timeout, max_body)
    if exposure_warning(host, api_key):
        say(exposure_warning(host, api_key))
    failure: list[BaseException] = []
    server: uvicorn.Server | None = None

    def on_error(exc: BaseException) -> None:
        failure.append(exc)
        server.should_exit = True

    def loaded_then_say():
        loaded = load()
        say(f"serving {loaded.name} at http://{host_for_url(host)}:{port} ({loaded.model.num_parameters():,} "
            f"parameters, context {loaded.model.config.block_size}"
            f"{f', a classifier of {len(loaded.classes)} classes' if loaded.classes else ''}; batch up to {max_batch}, "
            f"{'API key required' if api_key else 'no API key'})")
        return loaded

    app = create_app(loaded_then_say, api_key=api_key, cors_origins=cors_origins, max_batch=max_batch,
                     max_queue=max_queue, request_timeout=request_timeout, batch_invariant=batch_invariant,
                     max_body=max_body, prefix_cache_mb=prefix_cache_mb, on_error=on_error)
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
        if getattr(app.state.serving, "served", None) is not None:  # the engine stopped (its traceback is logged)
            from .engine import one_line

            raise UserError(f"the engine stopped on an error, so the server has stopped: {one_line(exc)}")
        raise exc  # a bug while loading: its traceback
    say("stopped" + (" (signal)" if stopped else ""))
    return 0


def host_for_url(host: str) -> str:
    return f"[{host}]" if ":" in host else host
