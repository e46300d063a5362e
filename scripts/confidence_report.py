"""Markdown tables for docs/confidence.md from `smatch eval --json` files (AUROC per cue, precision-coverage).

python scripts/confidence_report.py willow.json synthetic.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(paths: list[str]) -> None:
    runs = [(Path(p).stem, json.loads(Path(p).read_text())) for p in paths]
    cues = list(runs[0][1]["confidence"]["auroc"])
    print("| cue | " + " | ".join(f"AUROC {name}" for name, _ in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for cue in cues:
        vals = [r["confidence"]["auroc"][cue] for _, r in runs]
        print(f"| `{cue}` | " + " | ".join("-" if v is None else f"{v:.3f}" for v in vals) + " |")
    for name, r in runs:
        conf = r["confidence"]
        what = f"precision = PCK@{conf['alpha']:g} of kept points"
        print(f"\n{name}: precision-coverage of `{conf['default']}` ({what})\n")
        print("| coverage | min confidence | precision |")
        print("|---|---|---|")
        for row in conf["precision_coverage"][::2]:
            print(f"| {100 * row['coverage']:.0f}% | {row['min_confidence']:.3f} | {row['precision']:.1f} |")


if __name__ == "__main__":
    main(sys.argv[1:])
