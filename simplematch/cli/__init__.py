"""``smatch`` console script (``python -m simplematch.cli`` works too, e.g. under torchrun)."""


def main() -> None:
    import sys

    from simplematch.cli.app import main as run

    sys.exit(run())
