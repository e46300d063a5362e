"""``smatch serve``: a real server on a free loopback port, used over HTTP as a client would.

The match answers are compared with ``smatch infer --out`` on the same inputs (the same JSON, timings
aside); each bad request gets its 4xx JSON error and the next good request still succeeds.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
pytest.importorskip("uvicorn", reason="the [serve] extra is not installed")
from PIL import Image

from simplematch.cli.app import main
from simplematch.runtime import Features, Matcher
from simplematch.runtime.infer import run_infer
from simplematch.serve.cache import Entry, FeatureCache
from simplematch.serve.client import Client, HTTPFailure, multipart
from simplematch.serve.encoder import EncodeLane
from tests.helpers import make_onnx
from tests.serve.helpers import EXAMPLES, running_server

KPS = json.loads((EXAMPLES / "kps.json").read_text())["keypoints"]
SRC, TGT = EXAMPLES / "src.png", EXAMPLES / "tgt.png"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_onnx(tmp_path_factory.mktemp("serve") / "conv.onnx", input_size=64, channels=16)


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("serve_log") / "server.log"
    args = ["--max-body-mib", "1", "--max-keypoints", "50", "--body-timeout", "2", "--max-image-mpix", "4"]
    with running_server(model, *args, log=log) as url:
        yield url


def _same_as_infer(answer: dict, infer: dict) -> None:
    """Equal JSON but the file names (the server reports upload names), the timings and the write time."""
    assert set(answer) == set(infer)
    for key in set(infer) - {"timing_ms", "source", "target", "written_at"}:
        assert answer[key] == infer[key], key
    assert set(answer["timing_ms"]) == set(infer["timing_ms"])
    assert Path(answer["source"]).name == Path(infer["source"]).name


@pytest.mark.parametrize("min_confidence", [None, 0.3])
def test_match_answers_exactly_what_smatch_infer_writes(
    server: str, model: Path, tmp_path: Path, min_confidence: float | None
) -> None:
    (tmp_path / "kps.json").write_text(json.dumps(KPS))
    infer = run_infer(SRC, TGT, tmp_path / "kps.json", model=model, out=tmp_path / "r.json",
                      min_confidence=min_confidence)  # fmt: skip
    written = json.loads((tmp_path / "r.json").read_text())
    c = Client(server)
    answer = c.match(SRC, TGT, KPS, min_confidence=min_confidence)
    _same_as_infer(answer, written)
    assert answer["keypoints"] == json.loads(json.dumps(infer["keypoints"]))
    if min_confidence is not None:
        assert any(k["rejected"] for k in answer["keypoints"]) and any(
            k["target"] is None for k in answer["keypoints"]
        )
    src, tgt = c.upload(SRC)["id"], c.upload(TGT)["id"]
    cached = c.match_cached(src, tgt, KPS, min_confidence=min_confidence, source_name="src.png",
                            target_name="tgt.png")  # fmt: skip
    _same_as_infer(cached, written)
    # The answer is usable as --kps (chaining), like an infer --out file.
    (tmp_path / "answer.json").write_text(json.dumps(answer))
    if min_confidence is None:
        chained = run_infer(TGT, SRC, tmp_path / "answer.json", model=model)
        assert [k["source"] for k in chained["keypoints"]] == [k["target"] for k in answer["keypoints"]]


def test_encode_once_cache_by_content(server: str) -> None:
    c = Client(server)
    data = SRC.read_bytes()
    first = c.upload(("renamed.png", data + b""))
    again = c.upload(("other-name.png", data))
    assert first["id"] == again["id"] and again["cached"] and (first["width"], first["height"]) == (300, 200)
    before = c.model()["cache"]
    c.match_cached(first["id"], first["id"], KPS[:2])
    c.match(("a.png", data), ("b.png", data), KPS[:2])  # upload endpoint: hits too
    after = c.model()["cache"]
    assert after["hits"] >= before["hits"] + 2 and after["mib"] <= after["max_mib"]
    with pytest.raises(HTTPFailure) as err:
        c.match_cached("0" * 64, first["id"], KPS[:2])
    assert err.value.status == 404 and "POST /v1/images" in err.value.body["fix"]


def test_model_and_health(server: str, model: Path) -> None:
    c = Client(server)
    assert c.health()["status"] == "ok"
    info = c.model()
    assert info["model"] == str(model) and info["meta"]["img_size"] == 64
    assert info["limits"]["max_keypoints"] == 50 and info["limits"]["max_body_mib"] == 1
    status, schema, _ = c.request("GET", "/openapi.json")
    assert status == 200 and {
        "/v1/match",
        "/v1/match/cached",
        "/v1/images",
        "/v1/model",
        "/v1/health",
    } <= set(schema["paths"])
    status, page, _ = c.request("GET", "/")
    assert status == 200 and "/static/app.js" in page
    for asset in ("/static/app.js", "/static/style.css", "/static/examples/src.png"):
        assert c.request("GET", asset)[0] == 200, asset


def test_the_page_loads_nothing_from_elsewhere() -> None:
    """Works offline: no address outside the server in the page, its script or its style (the SVG
    namespace is a name, never fetched)."""
    import re

    from simplematch.serve.app import _static_dir

    for name in ("index.html", "app.js", "style.css"):
        text = (_static_dir() / name).read_text().replace("http://www.w3.org/2000/svg", "")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]", text, re.I), name
        assert "@import" not in text and 'src="http' not in text, name


# --------------------------------------------------------------------------------------------------------
# Bad requests: each gets its 4xx and the server keeps serving
# --------------------------------------------------------------------------------------------------------
def _png(w: int, h: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h)).save(buf, "PNG")  # flat: a few KiB, under the body limit
    return buf.getvalue()


def _bomb(w: int = 50_000, h: int = 50_000) -> bytes:
    """A 40-byte-scale PNG whose header claims w x h pixels (a decompression bomb's header)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (  # noqa: E731
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    )
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _post_match(url: str, src: bytes, kps, **fields) -> tuple[int, dict]:
    body, ctype = multipart(
        {"keypoints": json.dumps(kps), **fields},
        {"source": ("s.png", src), "target": ("t.png", TGT.read_bytes())},
    )
    status, data, _ = Client(url).request("POST", "/v1/match", body, ctype)
    return status, data


