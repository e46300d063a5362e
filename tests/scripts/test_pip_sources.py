"""scripts/pip_sources.py: ``make install``'s uv takes its package sources and caps from pip's settings."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

SCRIPT = ROOT / "scripts" / "pip_sources.py"


def _module():
    spec = importlib.util.spec_from_file_location("pip_sources", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_environment_wins_over_the_install_section_over_global() -> None:
    listing = "\n".join(
        [
            "global.index-url='https://global.example/simple'",
            "global.extra-index-url='file:///a/simple file:///b/simple'",
            "install.index-url='https://install.example/simple'",
            "global.find-links='/global/wheels'",
            ":env:.find-links='/env/wheels\\n/more/wheels'",  # pip prints repr(): a newline-separated list
            "global.timeout='60'",
            "freeze.index-url='https://not-for-install.example/simple'",  # another command's section
        ]
    )
    assert _module().parse(listing) == {
        "index-url": "https://install.example/simple",
        "extra-index-url": "file:///a/simple file:///b/simple",
        "find-links": "/env/wheels\n/more/wheels",
        "timeout": "60",
    }


def test_every_source_and_cap_becomes_uv_options() -> None:
    config = {
        "index-url": "https://mirror.example/simple",
        "extra-index-url": "file:///a/simple file:///b/simple",
        "find-links": "/env/wheels\n/more/wheels",
        "constraint": "/etc/caps.txt",
        "cert": "/etc/ca.pem",
        "trusted-host": "mirror.example",
        "no-index": "true",
        "timeout": "60",  # not a source: left to pip
    }
    assert _module().uv_options(config) == [
        "--index-strategy", "unsafe-best-match",
        "--index-url", "https://mirror.example/simple",
        "--extra-index-url", "file:///a/simple", "--extra-index-url", "file:///b/simple",
        "--find-links", "/env/wheels", "--find-links", "/more/wheels",
        "--constraint", "/etc/caps.txt",
        "--cert", "/etc/ca.pem",
        "--allow-insecure-host", "mirror.example",
        "--no-index",
    ]  # fmt: skip
    assert _module().uv_options({}) == ["--index-strategy", "unsafe-best-match"]  # pip's defaults: PyPI


def _run(env: dict[str, str]) -> list[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], env={**base, "PIP_CONFIG_FILE": os.devnull, **env},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return shlex.split(proc.stdout)


def test_the_script_reads_what_pip_reads(tmp_path: Path) -> None:
    # PIP_CONFIG_FILE=/dev/null: pip reads no configuration file, only the PIP_* variables below.
    env = {"PIP_EXTRA_INDEX_URL": "file:///a/simple file:///b/simple", "PIP_FIND_LINKS": str(tmp_path)}
    assert _run(env) == [
        "--index-strategy", "unsafe-best-match",
        "--extra-index-url", "file:///a/simple", "--extra-index-url", "file:///b/simple",
        "--find-links", str(tmp_path),
    ]  # fmt: skip
    assert _run({}) == ["--index-strategy", "unsafe-best-match"]


def test_uv_accepts_the_options_of_this_machine() -> None:
    uv = Path(sys.executable).with_name("uv")
    if not uv.exists():
        pytest.skip(f"{uv} is absent: this venv was not made by `make install`")
    options = shlex.split(
        subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=True).stdout
    )
    # --offline, and numpy is installed already: uv parses every option and resolves without the network.
    proc = subprocess.run(
        [str(uv), "pip", "install", "--dry-run", "--offline", "--python", sys.executable, *options,
         "-c", str(ROOT / "constraints.txt"), "numpy"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
