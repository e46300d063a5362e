"""Regenerate the example pair in this folder (run from the repository root with the dev venv).

Source: scikit-image's sample photo "chelsea" (Chelsea the cat, by Stefan van der Walt; CC0, no copyright
restrictions), shrunk to 300x200. Target: the same photo under a fixed homography and a colour change, so
the true correspondences (truth.json) are known exactly. The photo is in the synthetic *held-out* split, so
the demo model never trained on it.
"""

import json
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageEnhance
from skimage.transform import ProjectiveTransform, warp

HERE = Path(__file__).parent
# Hand-picked parts in the original 451x300 photo: eyes, eye corners, nose, ears, cheeks, forehead.
PARTS = [
    (172, 110),
    (318, 135),
    (138, 104),
    (342, 142),
    (262, 243),
    (60, 20),
    (362, 25),
    (100, 200),
    (335, 225),
    (250, 45),
    (215, 150),
    (290, 285),
]


def main() -> None:
    photo = Image.fromarray(skimage.data.chelsea())
    src = photo.resize((300, 200), Image.Resampling.BILINEAR)
    kps = np.array(PARTS, dtype=np.float64) * (300 / 451)
    # target -> source map (skimage's warp takes the inverse map); a mild rotation + zoom + perspective.
    h = np.array([[0.92, -0.14, 20.0], [0.12, 0.95, -6.0], [0.0002, 0.0004, 1.0]])
    forward = ProjectiveTransform(np.linalg.inv(h))  # source -> target
    tgt = warp(np.asarray(src), ProjectiveTransform(h), output_shape=(220, 280), mode="edge")
    tgt_img = Image.fromarray((tgt * 255).round().astype(np.uint8))
    tgt_img = ImageEnhance.Color(ImageEnhance.Brightness(tgt_img).enhance(1.15)).enhance(0.7)
    truth = forward(kps)
    src.save(HERE / "src.png")
    tgt_img.save(HERE / "tgt.png")
    (HERE / "kps.json").write_text(json.dumps({"keypoints": np.round(kps, 1).tolist()}, indent=1) + "\n")
    (HERE / "truth.json").write_text(json.dumps({"target": np.round(truth, 2).tolist()}, indent=1) + "\n")


if __name__ == "__main__":
    main()
