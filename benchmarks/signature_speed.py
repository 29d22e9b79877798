"""Signature throughput over the dev corpus, against the decode floor and the peers.

    python benchmarks/signature_speed.py [--runs 3] [--skip-memory]

Every figure is measured in this run: the median over ``--runs`` runs of the CPU seconds per
image (wall-clock time for the all-cores table). Each run passes over the corpus once with every
method in turn, and the ratios (to the decode floor, to 1.1.2) are taken within each run, then
their median: so ratios between rows hold even on a busy machine. Rows:

- decode full / decode draft: Pillow's decode alone, at full scale and at the reduced DCT scale
  our loader picks: the floor under any signature computed from the pixels. "luma plane only"
  decodes just the JPEG's Y plane at that scale: what skipping colour would buy (we do not; see
  draft_distance.py for what it would cost).
- ours: ``ImageSignature(draft=...).generate_signature(path)``, draft decode on (the stores
  image-match 2 makes) and off (the default, bit-identical to image-match 1.1.2); each with the
  compiled kernel (``image_match.kernel``, when it is built) and with the numpy reference
  (``IMAGE_MATCH_SIGNATURE_KERNEL=numpy``), which give the same signatures.
- image-match 1.1.2, imagehash.phash, pdqhash: the same files, when installed.
- all cores: ``generate_signatures`` with one process per core, against one process.

Then the peak RSS of signing one 50-megapixel JPEG in a fresh process, with each implementation.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import (CACHE, corpus_paths, load_image_match_1x, machine_line,  # noqa: E402
                    open_luma_draft, optional_import, print_table, time_interleaved)
from image_match import kernel  # noqa: E402
from image_match.goldberg import ImageSignature  # noqa: E402
from image_match.loading import reduce_for_signature  # noqa: E402


def decode_full(path):
    with Image.open(path) as image:
        image.load()


def decode_draft(path):
    with Image.open(path) as image:
        reduce_for_signature(image)
        image.load()


def decode_luma_draft(path):
    image, _ = open_luma_draft(path)
    with image:
        image.load()


def with_kernel(function, enabled):
    """``function`` run with the compiled kernel on or off (``kernel.use``)."""
    def run(*args):
        previous = kernel.use(enabled)
        try:
            return function(*args)
        finally:
            kernel.use(previous)
    return run


def methods():
    ours_draft = ImageSignature(draft=True)
    ours_full = ImageSignature(draft=False)
    rows = [
        ("decode full (Pillow)", decode_full, "full"),
        ("decode draft (Pillow, our scale)", decode_draft, "draft"),
        ("decode draft, luma plane only", decode_luma_draft, "draft"),
    ]
    implementations = [("numpy", False)]
    if kernel.available():
        implementations.insert(0, ("kernel", True))
    for name, enabled in implementations:
        rows += [
            (f"ours, draft decode (new stores), {name}",
             with_kernel(ours_draft.generate_signature, enabled), "draft"),
            (f"ours, full decode (1.x-exact), {name}",
             with_kernel(ours_full.generate_signature, enabled), "full"),
        ]
    old = load_image_match_1x()
    if old is not None:
        rows.append(("image-match 1.1.2", old.ImageSignature().generate_signature, "full"))
    imagehash = optional_import("imagehash")
    if imagehash is not None:
        def phash(path):
            with Image.open(path) as image:
                return imagehash.phash(image)
        rows.append(("imagehash.phash", phash, "full"))
    pdqhash = optional_import("pdqhash")
    if pdqhash is not None:
        def pdq(path):
            with Image.open(path) as image:
                return pdqhash.compute(np.asarray(image.convert("RGB")))
        rows.append(("pdqhash", pdq, "full"))
    return rows


def all_cores(paths, runs):
    generator = ImageSignature(draft=True)
    items = [str(p) for p in paths] * 4  # amortize the pool's start
    timings = {}
    for workers in (1, os.cpu_count() or 1):
        per_run = []
        for _ in range(runs):
            start = time.perf_counter()
            for result in generator.generate_signatures(items, workers=workers):
                assert not isinstance(result, Exception), result
            per_run.append((time.perf_counter() - start) / len(items))
        timings[workers] = sorted(per_run)[len(per_run) // 2]
    return timings


def big_jpeg(megapixels=50):
    """A 50-megapixel photographic JPEG, made once from a corpus image and kept in the cache."""
    path = CACHE / f"photo-{megapixels}mp.jpg"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _, paths = corpus_paths()
        width = int((megapixels * 1e6 * 4 / 3) ** 0.5)
        height = int(width * 3 / 4)
        with Image.open(paths[0]) as source:
            large = source.convert("RGB").resize((width, height), Image.BICUBIC)
        noise = np.random.default_rng(0).integers(-12, 13, (height, width, 1), dtype=np.int16)
        pixels = np.clip(np.asarray(large, dtype=np.int16) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(path, quality=90)
    return path


# VmHWM, not ru_maxrss: the latter carries the parent's peak across fork and exec.
PEAK_RSS_SCRIPT = """
import sys
def peak_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
from image_match.goldberg import ImageSignature
before = peak_kib()
ImageSignature(draft={draft}).generate_signature(sys.argv[1])
print(before, peak_kib())
"""


def peak_rss(path, draft, implementation):
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent),
               IMAGE_MATCH_SIGNATURE_KERNEL="auto" if implementation == "kernel" else "numpy")
    out = subprocess.run([sys.executable, "-c", PEAK_RSS_SCRIPT.format(draft=draft), str(path)],
                         capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return None, out.stderr.strip().splitlines()[-1]
    before, after = (int(v) / 1024 for v in out.stdout.split())
    return before, after


def median_ratio(numerators, denominators):
    """The median over runs of one run's ratio."""
    return statistics.median(a / b for a, b in zip(numerators, denominators))


