"""The HTTP service: versioned JSON endpoints over one :class:`Matcher` per worker, and the page at ``/``.

Every match answer is :func:`simplematch.runtime.infer.build_report`'s JSON, the one ``smatch infer --out``
writes. Uploads are decoded in memory with the runtime's image rules (:func:`simplematch.image.decode_image`,
plus a pixel budget) and never touch the disk; nothing is ever fetched from a URL. Every error is
``{"error": ..., "fix": ...}`` with a 4xx status (5xx only for a fault of the server itself), and a failed
request leaves the worker as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartParser

import simplematch
from simplematch.confidence import DEFAULT_CONFIDENCE
from simplematch.config import CONFIDENCE_CUES as CUES  # the choices: the computed cues and "calibrated"
from simplematch.errors import SimpleMatchError
from simplematch.image import ImageTooLargeError, decode_image
from simplematch.runtime import Features, Matcher
from simplematch.runtime.infer import build_report, decode_keypoints
from simplematch.serve.cache import Entry, FeatureCache, content_id
from simplematch.serve.encoder import EncodeLane
from simplematch.serve.limits import RequestGuard
from simplematch.serve.settings import ServeSettings

API = "/v1"
DOCS_FIX = "see the API documentation at /docs"
HASH = r"^[0-9a-f]{64}$"


class HTTPError(Exception):
    """A refused request: status plus the one-line problem and fix of the JSON error."""

    def __init__(self, status: int, problem: str, fix: str | None) -> None:
        super().__init__(problem)
        self.status, self.problem, self.fix = status, problem, fix or DOCS_FIX


def _user_error(err: SimpleMatchError) -> HTTPError:
    return HTTPError(413 if isinstance(err, ImageTooLargeError) else 422, err.problem, err.fix)


class CachedMatch(BaseModel):
    """Match keypoints between two images uploaded before with ``POST /v1/images``."""

    source: str = Field(pattern=HASH, description="`id` of the source image (from POST /v1/images).")
    target: str = Field(pattern=HASH, description="`id` of the target image.")
    keypoints: Any = Field(
        description='[[x, y], ...] or {"keypoints": [[x, y], ...]} in source pixels, or a match answer '
        "(its targets become the sources)."
    )
    confidence: str = Field(DEFAULT_CONFIDENCE, description=f"Confidence cue: {' | '.join(CUES)}.")
    min_confidence: float | None = Field(None, ge=0.0, le=1.0, description="Reject matches below this.")
    source_name: str | None = Field(None, max_length=256, description="Name reported as `source`.")
    target_name: str | None = Field(None, max_length=256, description="Name reported as `target`.")


class Service:
    """The worker's state: model, encode lane, cache, limits. Methods are blocking; routes run them in
    threads (the model runs in the lane's thread), so the event loop never blocks."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.matcher = Matcher(
            settings.model, device=settings.device, allow_fallback=settings.allow_fallback,
            batch_size=settings.max_batch,
        )  # fmt: skip
        self.lane = EncodeLane(self.matcher, settings.max_batch)
        # CPU work (decode, resize, matching) in a pool as wide as the cores, not the framework's 40-thread
        # pool: more threads cannot run faster, and each one grows its own malloc arena (measured: ~100 MiB
        # more resident memory under load, BENCHMARKS.md).
        self.pool = ThreadPoolExecutor(max(2, os.cpu_count() or 2), thread_name_prefix="smatch-cpu")
        self.cache = FeatureCache(settings.cache_mib)
        self.one_graph = bool(getattr(self.matcher.backend, "matches", False))

    def close(self) -> None:
        self.lane.close()
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, fn: Callable[[], Any]) -> Any:
        """``fn()`` on the CPU pool, awaited: the event loop keeps serving meanwhile."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn)

    # -- images ------------------------------------------------------------------------------------------
    def decode(self, data: bytes, name: str) -> np.ndarray:
        if not data:
            raise HTTPError(422, f"image {name} is empty", "upload a PNG or JPEG file")
        try:
            return decode_image(data, name, max_pixels=self.settings.max_image_pixels)
        except SimpleMatchError as err:
            raise _user_error(err) from err

    async def features(self, data: bytes, name: str, timing: dict[str, float]) -> tuple[str, Entry, bool]:
        """(id, entry, was cached) of an upload: from the cache, else decoded, resized and encoded."""
        key = await self.run(lambda: content_id(data)) if len(data) > 2**20 else content_id(data)  # ~3 ms/MiB
        entry = self.cache.get(key)
        if entry is not None:
            return key, entry, True
        t0 = time.perf_counter()
        prepared = await self.run(lambda: self.matcher.prepare(self.decode(data, name)))
        t1 = time.perf_counter()
        feats: Features = await asyncio.wrap_future(self.lane.submit(prepared))
        timing["preprocess"] += (t1 - t0) * 1e3
        timing["encode"] += (time.perf_counter() - t1) * 1e3
        entry = Entry(feats)
        self.cache.put(key, entry)
        return key, entry, False

    # -- matching ----------------------------------------------------------------------------------------
    def keypoints(self, obj: Any, src_hw: tuple[int, int]) -> np.ndarray:
        try:
            kps = decode_keypoints(obj, src_hw, "keypoints")
        except SimpleMatchError as err:
            raise _user_error(err) from err
        if len(kps) > self.settings.max_keypoints:
            raise HTTPError(
                422, f"{len(kps)} keypoints in one request (limit {self.settings.max_keypoints})",
                "split them over several requests",
            )  # fmt: skip
        return kps

    def match(self, src: Entry, trg: Entry, kps_obj: Any, names: tuple[str, str], opts: dict, timing) -> dict:
        kps = self.keypoints(kps_obj, src.features.hw)
        t0 = time.perf_counter()
        try:
            result = self.matcher.match(src.features, trg.features, kps, **opts)
        except SimpleMatchError as err:
            raise _user_error(err) from err
        timing["match"] = (time.perf_counter() - t0) * 1e3
        result.timing_ms = timing
        return self.report(result, names, opts, trg.features.hw)

    def match_in_graph(
        self, src: bytes, trg: bytes, kps_obj: Any, names: tuple[str, str], opts: dict
    ) -> dict:
        """A one-graph model (``smatch export --with-matching``): ``smatch infer``'s own path, the matching
        inside the graph, so the answer is that command's to the last bit (no cache: the graph takes
        images)."""
        src_img, trg_img = self.decode(src, names[0]), self.decode(trg, names[1])
        kps = self.keypoints(kps_obj, src_img.shape[:2])
        try:
            result = self.matcher.match_images(src_img, trg_img, kps, **opts)
        except SimpleMatchError as err:
            raise _user_error(err) from err
        return self.report(result, names, opts, trg_img.shape[:2])

    def report(self, result, names: tuple[str, str], opts: dict, trg_hw: tuple[int, int]) -> dict:
        return build_report(
            result, source=names[0], target=names[1], model=str(self.settings.model),
            provider=self.matcher.provider, trg_hw=trg_hw, **opts,
        )  # fmt: skip

    def options(self, confidence: str, min_confidence: float | None) -> dict:
        if confidence not in CUES:
            raise HTTPError(422, f"unknown confidence '{confidence}'", f"use one of {', '.join(CUES)}")
        if min_confidence is not None and not 0.0 <= min_confidence <= 1.0:
            raise HTTPError(422, f"min_confidence {min_confidence} is outside [0, 1]", "pass e.g. 0.5")
        return {"confidence": confidence, "min_confidence": min_confidence}

    def model_info(self) -> dict[str, Any]:
        meta = {
            k: v for k, v in dataclasses.asdict(self.matcher.meta).items() if k not in ("config", "parity")
        }
        return {
            "model": str(self.settings.model),
            "provider": self.matcher.provider,
            "runtime": self.matcher.runtime,
            "version": simplematch.__version__,
            "one_graph": self.one_graph,
            "meta": meta,
            "confidences": list(CUES),
            "default_confidence": DEFAULT_CONFIDENCE,
            "limits": self.settings.limits(),
            "cache": self.cache.stats(),
            "encode": {
                "max_batch": self.lane.max_batch,
                "runs": self.lane.batches,
                "images": self.lane.images,
            },
        }


def _timing() -> dict[str, float]:
    return {"preprocess": 0.0, "encode": 0.0, "match": 0.0}


def _json_error(status: int, problem: str, fix: str | None) -> JSONResponse:
    return JSONResponse({"error": problem, "fix": fix or DOCS_FIX}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HTTPError)
    async def _http_error(_: Request, err: HTTPError) -> JSONResponse:
        return _json_error(err.status, err.problem, err.fix)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
        return _json_error(422, f"{where}: {first.get('msg', 'invalid request')}", DOCS_FIX)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette(_: Request, err: StarletteHTTPException) -> JSONResponse:
        return _json_error(err.status_code, str(err.detail), DOCS_FIX)

    @app.exception_handler(Exception)
    async def _crash(_: Request, err: Exception) -> JSONResponse:  # a server fault: say so, keep running
        return _json_error(500, f"internal error ({type(err).__name__})", "retry; report it if it persists")


def _static_dir() -> Any:
    return resources.files("simplematch.serve") / "static"


def create_app(settings: ServeSettings, token: str | None = None) -> FastAPI:
    """The ASGI app of one worker: loads the model (one onnxruntime session) and wires the routes."""
    # Starlette spools a multipart file to a temporary file past 1 MiB; keep uploads in memory (the body
    # limit bounds them) so nothing a client sends is written to disk.
    MultiPartParser.spool_max_size = max(MultiPartParser.spool_max_size, settings.max_body + 1)
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()

    app = FastAPI(
        title="SimpleMatch", version=simplematch.__version__, lifespan=lifespan,
        description="Semantic correspondence with an exported SimpleMatch model. Match answers are the JSON "
        "of `smatch infer --out`. With a token, send `Authorization: Bearer TOKEN` (all but /v1/health).",
    )  # fmt: skip
    app.state.service = service
    _install_error_handlers(app)
    _routes(app, service)
    app.mount("/static", StaticFiles(directory=str(_static_dir())), name="static")
    if settings.cors_origins:  # off unless asked: browsers on other origins cannot call the API by default
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
            allow_headers=["authorization", "content-type"],
        )  # fmt: skip
    app.add_middleware(
        RequestGuard, token=token, max_body=settings.max_body, body_timeout_s=settings.body_timeout_s
    )
    return app


def _routes(app: FastAPI, service: Service) -> None:
    page: Callable[[], str] = lambda: (_static_dir() / "index.html").read_text()  # noqa: E731

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page()

    @app.get(f"{API}/health", summary="Liveness: the model is loaded and the worker answers.")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "provider": service.matcher.provider}

    @app.get(f"{API}/model", summary="Model metadata, limits, cache and encode counters of this worker.")
    async def model() -> dict[str, Any]:
        return service.model_info()

    @app.post(f"{API}/images", summary="Encode an image once; match it later by its `id` (content hash).")
    async def images(image: Annotated[UploadFile, File(description="PNG / JPEG / ... image.")]) -> dict:
        data = await image.read()
        key, entry, cached = await service.features(data, image.filename or "image", _timing())
        h, w = entry.features.hw
        return {"id": key, "width": w, "height": h, "cached": cached}

    @app.post(f"{API}/match", summary="Match keypoints from an uploaded source into an uploaded target.")
    async def match(
        source: Annotated[UploadFile, File(description="Source image.")],
        target: Annotated[UploadFile, File(description="Target image.")],
        keypoints: Annotated[str, Form(description='JSON: [[x, y], ...] or {"keypoints": [...]}')],
        confidence: Annotated[str, Form()] = DEFAULT_CONFIDENCE,
        min_confidence: Annotated[float | None, Form(ge=0.0, le=1.0)] = None,
    ) -> dict:
        opts = service.options(confidence, min_confidence)
        kps_obj = _json_or_text(keypoints)
        names = (source.filename or "source", target.filename or "target")
        src, trg = await source.read(), await target.read()
        if service.one_graph:
            return await service.run(lambda: service.match_in_graph(src, trg, kps_obj, names, opts))
        timing = _timing()
        # Both at once: two new images are encoded in one run, as `smatch infer` does.
        (_, fs, _), (_, ft, _) = await asyncio.gather(
            service.features(src, names[0], timing), service.features(trg, names[1], timing)
        )
        return await service.run(lambda: service.match(fs, ft, kps_obj, names, opts, timing))

    @app.post(f"{API}/match/cached", summary="Match keypoints between two images uploaded before (by `id`).")
    async def match_cached(body: CachedMatch) -> dict:
        opts = service.options(body.confidence, body.min_confidence)
        entries = []
        for side in ("source", "target"):
            entry = service.cache.get(getattr(body, side))
            if entry is None:
                raise HTTPError(
                    404, f"{side} image {getattr(body, side)[:12]}... is not in the cache",
                    "upload it again with POST /v1/images (the cache keeps recent images)",
                )  # fmt: skip
            entries.append(entry)
        names = (body.source_name or body.source, body.target_name or body.target)
        timing = _timing()
        return await service.run(
            lambda: service.match(entries[0], entries[1], body.keypoints, names, opts, timing)
        )


def _json_or_text(text: str) -> Any:
    """The keypoints form field: decoded JSON, or the text itself (the parser then says what is wrong)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text
