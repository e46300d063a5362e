"""The runtime imports no torch, in a fresh interpreter.

ONNX models are the tiny graphs of tests/helpers.py (make_onnx).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.helpers import ROOT, write_image


# ----------------------------------------------------------------------------------------------------------
# No torch anywhere in the runtime
# ----------------------------------------------------------------------------------------------------------
def test_runtime_imports_no_torch(models: dict[str, Path], tmp_path: Path) -> None:
    src = write_image(tmp_path / "s.png", 40, 30)
    trg = write_image(tmp_path / "t.png", 50, 60, seed=3)
    kps = tmp_path / "k.json"
    kps.write_text("[[3, 4], [20, 10]]")
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any `import torch` now raises ImportError
        try:
            import torch  # noqa: F401
        except ImportError:
            pass
        else:
            raise SystemExit("torch import did not fail")
        import simplematch.runtime, simplematch.runtime.infer  # noqa: E401
        import simplematch.evaluation, simplematch.evaluation.runtime_predictor  # noqa: E401
        import simplematch.runtime.viz, simplematch.metrics  # noqa: E401
        from simplematch.runtime import Matcher
        m = Matcher({str(models["conv"])!r})
        res = m.match_images({str(src)!r}, {str(trg)!r}, [[3.0, 4.0], [20.0, 10.0]])
        assert res.target_kps.shape == (2, 2)
        from simplematch.runtime.infer import run_infer
        rep = run_infer({str(src)!r}, {str(trg)!r}, {str(kps)!r}, model={str(models["conv"])!r},
                        out={str(tmp_path / "o.json")!r}, viz={str(tmp_path / "o.png")!r})
        assert len(rep["keypoints"]) == 2
        loaded = [k for k, v in sys.modules.items() if v is not None and k.split(".")[0] == "torch"]
        assert not loaded, loaded
        print("ok")
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")
    assert (tmp_path / "o.json").is_file() and (tmp_path / "o.png").is_file()