def _raw(url: str, head: bytes, body_parts: list[bytes], pause: float = 0.0) -> tuple[int, dict]:
    """Send a hand-made request (headers, then body parts with pauses) and read the answer."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head)
        for part in body_parts:
            time.sleep(pause)
            try:
                sock.sendall(part)
            except OSError:  # the server already answered and closed
                break
        resp = http.client.HTTPResponse(sock)
        resp.begin()
        return resp.status, json.loads(resp.read())


HEAD = b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
PART = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
CHUNK = b"%x\r\n" % 2**18 + b"a" * 2**18 + b"\r\n"  # one chunk of 256 KiB


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def _url_fields(u: str) -> tuple[int, dict]:
    fields = {
        "source": "http://example.com/a.png",
        "target": "http://example.com/b.png",
        "keypoints": "[[1, 1]]",
    }
    return Client(u).request("POST", "/v1/match", *multipart(fields, {}))[:2]


BAD = {
    "not an image": (lambda u: _post_match(u, b"hello, not an image", KPS[:2]), 422, "cannot read image"),
    "truncated image": (lambda u: _post_match(u, SRC.read_bytes()[:5000], KPS[:2]), 422, "cannot read image"),
    "decompression bomb": (lambda u: _post_match(u, _bomb(), KPS[:2]), 413, "megapixel"),
    "over the pixel budget": (lambda u: _post_match(u, _png(2100, 2000), KPS[:2]), 413, "megapixel"),
    "too many keypoints": (lambda u: _post_match(u, SRC.read_bytes(), [[1, 1]] * 51), 422, "limit 50"),
    "keypoint outside": (lambda u: _post_match(u, SRC.read_bytes(), [[300, 5]]), 422, "outside the 300x200"),
    "keypoints not JSON": (lambda u: _post_match(u, SRC.read_bytes(), "x"), 422, "keypoint"),
    "unknown confidence": (
        lambda u: _post_match(u, SRC.read_bytes(), KPS[:2], confidence="magic"), 422, "unknown"),
    "URL instead of a file": (_url_fields, 422, "source"),
    "declared oversized body": (
        lambda u: _raw(u, HEAD + b"Content-Length: 5000000\r\n\r\n", [PART]), 413, "MiB"),
    "chunked oversized body": (
        lambda u: _raw(u, HEAD + b"Transfer-Encoding: chunked\r\n\r\n", [_chunk(PART)] + [CHUNK] * 6),
        413, "bytes"),
    "slow client": (
        lambda u: _raw(u, HEAD + b"Content-Length: 1000\r\n\r\n", [PART, b"x" * 10], pause=1.5),
        408, "within 2 s"),
    "unknown route": (lambda u: Client(u).request("GET", "/v1/nothing")[:2], 404, "Not Found"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_its_4xx_and_the_next_request_succeeds(server: str, case: str) -> None:
    send, status, text = BAD[case]
    got, body = send(server)
    assert got == status, body
    assert set(body) == {"error", "fix"} and text in body["error"] + body["fix"], body
    good = Client(server).match(SRC, TGT, KPS[:3])
    assert len(good["keypoints"]) == 3 and good["keypoints"][0]["target"] is not None


def test_concurrent_requests_all_answer_like_one(server: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    ref = Client(server).match(SRC, TGT, KPS)["keypoints"]

    def one(i: int) -> list:
        c = Client(server)
        try:
            return c.match(SRC, TGT, KPS)["keypoints"]
        finally:
            c.close()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(16)))
    assert all(r == ref for r in results)


def test_bearer_token(model: Path, tmp_path: Path) -> None:
    with running_server(model, env={"SMATCH_SERVE_TOKEN": "s3cret"}, log=tmp_path / "log") as url:
        assert Client(url).health()["status"] == "ok"  # load balancers probe without the token
        status, body, headers = Client(url).request("GET", "/v1/model")
        assert status == 401 and set(body) == {"error", "fix"} and headers.get("www-authenticate") == "Bearer"
        assert (
            Client(url, token="wrong").request("POST", "/v1/images", *multipart({}, {"image": ("a", b"x")}))[
                0
            ]
            == 401
        )
        assert Client(url, token="s3cret").match(SRC, TGT, KPS[:2])["keypoints"][0]["target"] is not None
        assert Client(url).request("GET", "/")[0] == 200  # the page itself holds no data


# --------------------------------------------------------------------------------------------------------
# Pieces, each against an independent reference
# --------------------------------------------------------------------------------------------------------
def _entry(nbytes: int) -> Entry:
    return Entry(Features(np.zeros(nbytes // 4, np.float32), (2, 2)))


def test_cache_is_lru_and_bounded_in_bytes() -> None:
    cache = FeatureCache(max_mib=3 / 1024)  # 3 KiB: three 1 KiB entries
    reference: list[str] = []  # the LRU order by hand, most recent last
    for step, key in enumerate("abcadbeaf"):
        if cache.get(key) is None:
            cache.put(key, _entry(1024))
            reference.append(key)
            if len(reference) > 3:
                reference.pop(0)
        else:
            reference.remove(key)
            reference.append(key)
        assert list(cache._items) == reference, step
        assert cache.stats()["mib"] <= cache.stats()["max_mib"]
    cache.put("huge", _entry(8192))  # larger than the bound: not stored, nothing evicted
    assert cache.get("huge") is None and list(cache._items) == reference


@pytest.mark.parametrize("max_batch, runs", [(4, 3), (1, 6)])
def test_micro_batching_lane_batches_waiting_requests_and_keeps_results(
    model: Path, max_batch: int, runs: int
) -> None:
    import threading

    matcher = Matcher(model)
    rng = np.random.default_rng(0)
    images = [matcher.prepare(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)) for i in range(6)]
    alone = [matcher.encode([im])[0].map for im in images]
    entered, release, encode, sizes = threading.Event(), threading.Event(), matcher.encode, []

    def held_encode(batch):  # the first run waits, so the other five requests queue up behind it
        entered.set()
        release.wait(10)
        sizes.append(len(batch))
        return encode(batch)

    matcher.encode = held_encode
    lane = EncodeLane(matcher, max_batch=max_batch)
    try:
        futures = [lane.submit(images[0])]
        assert entered.wait(10)
        futures += [lane.submit(im) for im in images[1:]]
        release.set()
        got = [f.result(timeout=30) for f in futures]
    finally:
        lane.close()
    for a, g, im in zip(alone, got, images, strict=True):
        np.testing.assert_allclose(g.map, a, atol=1e-6)
        assert g.hw == im.hw
    assert lane.images == 6 and lane.batches == runs and sizes == ([1, 4, 1] if max_batch == 4 else [1] * 6)


def test_uploads_are_never_spooled_to_disk(model: Path) -> None:
    from starlette.formparsers import MultiPartParser

    from simplematch.serve.app import create_app
    from simplematch.serve.settings import ServeSettings

    settings = ServeSettings(model=str(model), max_body_mib=8)
    create_app(settings).state.service.close()
    assert MultiPartParser.spool_max_size > settings.max_body


def test_serve_without_the_extra_names_it(model: Path, monkeypatch, capsys) -> None:
    import simplematch.extras as extras

    monkeypatch.setattr(extras, "_absent", lambda m: m == "fastapi")
    assert main(["serve", str(model)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'simplematch[serve]'" in err


def test_other_host_warns_and_bad_settings_refused(model: Path, monkeypatch, capsys) -> None:
    import uvicorn

    from simplematch.serve import run

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    monkeypatch.setattr(run, "_check_port", lambda host, port: None)  # nothing is bound in this test
    assert main(["serve", str(model), "--host", "0.0.0.0", "--port", "9"]) == 0
    err = capsys.readouterr().err
    assert "warning: listening on 0.0.0.0" in err and "--token" in err and calls[0]["host"] == "0.0.0.0"
    assert main(["serve", str(model), "--host", "127.0.0.1", "--port", "9", "--token", "t"]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main(["serve", str(model), "--max-keypoints", "0"]) == 2
    assert "--max-keypoints" in capsys.readouterr().err
    assert main(["serve", str(model.with_name("missing.onnx"))]) == 2
    assert "model not found" in capsys.readouterr().err


def test_workers_each_serve_with_the_same_settings_and_token(model: Path, tmp_path: Path) -> None:
    """--workers 2: uvicorn's worker processes rebuild the app from the settings in the environment."""
    import psutil

    env = {"SMATCH_SERVE_TOKEN": "w0rkers"}
    with running_server(
        model, "--workers", "2", "--max-keypoints", "5", env=env, log=tmp_path / "log"
    ) as url:
        for _ in range(6):  # new connections: the kernel spreads them over the workers
            c = Client(url, token="w0rkers")
            assert c.match(SRC, TGT, KPS[:2])["keypoints"][1]["target"] is not None
            assert c.model()["limits"]["max_keypoints"] == 5
            c.close()
        status, body, _ = Client(url).request("GET", "/v1/model")
        assert status == 401
        server = next(
            p
            for p in psutil.process_iter(["cmdline"])
            if url.rsplit(":", 1)[1] in " ".join(p.info["cmdline"] or [])
        )
        children = server.children(recursive=True)
        assert len(children) >= 2
    # Every worker (and multiprocessing's resource tracker, which exits a moment after its parent) is gone
    # once the server has stopped: wait a bounded time for them instead of sampling one instant.
    _, alive = psutil.wait_procs(children, timeout=15)
    assert not [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], alive


def test_busy_port_is_one_line(model: Path, capsys) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert main(["serve", str(model), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err
