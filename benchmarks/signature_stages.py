"""Where a default signature's time goes, stage by stage, over the dev corpus.

    python benchmarks/signature_stages.py [--runs 5]

The steps ``ImageSignature(draft=True).generate_signature`` takes (the draft decode of the stores
image-match 2 makes), timed apart with ``time.perf_counter`` around each: ``decode_grey`` (open, draft decode, EXIF, grey conversion;
Pillow's draft decode alone is timed in a pass of its own, for the difference), then the
arithmetic: crop, grid, block means, neighbour differences, quantization. Medians over
``--runs`` passes, in microseconds per image; then the page faults and system time of signing
the corpus once (``getrusage``). The speed table (signature_speed.py) says how the whole
compares with the decode alone and with the peers; this says what the difference is made of.
"""

import argparse
import io
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from common import corpus_paths, machine_line, print_table  # noqa: E402
from image_match import goldberg  # noqa: E402
from image_match.loading import decode_grey, reduce_for_signature  # noqa: E402

STAGES = ("decode_grey (open, draft decode, EXIF, grey conversion)", "crop", "grid",
          "block means", "differences", "quantization")


def decode_only(data):
    with Image.open(io.BytesIO(data)) as image:
        reduce_for_signature(image)
        image.load()


def stage_times(data):
    """Seconds per stage for one image's bytes, as the default signature takes them."""
    marks = [time.perf_counter()]
    grey, shape = decode_grey(data, bytestream=True)
    marks.append(time.perf_counter())
    window = goldberg.crop_window(grey)
    if shape != grey.shape:
        window = goldberg._scale_window(window, shape, grey.shape, "1.x")
    marks.append(time.perf_counter())
    rows, columns = goldberg.grid_points(window)
    size = goldberg.sample_size(shape)
    spans = (goldberg.square_spans(rows, size, shape[0]),
             goldberg.square_spans(columns, size, shape[1]))
    marks.append(time.perf_counter())
    means = goldberg.block_means(grey, *spans, shape)
    marks.append(time.perf_counter())
    differences = goldberg.neighbour_differences(means)
    marks.append(time.perf_counter())
    goldberg.quantize_differences(differences)
    marks.append(time.perf_counter())
    return np.diff(marks)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    folder, paths = corpus_paths()
    datas = [Path(p).read_bytes() for p in paths if str(p).lower().endswith((".jpg", ".jpeg"))]
    print(f"{len(datas)} JPEGs from {folder}; {machine_line()}; median of {args.runs} runs\n")
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
        started = time.perf_counter()
        for data in datas:
            decode_only(data)
        floor.append((time.perf_counter() - started) / len(datas))
    medians = np.median(per_run, axis=0) * 1e6
    rows = [(STAGES[0], f"{medians[0]:.0f}"),
            ("  of which Pillow's draft decode alone", f"{np.median(floor) * 1e6:.0f}")]
    rows += [(stage, f"{us:.0f}") for stage, us in zip(STAGES[1:], medians[1:])]
    rows.append(("all", f"{medians.sum():.0f}"))
    print_table(["stage", "us/image"], rows)


if __name__ == "__main__":
    main()
