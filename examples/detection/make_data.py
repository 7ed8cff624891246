"""Stands in for *your* frames: writes data/images/*.png and data/annotations.json (COCO).

Scenes of 1-3 handwritten digits (scikit-learn's 8x8 digits, scaled up) on a 48x48 canvas;
each digit's box is the tight box of its pixels and its category is the digit. Any COCO
detection file works the same way (``bbox`` = [x, y, width, height] in pixels).

    python make_data.py [N_IMAGES]
"""

import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300
CANVAS = 48
root = Path(__file__).parent / "data"
(root / "images").mkdir(parents=True, exist_ok=True)
digits = load_digits()
rng = np.random.default_rng(0)
images, annotations = [], []
for i in range(N):
    canvas = np.zeros((CANVAS, CANVAS), np.uint8)
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(rng.integers(1, 4)):
        j = rng.integers(len(digits.images))
        side = int(rng.integers(12, 21))  # 8x8 digit drawn at 12..20 px
        glyph = Image.fromarray((digits.images[j] * 16).astype(np.uint8)).resize((side, side))
        g = np.asarray(glyph)
        x, y = (int(v) for v in rng.integers(0, CANVAS - side, 2))
        if any(x < bx2 and bx1 < x + side and y < by2 and by1 < y + side
               for bx1, by1, bx2, by2 in taken):  # fmt: skip
            continue  # keep digits apart
        canvas[y : y + side, x : x + side] = np.maximum(canvas[y : y + side, x : x + side], g)
        rows, cols = np.nonzero(g > 16)
        box = (x + cols.min(), y + rows.min(), x + cols.max() + 1, y + rows.max() + 1)
        taken.append((x, y, x + side, y + side))
        w, h = int(box[2] - box[0]), int(box[3] - box[1])
        annotations.append({"id": len(annotations) + 1, "image_id": i,
                            "category_id": int(digits.target[j]),
                            "bbox": [int(box[0]), int(box[1]), w, h], "area": w * h,
                            "iscrowd": 0})  # fmt: skip
    name = f"{i:04d}.png"
    Image.fromarray(canvas).save(root / "images" / name)
    images.append({"id": i, "file_name": name, "width": CANVAS, "height": CANVAS})
coco = {"images": images, "annotations": annotations,
        "categories": [{"id": d, "name": str(d)} for d in range(10)]}  # fmt: skip
(root / "annotations.json").write_text(json.dumps(coco))
print(f"wrote {N} images and {len(annotations)} boxes under {root}")
