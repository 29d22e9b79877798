"""How far draft decoding moves signatures from a full decode, over the dev corpus.

    python benchmarks/draft_distance.py

For each photo: the normalized distance between ``ImageSignature(draft=True)`` (image-match 2's
stores) and ``ImageSignature(draft=False)`` (the default: image-match 1.x's exact signature), per
variant; and for scale, the distance a real transformation causes (a Lanczos resize to half size, a
JPEG re-encode at quality 75), signed the exact way. Draft decoding is image-match 2's default for
new stores because its distances stay far below the cutoff and below those of a half-size resize.
Two more rows: the draft decode the loader used before it read a YCbCr JPEG's planes directly
(RGB, then Pillow's 8-bit grey), which the planes must stay as close to the full decode as (on
the whole corpus and on its held-out share); and why the loader decodes colour: signing the
JPEG's luma plane alone (faster, see signature_speed.py) moves signatures much further, because
luma weighs red and blue unlike 1.x's grey.
"""

import io
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from common import (corpus_paths, is_held_out, machine_line, open_luma_draft,  # noqa: E402
                    print_table)
from image_match.goldberg import ImageSignature, normalized_distance  # noqa: E402
from image_match.loading import (DRAFT_GREY_TABLE, DRAFT_MIN_SIDE, GREY_WEIGHTS,  # noqa: E402
                                 decode_grey, reduce_for_signature)


def reencoded(path, half=False, quality=75):
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if half:
        rgb = rgb.resize((rgb.width // 2, rgb.height // 2), Image.LANCZOS)
    buffer = io.BytesIO()
    rgb.save(buffer, "PNG" if half else "JPEG", quality=quality)
    return buffer.getvalue()


def luma_signature(generator, path):
    """Signed from the JPEG's luma plane alone (``open_luma_draft``), placed as on the original
    and turned upright as the loader turns it."""
    image, (height, width) = open_luma_draft(path)
    with image:
        upright = ImageOps.exif_transpose(image.convert("L"))
    if upright.size != image.size:
        height, width = width, height
    grey = np.asarray(upright, dtype=np.float32) / 255
    return generator.signature_of_grey(grey, (height, width))


def rgb_draft_signature(generator, path):
    """Signed from the draft decode to RGB, then Pillow's 8-bit grey (the loader's draft decode
    of JPEGs before it read the YCbCr planes), placed as on the original and turned upright."""
    with Image.open(path) as image:
        width, height = image.size
        if not reduce_for_signature(image):
            return generator.generate_signature(path)
        image.load()
        upright = ImageOps.exif_transpose(image)
    if upright.size != image.size:
        height, width = width, height
    grey = DRAFT_GREY_TABLE[np.asarray(upright.convert("L", matrix=(*GREY_WEIGHTS, 0.0)))]
    return generator.signature_of_grey(grey, (height, width))


def summary(name, distances):
    d = np.asarray(distances)
    return (name, f"{np.median(d):.3f}", f"{np.percentile(d, 90):.3f}", f"{np.percentile(d, 99):.3f}",
            f"{d.max():.3f}")


def main():
    folder, paths = corpus_paths()
    reduced = [decode_grey(p)[0].shape != decode_grey(p)[1] for p in paths]
    print(f"{len(paths)} images from {folder}; {sum(reduced)} of them reduced by draft decoding "
          f"(DRAFT_MIN_SIDE={DRAFT_MIN_SIDE}); {machine_line()}\n")
    rows = []
    for variant in ("1.x", "paper"):
        draft = ImageSignature(variant=variant, draft=True)
        exact = ImageSignature(variant=variant, draft=False)
        full = [exact.generate_signature(p) for p in paths]
        drafts = [normalized_distance(draft.generate_signature(p), f) for p, f in zip(paths, full)]
        rows.append(summary(f"{variant}: draft vs full decode", drafts))
        if variant == "1.x":
            before = [normalized_distance(rgb_draft_signature(draft, p), f)
                      for p, f in zip(paths, full)]
            rows.append(summary("1.x: draft, RGB then Pillow's 8-bit grey (before)", before))
            # The loader's draft decode was chosen on these photos too: the share kept out.
            held = [is_held_out(p) for p in paths]
            rows.append(summary(f"  held out ({sum(held)} photos): draft vs full decode",
                                [d for d, h in zip(drafts, held) if h]))
            rows.append(summary("  held out: RGB then 8-bit grey (before)",
                                [d for d, h in zip(before, held) if h]))
            rows.append(summary("1.x: luma plane only, draft scale (not used)",
                                [normalized_distance(luma_signature(draft, p), f)
                                 for p, f in zip(paths, full)]))
        rows.append(summary(f"{variant}: resize to 1/2 (full decode)",
                            [normalized_distance(exact.generate_signature(reencoded(p, half=True)), f)
                             for p, f in zip(paths, full)]))
        rows.append(summary(f"{variant}: JPEG quality 75 (full decode)",
                            [normalized_distance(exact.generate_signature(reencoded(p)), f)
                             for p, f in zip(paths, full)]))
    print_table(["distance", "median", "p90", "p99", "max"], rows)


if __name__ == "__main__":
    main()
