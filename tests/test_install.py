"""The install contract: the package imports only what it declares, the base install is the torch-free
runtime, and a command that needs an extra says which in one line (exit 2).

The end-to-end proof (a fresh venv from the wheel, no extras, running infer / eval / bench) is
``scripts/check_runtime_install.sh``, which ``make test`` runs before this suite. These tests pin the rules
that script relies on, in the dev environment, fast.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import pytest

import simplematch
from simplematch.cli.app import main
from simplematch.errors import SimpleMatchError
from simplematch.extras import EXTRA_MODULES, MODULE_EXTRA, missing_module_error, require
from tests.helpers import ROOT

PACKAGE = ROOT / "simplematch"


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level module -> files that import it (module level or lazily inside functions)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top != "simplematch" and top not in sys.stdlib_module_names:
                    found.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    return found


def _declared() -> dict[str, str]:
    """Distribution name (normalised) -> '' for base, or the extra that declares it (from pyproject)."""
    text = (ROOT / "pyproject.toml").read_text()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        pytest.skip("tomllib needs Python 3.11")
    project = tomllib.loads(text)["project"]
    out: dict[str, str] = {}
    norm = lambda s: re.split(r"[\s;<>=!~\[]", s, maxsplit=1)[0].lower().replace("_", "-")  # noqa: E731
    for req in project["dependencies"]:
        out[norm(req)] = ""
    for extra, reqs in project["optional-dependencies"].items():
        for req in reqs:
            out.setdefault(norm(req), extra)
    return out


def test_every_imported_package_is_declared_and_no_private_module_is_used() -> None:
    dists = md.packages_distributions()
    declared = _declared()
    undeclared, private = [], []
    for name, files in sorted(_third_party_imports().items()):
        top = name.split(".")[0]
        if any(part.startswith("_") for part in name.split(".")[1:]):
            private.append(f"{name} in {sorted(files)}")
        owners = {d.lower().replace("_", "-") for d in dists.get(top, [])}
        if top in ("tensorrt", "cuda"):  # [trt]: not installable here (cuda-python's module is `cuda`)
            owners = {"tensorrt" if top == "tensorrt" else "cuda-python"}
        if not owners & set(declared):
            undeclared.append(f"{top} ({sorted(owners) or 'not installed'}) in {sorted(files)}")
    assert not undeclared, "imported but declared in no dependency list: " + "; ".join(undeclared)
    assert not private, "private modules of other packages: " + "; ".join(private)


def test_base_dependencies_are_enough_for_the_runtime_modules() -> None:
    """Every third-party module imported by the torch-free runtime path belongs to a base dependency."""
    runtime_files = ("simplematch/runtime/", "simplematch/metrics.py", "simplematch/image.py",
                     "simplematch/provenance.py", "simplematch/keypoints.py", "simplematch/metadata.py",
                     "simplematch/cli/app.py",
                     "simplematch/extras.py", "simplematch/files.py", "simplematch/config.py",
                     "simplematch/geometry.py", "simplematch/confidence.py",
                     "simplematch/evaluation/__init__.py",
                     "simplematch/evaluation/dispatch.py", "simplematch/evaluation/runtime_predictor.py",
                     "simplematch/data/records.py", "simplematch/data/pfwillow.py",
                     "simplematch/data/matfile.py", "simplematch/calibration.py",
                     "simplematch/cli/calibrate.py", "simplematch/data/coco.py",
                     "simplematch/data/coco_pairs.py", "simplematch/evaluation/coco.py",
                     "simplematch/cli/coco_flags.py",
                     "simplematch/cli/__init__.py", "simplematch/cli/transfer.py",
                     "simplematch/progress.py", "simplematch/errors.py",
                     # `smatch bench --model m.onnx`: every bench module but the torch ones (executors
                     # torch_eager / train_memory, cuda, random_model), which only torch paths import.
                     "simplematch/bench/__init__.py", "simplematch/bench/__main__.py",
                     "simplematch/bench/options.py", "simplematch/bench/machine.py",
                     "simplematch/bench/plan.py", "simplematch/bench/measure.py",
                     "simplematch/bench/worker.py", "simplematch/bench/report.py",
                     "simplematch/bench/run.py", "simplematch/bench/profile.py",
                     "simplematch/bench/executors/__init__.py", "simplematch/bench/executors/base.py",
                     "simplematch/bench/executors/runtime_backends.py")  # fmt: skip
    optional = {"tensorrt", "cuda"}  # the TensorRT backend imports them lazily and says [trt] when absent
    dists = md.packages_distributions()
    base = {d for d, extra in _declared().items() if extra == ""}
    bad = []
    for name, files in _third_party_imports().items():
        top = name.split(".")[0]
        users = [f for f in files if f.startswith(runtime_files)]
        if not users or top in optional:
            continue
        owners = {d.lower().replace("_", "-") for d in dists.get(top, [])}
        if not owners & base:
            bad.append(f"{top} in {users}")
    assert not bad, "runtime modules import non-base packages: " + "; ".join(bad)


def test_extra_tables_name_declared_extras() -> None:
    import tomllib

    declared_extras = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    )
    assert set(EXTRA_MODULES) <= declared_extras
    assert set(MODULE_EXTRA.values()) <= set(EXTRA_MODULES)


def test_require_names_the_extra_and_the_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "timm" else real(n, *a))
    with pytest.raises(SimpleMatchError) as err:
        require("train", "`smatch train`")
    assert str(err.value) == (
        "`smatch train` needs the [train] extra (timm not installed). Fix: pip install 'simplematch[train]'"
    )
    require("synthetic", "--dataset synthetic")  # skimage is present in the dev environment: no error


@pytest.mark.parametrize(
    ("module", "extra"), [("torch", "train"), ("torch.nn", "train"), ("skimage.data", "synthetic"),
                          ("tensorrt", "trt"), ("onnxscript", "train"), ("fastapi", "serve"),
                          ("uvicorn", "serve"), ("starlette.routing", "serve")]
)  # fmt: skip
def test_missing_optional_module_becomes_one_line(module: str, extra: str) -> None:
    err = missing_module_error(ModuleNotFoundError(f"No module named '{module}'", name=module))
    assert err is not None and f"simplematch[{extra}]" in str(err)
    assert missing_module_error(ModuleNotFoundError("x", name="not_a_known_dep")) is None


def test_cli_turns_a_deep_missing_extra_into_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import simplematch.cli.app as app_module

    def boom(*_a: object, **_k: object) -> None:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    monkeypatch.setattr(app_module, "_print_export", boom)
    monkeypatch.setattr("simplematch.export.export_checkpoint", lambda *a, **k: {})
    ckpt = tmp_path
    rc = main(["export", str(ckpt), "--no-check", "--out", str(ckpt / "m.onnx")])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1 and "pip install 'simplematch[train]'" in err, err


def test_an_unrelated_missing_module_is_a_bug_not_a_user_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import simplematch.cli.app as app_module

    def boom(*_a: object, **_k: object) -> None:
        raise ModuleNotFoundError("No module named 'simplematch.gone'", name="simplematch.gone")

    monkeypatch.setattr(app_module, "_print_export", boom)
    monkeypatch.setattr("simplematch.export.export_checkpoint", lambda *a, **k: {})
    ckpt = tmp_path
    with pytest.raises(ModuleNotFoundError):
        main(["export", str(ckpt), "--no-check", "--out", str(ckpt / "m.onnx")])


def test_eval_of_a_checkpoint_names_the_train_extra_before_reading_any_data(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A runtime-only install evaluating a checkpoint folder hears about [train] first, whatever the data."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "torch" else real(n, *a))
    rc = main(["eval", str(tmp_path), "--dataset", "pfwillow", "--data-root", str(tmp_path / "absent")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1, err
    assert "needs the [train] extra" in err and "pip install 'simplematch[train]'" in err, err


def test_version_is_one_place(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"smatch (simplematch) {simplematch.__version__}"
    assert md.version("simplematch") == simplematch.__version__  # pyproject reads it from the package
