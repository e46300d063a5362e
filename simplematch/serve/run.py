"""Start the service: validate everything first (model loads, port free), then hand over to uvicorn.

With ``workers > 1`` uvicorn starts that many processes, each building its own app (one onnxruntime session
each) through :func:`app_from_env`; the settings travel as JSON in the environment, the token in
``SMATCH_SERVE_TOKEN``.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from simplematch.errors import SimpleMatchError
from simplematch.extras import require
from simplematch.serve.settings import LOOPBACK, ServeSettings

SETTINGS_ENV = "SMATCH_SERVE_SETTINGS"
TOKEN_ENV = "SMATCH_SERVE_TOKEN"
MAX_CONCURRENCY = 256  # open connections per worker before uvicorn answers 503 (bounded memory)


def app_from_env() -> Any:
    """uvicorn's factory in each worker process."""
    from simplematch.serve.app import create_app

    return create_app(ServeSettings.from_json(os.environ[SETTINGS_ENV]), os.environ.get(TOKEN_ENV) or None)


def _check_port(host: str, port: int) -> None:
    """Refuse a busy port or an unusable host in one line, before the model is loaded and uvicorn starts."""
    if not 0 <= port <= 65535:
        raise SimpleMatchError(f"--port {port} is not a TCP port", "pass a port in 1..65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            raise SimpleMatchError(
                f"cannot listen on {host}:{port} ({err.strerror or err})",
                "pick a free --port, or a --host address of this machine",
            ) from err


def check_settings(settings: ServeSettings, workers: int) -> None:
    checks = (
        (settings.cache_mib >= 0, "--cache-mib", "0 or more (0: no cache)"),
        (settings.max_body_mib > 0, "--max-body-mib", "a positive size"),
        (settings.max_image_mpix > 0, "--max-image-mpix", "a positive size"),
        (settings.max_keypoints >= 1, "--max-keypoints", "1 or more"),
        (settings.body_timeout_s > 0, "--body-timeout", "a positive number of seconds"),
        (1 <= settings.max_batch <= 64, "--max-batch", "1..64"),
        (workers >= 1, "--workers", "1 or more"),
    )
    for ok, flag, want in checks:
        if not ok:
            raise SimpleMatchError(f"{flag} is out of range", f"pass {want}")
    if not Path(settings.model).is_file():
        raise SimpleMatchError(
            f"model not found: {settings.model}", "pass an .onnx written by `smatch export`"
        )


def run_server(
    settings: ServeSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    token: str | None = None,
    log: Callable[[str], Any] = lambda msg: print(msg, file=sys.stderr),
) -> None:
    """Serve until interrupted. Every problem found before listening is a one-line SimpleMatchError."""
    require("serve", "`smatch serve`", ("fastapi", "uvicorn", "python_multipart"))
    import uvicorn

    from simplematch.serve.app import create_app

    check_settings(settings, workers)
    _check_port(host, port)
    if host not in LOOPBACK:
        log(
            f"warning: listening on {host}: anyone who can reach this address can use the model"
            + ("" if token else f"; pass --token or set {TOKEN_ENV} to require a bearer token")
        )
    common = dict(host=host, port=port, limit_concurrency=MAX_CONCURRENCY, server_header=False)
    if workers == 1:
        app = create_app(settings, token)  # loads the model now: a bad model fails here, in one line
        log(f"serving {settings.model} on http://{_url_host(host)}:{port}/ (API docs: /docs), Ctrl-C stops")
        uvicorn.run(app, **common, log_level="warning")
        return
    from simplematch.runtime import Matcher

    Matcher(settings.model, device=settings.device, allow_fallback=settings.allow_fallback)  # fail early
    os.environ[SETTINGS_ENV] = settings.to_json()
    if token:
        os.environ[TOKEN_ENV] = token
    log(f"serving {settings.model} on http://{_url_host(host)}:{port}/ with {workers} workers, Ctrl-C stops")
    uvicorn.run(
        "simplematch.serve.run:app_from_env", factory=True, workers=workers, **common, log_level="warning"
    )


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
