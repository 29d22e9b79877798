"""Where a default signature's time goes, stage by stage, over the dev corpus.

    python benchmarks/signature_stages.py [--runs 5]

The steps ``ImageSignature(draft=True).generate_signature`` takes (the draft decode of the stores
image-match 2 makes), timed apart with ``time.process_time`` around each: ``decode_grey_source``
(open, draft decode, EXIF, the grey rule; Pillow's colour draft decode alone, the decode floor,
is timed in a pass of its own), then the arithmetic: by the compiled kernel in one call
(``image_match.kernel``, when it is built), and by the numpy reference step by step (making the
grey levels, crop, grid, block means, neighbour differences, quantization). Medians over
``--runs`` passes, in microseconds per image; then the page faults and system time of signing
the corpus once (``getrusage``). The speed table (signature_speed.py) says how the whole
compares with the decode alone and with the peers; this says what the difference is made of.
"""

import argparse
import io
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import corpus_paths, machine_line, print_table  # noqa: E402
from image_match import goldberg, kernel  # noqa: E402
from image_match.loading import decode_grey_source, reduce_for_signature  # noqa: E402

STAGES = ("decode_grey_source (open, draft decode, EXIF, grey rule)",
          "signature, compiled kernel (one call)",
          "numpy: grey levels (GreySource.grey)", "numpy: crop", "numpy: grid",
          "numpy: block means", "numpy: differences", "numpy: quantization")


def decode_only(data):
    with Image.open(io.BytesIO(data)) as image:
        reduce_for_signature(image)
        image.load()


def stage_times(data, clock=time.process_time):
    """Seconds per stage for one image's bytes, as the default signature takes them."""
    marks = [clock()]
    source, shape = decode_grey_source(data, bytestream=True, draft=True)
    marks.append(clock())
    if kernel.available():
        previous = kernel.use(True)
        goldberg.signature_from_source(source, shape)
        kernel.use(previous)
    marks.append(clock())
    grey = source.grey()
    marks.append(clock())
    window = goldberg.crop_window(grey)
    if shape != grey.shape:
        window = goldberg._scale_window(window, shape, grey.shape, "1.x")
    marks.append(clock())
    rows, columns = goldberg.grid_points(window)
    size = goldberg.sample_size(shape)
    spans = (goldberg.square_spans(rows, size, shape[0]),
             goldberg.square_spans(columns, size, shape[1]))
    marks.append(clock())
    means = goldberg.block_means(grey, *spans, shape)
    marks.append(clock())
    differences = goldberg.neighbour_differences(means)
    marks.append(clock())
    goldberg.quantize_differences(differences)
    marks.append(clock())
    return np.diff(marks)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    folder, paths = corpus_paths()
    datas = [Path(p).read_bytes() for p in paths if str(p).lower().endswith((".jpg", ".jpeg"))]
    print(f"{len(datas)} JPEGs from {folder}; {machine_line()}; median of {args.runs} runs; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    # First, while the process is fresh: once its allocator has grown, the faults are gone.
    generator = goldberg.ImageSignature(draft=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for data in datas:
        generator.generate_signature(data, bytestream=True)
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults = (after.ru_minflt - before.ru_minflt) / len(datas)
    system = (after.ru_stime - before.ru_stime) * 1e3 / len(datas)
    print(f"Signing the corpus once, in a fresh process: {faults:.0f} page faults and "
          f"{system:.2f} ms of system time a picture\n")
    per_run, floor = [], []
    for _ in range(args.runs):
        per_run.append(np.sum([stage_times(data) for data in datas], axis=0) / len(datas))
        started = time.process_time()
        for data in datas:
            decode_only(data)
        floor.append((time.process_time() - started) / len(datas))
    medians = np.median(per_run, axis=0) * 1e6
    floor_us = np.median(floor) * 1e6
    rows = [(STAGES[0], f"{medians[0]:.0f}"),
            ("  Pillow's colour draft decode alone (the decode floor)", f"{floor_us:.0f}")]
    rows += [(stage, f"{us:.0f}") for stage, us in zip(STAGES[1:], medians[1:])
             if kernel.available() or "kernel" not in stage]
    rows.append(("all, compiled kernel", f"{medians[:2].sum():.0f}"))
    rows.append(("all, numpy reference", f"{medians[0] + medians[2:].sum():.0f}"))
    print_table(["stage", "us/image"], rows)
    print(f"\nTime / decode floor: {medians[:2].sum() / floor_us:.2f} with the kernel, "
          f"{(medians[0] + medians[2:].sum()) / floor_us:.2f} with numpy")


if __name__ == "__main__":
    main()
