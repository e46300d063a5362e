"""``smatch serve``: the runtime as an HTTP service with a page (needs the [serve] extra). Registered on the
``smatch`` app by :mod:`simplematch.cli.app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    model: Annotated[Path, typer.Argument(help="Exported .onnx (or .engine) to serve.")],
    host: Annotated[
        str, typer.Option(help="Address to listen on (another than loopback warns).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    device: Annotated[str, typer.Option(help="cpu | cuda | tensorrt | tensorrt-fp16.")] = "cpu",
    workers: Annotated[int, typer.Option(help="Worker processes, one model session each.")] = 1,
    token: Annotated[
        str,
        typer.Option(
            envvar="SMATCH_SERVE_TOKEN", help="Require 'Authorization: Bearer TOKEN' (env var safer)."
        ),
    ] = None,
    allow_fallback: Annotated[bool, typer.Option(help="Run on CPU when CUDA is unavailable.")] = False,
    cache_mib: Annotated[float, typer.Option(help="Encoded-image cache bound per worker (MiB).")] = 256.0,
    max_body_mib: Annotated[float, typer.Option(help="Largest request body (MiB); 413 beyond.")] = 32.0,
    max_image_mpix: Annotated[float, typer.Option(help="Largest image (megapixels); 413 beyond.")] = 40.0,
    max_keypoints: Annotated[int, typer.Option(help="Most keypoints per request; 422 beyond.")] = 1000,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds for a request body to arrive; 408 after.")
    ] = 30.0,
    max_batch: Annotated[int, typer.Option(help="Micro-batch up to N concurrent encodes (1: off).")] = 8,
    cors_origin: Annotated[
        list[str], typer.Option(help="Allow browser calls from this origin (repeatable; default none).")
    ] = None,
) -> None:
    """Serve MODEL over HTTP: JSON API (/v1, docs at /docs) and an interactive page at /."""
    from simplematch.serve.run import run_server
    from simplematch.serve.settings import ServeSettings

    settings = ServeSettings(
        model=str(model), device=device, allow_fallback=allow_fallback, cache_mib=cache_mib,
        max_body_mib=max_body_mib, max_image_mpix=max_image_mpix, max_keypoints=max_keypoints,
        body_timeout_s=body_timeout, max_batch=max_batch, cors_origins=tuple(cors_origin or ()),
    )  # fmt: skip
    run_server(settings, host=host, port=port, workers=workers, token=token)