def load_average():
    """The 1-minute load average at the start: how busy the machine was while measured."""
    return f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "unknown"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    folder, paths = corpus_paths()
    print(f"{len(paths)} images from {folder}; {machine_line()}; median of {args.runs} runs; "
          f"load average {load_average()}; signatures by default: {kernel.describe()}\n")
    rows = methods()
    per_run = dict(zip((name for name, _, _ in rows), time_interleaved(
        [function for _, function, _ in rows], [str(p) for p in paths], runs=args.runs)))
    floors = {"full": per_run["decode full (Pillow)"],
              "draft": per_run["decode draft (Pillow, our scale)"]}
    old = per_run.get("image-match 1.1.2")
    table = []
    for name, _, floor_kind in rows:
        seconds = statistics.median(per_run[name])
        print(f"  {name}: {seconds * 1000:.2f} ms", file=sys.stderr)
        # Ratios within each run (the same minutes of the machine), then their median.
        table.append((
            name, f"{1 / seconds:.0f}", f"{seconds * 1000:.2f}",
            f"{median_ratio(old, per_run[name]):.1f}x" if old else "-",
            f"{median_ratio(per_run[name], floors[floor_kind]):.2f}",
        ))
    print("One process:\n")
    print_table(["method", "images/s", "ms/image", "speed vs 1.1.2", "time / decode floor"], table)

    timings = all_cores(paths, args.runs)
    single = timings[1]
    print(f"\nAll cores (generate_signatures, ours with draft decode, {len(paths) * 4} images):\n")
    print_table(["processes", "images/s", "speed-up"],
                [(w, f"{1 / s:.0f}", f"{single / s:.2f}x") for w, s in sorted(timings.items())])

    if not args.skip_memory:
        path = big_jpeg()
        with Image.open(path) as image:
            size = f"{image.width}x{image.height}"
        rows = []
        for draft in (True, False):
            for implementation in ("kernel", "numpy") if kernel.available() else ("numpy",):
                before, after = peak_rss(path, draft, implementation)
                if before is None:
                    rows.append((f"draft={draft}", implementation, "-", f"failed: {after}"))
                else:
                    rows.append((f"draft={draft}", implementation, f"{before:.0f}", f"{after:.0f}"))
        print(f"\nPeak RSS signing one {size} JPEG ({path.stat().st_size / 1e6:.1f} MB), fresh process:\n")
        print_table(["decode", "signature", "MB after imports", "MB peak"], rows)


if __name__ == "__main__":
    main()
