"""``smatch serve``: the runtime as an HTTP service with a page (needs the [serve] extra). Registered on the
``smatch`` app by :mod:`simplematch.cli.app`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Exported .onnx (or .engine) to serve.")],
    host: Annotated[
        str, typer.Option(metavar="ADDRESS", help="Address to listen on (another than loopback warns).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(metavar="N", help="TCP port.")] = 8000,
    device: Annotated[
        str, typer.Option(metavar="<cpu|cuda|tensorrt|tensorrt-fp16>", help="Where the model runs.")
    ] = "cpu",
    workers: Annotated[int, typer.Option(metavar="N", help="Worker processes, one model session each.")] = 1,
    token: Annotated[
        str,
        typer.Option(
            envvar="SMATCH_SERVE_TOKEN",
            metavar="TOKEN",
            help="Require 'Authorization: Bearer TOKEN' (env var safer). [default: none, no token]",
        ),
    ] = None,
    allow_fallback: Annotated[bool, typer.Option(help="Run on CPU when CUDA is unavailable.")] = False,
    cache_mib: Annotated[
        float, typer.Option(metavar="MIB", help="Encoded-image cache bound per worker (MiB).")
    ] = 256.0,
    max_body_mib: Annotated[
        float, typer.Option(metavar="MIB", help="Largest request body (MiB); 413 beyond.")
    ] = 32.0,
    max_image_mpix: Annotated[
        float, typer.Option(metavar="MPIX", help="Largest image (megapixels); 413 beyond.")
    ] = 40.0,
    max_keypoints: Annotated[
        int, typer.Option(metavar="N", help="Most keypoints per request; 422 beyond.")
    ] = 1000,
    body_timeout: Annotated[
        float, typer.Option(metavar="SECONDS", help="Seconds for a request body to arrive; 408 after.")
    ] = 30.0,
    max_batch: Annotated[
        int, typer.Option(metavar="N", help="Micro-batch up to N concurrent encodes (1: off).")
    ] = 8,
    cors_origin: Annotated[
        list[str],
        typer.Option(
            metavar="ORIGIN", help="Allow browser calls from this origin (repeatable). [default: none]"
        ),
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
