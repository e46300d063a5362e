"""Calibration tables of docs/confidence.md from ``smatch eval --predictions`` files (no model needed).

    python scripts/calibration_report.py WILLOW.jsonl SYNTH_VAL.jsonl SYNTH_TEST.jsonl

The cues do not depend on a calibration, so one evaluation per dataset is enough: the calibration is
fitted on some of its points (:func:`simplematch.calibration.fit`, as `smatch calibrate` does) and judged
on the others. Settings: PF-WILLOW calibrated on two classes and judged on the other two (both ways);
synthetic validation -> held-out synthetic test; synthetic validation -> PF-WILLOW (a dataset shift).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from simplematch import calibration as cal
from simplematch.metrics import auroc

ALPHA = "0.1"
CUES = ("peak_cos", "peak_mass", "ratio", "cycle", "mass_cycle", "ratio_cycle", "mass_ratio_cycle")


def load(path: str) -> dict:
    raw: dict[str, list] = {k: [] for k in ("peak_cos", "peak_mass", "second_cos", "cycle_px")}
    cues: dict[str, list] = {k: [] for k in CUES}
    ok, cats, pairs = [], [], []
    for line in Path(path).read_text().splitlines():
        r = json.loads(line)
        v = np.array(r["valid"], bool)
        for k in raw:
            raw[k].append(np.array(r["raw_cues"][k], float)[v])
        for k in cues:
            cues[k].append(np.array(r["cues"][k], float)[v])
        ok.append(np.array(r["correct"][ALPHA], bool)[v])
        cats += [r["category"]] * int(v.sum())
        pairs += [r["index"]] * int(v.sum())
    return {
        "raw": {k: np.concatenate(x) for k, x in raw.items()},
        "cues": {k: np.concatenate(x) for k, x in cues.items()},
        "ok": np.concatenate(ok),
        "cat": np.array(cats),
        "pair": np.array(pairs),
    }


def subset(d: dict, sel: np.ndarray) -> dict:
    out = {k: d[k][sel] for k in ("ok", "cat", "pair")}
    return {
        **out,
        "raw": {k: x[sel] for k, x in d["raw"].items()},
        "cues": {k: x[sel] for k, x in d["cues"].items()},
    }


def isotonic(c: cal.Calibration, fit_on: dict, judge: dict, img_size: int) -> np.ndarray:
    """Isotonic regression of "correct" on the calibration's linear score, applied by interpolation."""
    from scipy.optimize import isotonic_regression

    score = lambda d: cal.features(d["raw"], img_size) @ np.asarray(c.coef)  # noqa: E731
    s = score(fit_on)
    order = np.argsort(s)
    fitted = isotonic_regression(fit_on["ok"][order].astype(float)).x
    return np.interp(score(judge), s[order], fitted)


def table(fit_on: dict, judge: dict, img_size: int, title: str) -> dict:
    c = cal.fit(fit_on["raw"], fit_on["ok"], img_size, groups=fit_on["pair"])
    p = cal.apply(c, judge["raw"], img_size)
    rows = {**judge["cues"], "calibrated": p}
    print(f"\n### {title}: fit on {len(fit_on['ok'])} points, judged on {len(judge['ok'])} "
          f"({100 * judge['ok'].mean():.1f}% correct at alpha {ALPHA})\n")  # fmt: skip
    print("| cue | AUROC | ECE | Brier |\n|---|---|---|---|")
    out = {}
    for name, s in rows.items():
        a = auroc(s, judge["ok"])
        e = cal.expected_calibration_error(s, judge["ok"])
        b = cal.brier_score(s, judge["ok"])
        out[name] = (a, e, b)
        print(f"| `{name}` | {a:.3f} | {e:.4f} | {b:.3f} |")
    # The other family: isotonic regression on the same linear score (scipy), judged alike.
    iso = isotonic(c, fit_on, judge, img_size)
    a, e, b = (
        auroc(iso, judge["ok"]),
        cal.expected_calibration_error(iso, judge["ok"]),
        cal.brier_score(iso, judge["ok"]),
    )
    print(f"| isotonic on the same score | {a:.3f} | {e:.4f} | {b:.3f} |")
    kept = p >= 0.8
    if kept.any():
        print(
            f"\n`--min-confidence 0.8`: keeps {kept.sum()} of {len(p)} points,"
            f" {100 * judge['ok'][kept].mean():.1f}% correct"
        )
    for t in (0.5, 0.7, 0.9):
        k = p >= t
        if k.any():
            print(f"min confidence {t}: keeps {k.sum()} points, {100 * judge['ok'][k].mean():.1f}% correct")
    print(f"score chosen: {c.score}; coef {np.round(c.coef, 3)}, intercept {c.intercept:.3f}")
    print("cross-validated log-loss:", {k: round(v, 4) for k, v in c.extra["cv_log_loss"].items()})
    return out


def main(willow: str, syn_val: str, syn_test: str, img_size: int = 128) -> None:
    w, sv, st = load(willow), load(syn_val), load(syn_test)
    cats = sorted(set(w["cat"]))
    a, b = np.isin(w["cat"], cats[:2]), np.isin(w["cat"], cats[2:])
    table(subset(w, a), subset(w, b), img_size, f"PF-WILLOW {cats[:2]} -> {cats[2:]}")
    table(subset(w, b), subset(w, a), img_size, f"PF-WILLOW {cats[2:]} -> {cats[:2]}")
    table(sv, st, img_size, "synthetic val -> synthetic test")
    table(sv, w, img_size, "synthetic val -> PF-WILLOW (all 4 classes)")


if __name__ == "__main__":
    main(*sys.argv[1:4], *(int(x) for x in sys.argv[4:5]))
