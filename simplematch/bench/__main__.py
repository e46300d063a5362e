"""``python -m simplematch.bench --worker SPEC.json``: one fresh-process measurement (internal)."""

import sys

from simplematch import shutdown
from simplematch.bench.worker import main

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        shutdown.exit_process(main(sys.argv[2]))
    print(
        "usage: python -m simplematch.bench --worker SPEC.json (internal: use `smatch bench`)",
        file=sys.stderr,
    )
    sys.exit(2)
