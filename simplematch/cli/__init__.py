"""``smatch`` console script (``python -m simplematch.cli`` works too, e.g. under torchrun)."""

# Commands that live in their own module register on the app when the package is imported.
from simplematch.cli import calibrate as _calibrate  # noqa: F401
from simplematch.cli import transfer as _transfer  # noqa: F401


def main() -> None:
    from simplematch import shutdown
    from simplematch.cli.app import main as run

    shutdown.exit_process(run())
