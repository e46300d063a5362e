"""Regenerate ``simplematch/export/parity_images/`` (run from the repository root with the dev venv).

The export parity check needs a few natural images in every install (the runtime-only and ``[train]``
installs have no dataset and no scikit-image). These are four pairs of overlapping crops (different
offset and scale) of scikit-image sample photos whose licences allow redistribution; see SOURCE.txt there.
Pairs of the same scene give the matcher real correlation peaks, so the keypoint agreement is measured
where matching is decided by the features, not by ties in a flat correlation.
"""

from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

OUT = Path("simplematch/export/parity_images")
# photo, (left, top, width, height) of the first crop, (left, top, width, height) of the second.
PAIRS = [
    ("astronaut", (60, 0, 360, 300), (120, 40, 300, 330)),
    ("coffee", (100, 20, 400, 340), (60, 0, 320, 300)),
    ("chelsea", (40, 0, 340, 300), (110, 30, 300, 240)),
    ("rocket", (120, 60, 260, 300), (160, 100, 280, 280)),
]
SIZES = [(224, 187), (192, 211), (224, 198), (176, 203)]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for (name, a, b), size in zip(PAIRS, SIZES, strict=True):
        photo = Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
        for tag, (x, y, w, h) in (("a", a), ("b", b)):
            crop = photo.crop((x, y, x + w, y + h)).resize(size, Image.Resampling.LANCZOS)
            crop.save(OUT / f"{name}_{tag}.jpg", quality=90, optimize=True)


if __name__ == "__main__":
    main()
