"""Fixtures of the runtime tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import make_meta, make_onnx


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny ONNX models (tests.helpers.make_onnx), built once per session; tests only read them."""
    root = tmp_path_factory.mktemp("models")
    return {
        "conv": make_onnx(root / "conv.onnx"),
        "position": make_onnx(root / "position.onnx", kind="position"),
        "position_center": make_onnx(
            root / "position_center.onnx", kind="position", meta=make_meta(coord="center")
        ),
    }
