"""Regenerate tests/data/reference_extra.npz: image-match 1.1.2's signatures of the synthetic
inputs below, which the dev corpus (colour JPEGs only) does not cover.

    python tests/data/make_reference.py

Needs network access to PyPI once (image-match 1.1.2 is installed into the benchmark cache, see
benchmarks/common.py) and scikit-image. reference_1x.npz, the other file here, is a copy of the
dev corpus reference (../shared/corpus/dev/reference) for the JPEGs in this folder.
"""

import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "benchmarks"))

from common import load_image_match_1x  # noqa: E402

SOURCE = HERE / "p6fcf82fd1da.jpg"


def make_inputs():
    """Write the synthetic files; return their names."""
    with Image.open(SOURCE) as image:
        rgb = image.convert("RGB")
    grey = rgb.convert("L")
    grey.save(HERE / "grey.png")
    grey.save(HERE / "grey.jpg", quality=90)
    rgba = rgb.convert("RGBA")
    alpha = np.tile(np.linspace(40, 255, rgb.width).astype(np.uint8), (rgb.height, 1))
    rgba.putalpha(Image.fromarray(alpha))
    rgba.save(HERE / "rgba.png")
    return ["grey.png", "grey.jpg", "rgba.png"]


def main():
    old = load_image_match_1x()
    if old is None:
        sys.exit("image-match 1.1.2 is not available")
    names = make_inputs()
    generator = old.ImageSignature()
    signatures = np.array([generator.generate_signature(str(HERE / name)) for name in names])
    np.savez_compressed(HERE / "reference_extra.npz", names=np.array(names), signatures=signatures)
    print(f"wrote {len(names)} signatures to reference_extra.npz")


if __name__ == "__main__":
    main()
