"""TensorRT engine vs onnxruntime parity (runs only where TensorRT and a GPU exist; not exercised by CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from simplematch.config import Config
from simplematch.export.parity import (
    BUNDLED_SOURCE,
    bundled_images,
    compare_features,
    enforce,
    run_in_batches,
)
from simplematch.image import resize_square


def engine_parity(
    engine: Path,
    onnx_path: Path,
    cfg: Config,
    *,
    images: list[np.ndarray] | None,
    batch: int | None,
    precision: str,
) -> dict[str, Any]:
    import onnxruntime as ort

    from simplematch.runtime.backends import TensorRTBackend

    source = f"{len(images)} real images" if images is not None else ""
    if images is None:
        images, source = bundled_images(), BUNDLED_SOURCE
    x = np.stack([resize_square(im, cfg.img_size) for im in images])
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ref = run_in_batches(lambda b: sess.run(None, {sess.get_inputs()[0].name: b})[0], x, batch)
    backend = TensorRTBackend(engine)
    try:
        got = run_in_batches(backend.encode, x, batch)
    finally:
        backend.close()  # free the GPU buffers now: the engine is moved into place right after this
    res = {**compare_features(ref, got, cfg), "precision": precision, "data": source, "runtime": "tensorrt"}
    enforce(res, precision)
    return res
