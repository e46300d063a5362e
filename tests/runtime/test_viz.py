"""The match picture (simplematch.runtime.viz): canvas size, colours, labels."""

from __future__ import annotations

import numpy as np

from simplematch.runtime.viz import canvas_size, render_matches


def test_viz_size_colours_and_labels() -> None:
    src = np.zeros((30, 40, 3), np.uint8)
    trg = np.zeros((90, 45, 3), np.uint8)
    kps = np.array([[1.0, 1.0], [20, 15], [39, 29]])
    pic = render_matches(src, trg, kps, kps, [0.9, 0.5, 0.1])
    assert pic.size == canvas_size((30, 40), (90, 45)) == (120 + 45, 90)
    arr = np.asarray(pic)
    colours = {tuple(c) for c in arr.reshape(-1, 3)}
    assert len(colours) > 10  # distinct line colours + white score labels
    assert (255, 255, 255) in colours
