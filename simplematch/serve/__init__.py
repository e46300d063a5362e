"""``smatch serve``: the torch-free runtime behind HTTP, with an interactive page (``GET /``).

Needs the ``[serve]`` extra (FastAPI, uvicorn, python-multipart). FastAPI because it gives the versioned
JSON API its OpenAPI schema and documentation page for free and validates request bodies; uvicorn because it
is the ASGI server FastAPI is built and tested against, with multi-process ``--workers``. The service
imports only the runtime (numpy + onnxruntime + Pillow), never torch.

Modules: :mod:`.app` (routes, error JSON), :mod:`.limits` (body size, slow clients, bearer token),
:mod:`.cache` (features by content hash, LRU bounded in MiB), :mod:`.encoder` (one model lane per worker),
:mod:`.run` (settings, uvicorn), :mod:`.client` (a stdlib client, for scripts and the load test).
"""
