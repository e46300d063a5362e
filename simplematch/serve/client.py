"""A small client of ``smatch serve`` on the standard library only (http.client): for scripts, the tests
and the load test. One :class:`Client` holds one keep-alive connection; use one per thread.

>>> c = Client("http://127.0.0.1:8000")                                  # doctest: +SKIP
>>> src = c.upload("a.jpg")["id"]; tgt = c.upload("b.jpg")["id"]          # doctest: +SKIP
>>> c.match_cached(src, tgt, [[10, 20]])["keypoints"][0]["target"]       # doctest: +SKIP
"""

from __future__ import annotations

import http.client
import json
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit


class HTTPFailure(Exception):
    """A non-2xx answer: ``status`` and the decoded JSON error body (``{"error", "fix"}``)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request."""
    boundary = uuid.uuid4().hex
    parts: list[bytes] = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    for name, (filename, data) in files.items():
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        )
        parts += [head.encode(), data, b"\r\n"]
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _file(image: str | Path | tuple[str, bytes]) -> tuple[str, bytes]:
    if isinstance(image, tuple):
        return image
    return Path(image).name, Path(image).read_bytes()


class Client:
    def __init__(self, url: str, token: str | None = None, timeout: float = 60.0) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.token, self.timeout = token, timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        """(status, decoded JSON or text, headers); reconnects once if the server closed the connection."""
        headers = {"Content-Type": content_type} if content_type else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        for attempt in (0, 1):
            if self._conn is None:
                self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                resp = self._conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                self.close()
                if attempt:
                    raise
        if resp.getheader("connection", "").lower() == "close":
            self.close()
        text = raw.decode("utf-8", "replace")
        is_json = (resp.getheader("content-type") or "").startswith("application/json")
        return resp.status, (json.loads(text) if is_json else text), dict(resp.getheaders())

    def _ok(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Any:
        status, data, _ = self.request(method, path, body, content_type)
        if not 200 <= status < 300:
            raise HTTPFailure(status, data)
        return data

    def health(self) -> dict:
        return self._ok("GET", "/v1/health")

    def model(self) -> dict:
        return self._ok("GET", "/v1/model")

    def upload(self, image: str | Path | tuple[str, bytes]) -> dict:
        body, ctype = multipart({}, {"image": _file(image)})
        return self._ok("POST", "/v1/images", body, ctype)

    def match(self, source, target, keypoints: Any, **options: Any) -> dict:
        """Both images uploaded with the keypoints (``source`` / ``target``: a path or (name, bytes))."""
        fields = {"keypoints": json.dumps(keypoints)}
        fields.update({k: str(v) for k, v in options.items() if v is not None})
        body, ctype = multipart(fields, {"source": _file(source), "target": _file(target)})
        return self._ok("POST", "/v1/match", body, ctype)

    def match_cached(self, source_id: str, target_id: str, keypoints: Any, **options: Any) -> dict:
        payload = {"source": source_id, "target": target_id, "keypoints": keypoints, **options}
        return self._ok("POST", "/v1/match/cached", json.dumps(payload).encode(), "application/json")
