"""Settings of one ``smatch serve`` worker: plain data, passed to worker processes as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeSettings:
    """The model and the limits every request is held to (docs/serve.md)."""

    model: str
    device: str = "cpu"
    allow_fallback: bool = False
    cache_mib: float = 256.0  # encoded images kept by content hash (LRU)
    max_body_mib: float = 32.0  # one request body (both images and the keypoints)
    max_image_mpix: float = 40.0  # decoded pixels of one image, checked from its header before decoding
    max_keypoints: int = 1000  # per request
    body_timeout_s: float = 30.0  # the whole body must have arrived by then (slow clients)
    max_batch: int = 8  # micro-batch concurrent encodes, up to 8 per run (BENCHMARKS.md: +23 % req/s here)
    cors_origins: tuple[str, ...] = field(default_factory=tuple)

    @property
    def max_body(self) -> int:
        return int(self.max_body_mib * 2**20)

    @property
    def max_image_pixels(self) -> int:
        return int(self.max_image_mpix * 1e6)

    def limits(self) -> dict[str, float | int]:
        return {
            "max_body_mib": self.max_body_mib,
            "max_image_mpix": self.max_image_mpix,
            "max_keypoints": self.max_keypoints,
            "body_timeout_s": self.body_timeout_s,
            "cache_mib": self.cache_mib,
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        values = json.loads(text)
        values["cors_origins"] = tuple(values.get("cors_origins") or ())
        return cls(**values)
