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

KERNEL_STAGES = ("decode_grey_source (open, draft decode, EXIF, grey rule)",
                 "signature, compiled kernel (one call)")
NUMPY_STAGES = ("decode_grey_source (open, draft decode, EXIF, grey rule)",
                "grey levels (GreySource.grey)", "crop", "grid", "block means", "differences",
                "quantization")


def decode_only(path):
    with Image.open(path) as image:
        reduce_for_signature(image)
        image.load()


def kernel_stage_times(path, clock=time.process_time):
    """Seconds per stage for one image, signed by the compiled kernel."""
    marks = [clock()]
    source, shape = decode_grey_source(path, draft=True)
    marks.append(clock())
    goldberg.signature_from_source(source, shape)
    marks.append(clock())
    return np.diff(marks)


def numpy_stage_times(path, clock=time.process_time):
    """Seconds per stage for one image, signed by the numpy reference's steps."""
    marks = [clock()]
    source, shape = decode_grey_source(path, draft=True)
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


def per_image(function, paths):
    return np.sum([function(path) for path in paths], axis=0) / len(paths)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    folder, paths = corpus_paths()
    paths = [str(p) for p in paths if str(p).lower().endswith((".jpg", ".jpeg"))]
    print(f"{len(paths)} JPEGs from {folder}; {machine_line()}; median of {args.runs} runs; "
          f"load average {os.getloadavg()[0]:.2f}\n")
    # First, while the process is fresh: once its allocator has grown, the faults are gone.
    generator = goldberg.ImageSignature(draft=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    for path in paths:
        generator.generate_signature(path)
    after = resource.getrusage(resource.RUSAGE_SELF)
    faults = (after.ru_minflt - before.ru_minflt) / len(paths)
    system = (after.ru_stime - before.ru_stime) * 1e3 / len(paths)
    print(f"Signing the corpus once, in a fresh process: {faults:.0f} page faults and "
          f"{system:.2f} ms of system time a picture\n")
    # Each run: a pass of the decode floor, of the kernel's stages and of numpy's, each pass
    # over the whole corpus (as a process signing many images runs: the decoder's code and
    # tables stay in the caches, which a pass doing both would evict).
    floors, kernels, numpys = [], [], []
    for _ in range(args.runs):
        started = time.process_time()
        for path in paths:
            decode_only(path)
        floors.append((time.process_time() - started) / len(paths))
        if kernel.available():
            previous = kernel.use(True)
            kernels.append(per_image(kernel_stage_times, paths))
            kernel.use(previous)
        numpys.append(per_image(numpy_stage_times, paths))
    floor = np.median(floors) * 1e6
    rows = [("Pillow's colour draft decode alone (the decode floor)", f"{floor:.0f}")]
    if kernels:
        stages = np.median(kernels, axis=0) * 1e6
        rows += [(f"kernel: {stage}", f"{us:.0f}") for stage, us in zip(KERNEL_STAGES, stages)]
        rows.append(("kernel: all", f"{stages.sum():.0f} ({stages.sum() / floor:.2f} x floor)"))
    stages = np.median(numpys, axis=0) * 1e6
    rows += [(f"numpy: {stage}", f"{us:.0f}") for stage, us in zip(NUMPY_STAGES, stages)]
    rows.append(("numpy: all", f"{stages.sum():.0f} ({stages.sum() / floor:.2f} x floor)"))
    print_table(["stage", "us/image"], rows)


if __name__ == "__main__":
    main()
