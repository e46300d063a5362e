"""Print uv's options for the package sources and caps that pip is configured with on this machine.

``make install`` installs the development venv with ``uv pip install`` (it unpacks the 5.5 GB of wheels
in parallel and, from its cache, links them in seconds) but must take packages from where pip would:
the indexes, find-links folders, certificates and constraint files of pip's configuration files and
``PIP_*`` variables, which uv does not read. pip's own ``pip config list`` reports them (one
``section.key='value'`` per line; sections ``:env:``, ``install`` and ``global``, in that precedence), so
this reads that instead of re-implementing pip's file lookup. ``--index-strategy unsafe-best-match`` is
pip's rule of taking the best version across all indexes, rather than uv's first index that has a name.
"""

from __future__ import annotations

import ast
import shlex
import subprocess
import sys

# pip key -> uv option; the keys whose value is a whitespace-separated list repeat the option.
OPTIONS = {
    "index-url": "--index-url",
    "extra-index-url": "--extra-index-url",
    "find-links": "--find-links",
    "constraint": "--constraint",
    "cert": "--cert",
    "trusted-host": "--allow-insecure-host",
}
LISTS = {"extra-index-url", "find-links", "constraint", "trusted-host"}
PRECEDENCE = (":env:", "install", "global")  # pip: environment over the install section over global


def parse(listing: str) -> dict[str, str]:
    """``pip config list`` output -> {key: value} with pip's precedence between sections."""
    found: dict[tuple[str, str], str] = {}
    for line in listing.splitlines():
        name, sep, value = line.partition("=")
        section, dot, key = name.rpartition(".")
        if sep and dot and section in PRECEDENCE:
            found[section, key] = str(ast.literal_eval(value))  # pip prints the repr of each value
    keys = {key for _, key in found}
    return {key: next(found[s, key] for s in PRECEDENCE if (s, key) in found) for key in keys}


def uv_options(config: dict[str, str]) -> list[str]:
    """uv options for pip's settings (``no-index`` included); unknown keys are pip's business only."""
    args = ["--index-strategy", "unsafe-best-match"]
    for key, option in OPTIONS.items():
        for value in config.get(key, "").split() if key in LISTS else [config.get(key, "")]:
            if value:
                args += [option, value]
    if config.get("no-index", "").lower() in {"1", "true", "yes", "on"}:
        args.append("--no-index")
    return args


def main() -> int:
    listing = subprocess.run(
        [sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    print(shlex.join(uv_options(parse(listing))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
