"""Coverage-guided fuzzing (atheris, libFuzzer's engine for Python) of what reads user input.

    python fuzz/run.py image --seconds 3600          # the loader and the signature
    python fuzz/run.py store_url --runs 100000       # the store URL parsers
    python fuzz/run.py key_value --seconds 600       # the CLI's KEY=VALUE options
    python fuzz/run.py all --seconds 600 --report benchmarks/results/fuzz.txt

Each target (``fuzz/targets.py``) runs in a child process from a seed corpus (for ``image``: the
photos in tests/data, and one of them saved in every format and mode Pillow writes), which
libFuzzer mutates, keeping what reaches new code in image_match and Pillow's Python code. A
finding is any input on which a check fails (an exception that is not image-match's, a wrong
signature) or that takes longer than ``--timeout`` seconds: libFuzzer stops there and writes it
to ``WORKDIR/crash-*`` or ``timeout-*``. The summary line per target gives the executions, the
coverage reached and the findings.

Images are limited to ``--max-pixels`` (4 million by default, ``IMAGE_MATCH_MAX_IMAGE_PIXELS`` in
the child) so that a mutated header announcing a huge image is refused quickly rather than
decoded for seconds; the limit itself is what is then exercised.
"""

import argparse
import glob
import io
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET_NAMES = ("image", "store_url", "key_value")

URL_SEEDS = [
    "sqlite:///images.db", "sqlite:////srv/data/images.db", "sqlite://localhost/x.db",
    "sqlite:images.db", "sqlite:/x.db", "sqlite:///a%20b.db", "sqlite:///:memory:",
    "http://localhost:9200/images", "https://user:pa%3Ass@es.example.org:443/prefix/idx",
    "http://[::1]:9200/images", "http://[::1/x", "http://h:99999/x", "HTTP://H/", "ftp://x/y",
    "http://user@host/", "http://:@/", "https://xn--nxasmq6b.example/idx",
]
KEY_VALUE_SEEDS = [
    b"owner=ann", b"camera.make=Nikon\0camera.year=2019", b"n=3\0x=2.5\0flag=true",
    b'quoted="3"\0n=null\0list=[1,2]', b"a=1\0a.b=2", b"=x\0novalue", b"nan=NaN\0big=1e400",
    b"deep.a.b.c.d=1\0deep.a.b=2",
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=TARGET_NAMES + ("all",))
    parser.add_argument("--seconds", type=float, default=None, help="run each target this long")
    parser.add_argument("--runs", type=int, default=None, help="or this many inputs each")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--max-pixels", type=int, default=4_000_000)
    parser.add_argument("--workdir", default=None, help="corpus and findings (default: a temp dir)")
    parser.add_argument("--report", default=None, help="append the summary to this file")
    args = parser.parse_args(argv)
    if args.seconds is None and args.runs is None:
        args.seconds = 60
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="image-match-fuzz-"))
    targets = TARGET_NAMES if args.target == "all" else (args.target,)
    rows = [fuzz(name, workdir / name, args) for name in targets]
    lines = summary(rows, args)
    print("\n".join(lines))
    if args.report:
        with open(args.report, "a") as report:
            report.write("\n".join(lines) + "\n\n")
    return 1 if any(row["findings"] for row in rows) else 0


def fuzz(name, workdir, args):
    """Run one target in a child process; its statistics and findings."""
    corpus = workdir / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    if not any(corpus.iterdir()):
        write_seeds(name, corpus)
    options = [f"-timeout={args.timeout}", "-rss_limit_mb=3072", "-print_final_stats=1",
               f"-artifact_prefix={workdir}/"]
    if args.seconds is not None:
        options.append(f"-max_total_time={int(args.seconds)}")
    if args.runs is not None:
        options.append(f"-runs={args.runs}")
    env = dict(os.environ, IMAGE_MATCH_MAX_IMAGE_PIXELS=str(args.max_pixels),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    started = time.monotonic()
    child = subprocess.run([sys.executable, str(HERE / "child.py"), name, str(corpus), *options],
                           env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           errors="replace")
    elapsed = time.monotonic() - started
    (workdir / "fuzz.log").write_text(child.stdout)
    findings = sorted(str(p) for pattern in ("crash-*", "timeout-*", "oom-*", "leak-*")
                      for p in workdir.glob(pattern))
    stats = dict(re.findall(r"stat::(\w+):\s+(\d+)", child.stdout))
    coverage = re.findall(r"cov: (\d+) ft: (\d+)", child.stdout)
    row = {"target": name, "seconds": elapsed, "runs": int(stats.get("number_of_executed_units", 0)),
           "coverage": int(coverage[-1][0]) if coverage else 0,
           "features": int(coverage[-1][1]) if coverage else 0,
           "corpus": len(list(corpus.iterdir())), "findings": findings,
           "exit": child.returncode, "log": workdir / "fuzz.log"}
    if child.returncode not in (0,) and not findings:
        row["findings"] = [f"exit {child.returncode}, see {row['log']}"]
    if row["findings"]:
        tail = "\n".join(child.stdout.strip().splitlines()[-40:])
        print(f"--- {name}: finding(s) {row['findings']}\n{tail}", file=sys.stderr)
    return row


def summary(rows, args):
    when = time.strftime("%Y-%m-%d %H:%M")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"fuzz/run.py, {when}, load {load:.1f}, max pixels {args.max_pixels}, timeout "
             f"{args.timeout} s per input",
             f"{'target':<10} {'seconds':>8} {'executions':>11} {'exec/s':>7} {'coverage':>9} "
             f"{'features':>9} {'corpus':>7} findings"]
    for row in rows:
        rate = row["runs"] / row["seconds"] if row["seconds"] else 0
        lines.append(f"{row['target']:<10} {row['seconds']:>8.0f} {row['runs']:>11,} {rate:>7.0f} "
                     f"{row['coverage']:>9} {row['features']:>9} {row['corpus']:>7} "
                     f"{len(row['findings'])} {' '.join(row['findings'])}".rstrip())
    return lines


def write_seeds(name, corpus):
    if name == "store_url":
        seeds = [url.encode() for url in URL_SEEDS]
    elif name == "key_value":
        seeds = KEY_VALUE_SEEDS
    else:
        seeds = image_seeds()
    for number, seed in enumerate(seeds):
        (corpus / f"seed-{number:03d}").write_bytes(seed)


def image_seeds():
    """The shipped photos as they are, and one of them, small, in every format and mode that
    Pillow writes: each format's parser is then reached from the first runs."""
    import numpy as np
    from PIL import Image

    paths = sorted(glob.glob(str(ROOT / "tests" / "data" / "*.jpg")))[:6]
    paths += sorted(glob.glob(str(ROOT / "tests" / "data" / "*.png")))
    seeds = [Path(p).read_bytes() for p in paths]
    with Image.open(paths[0]) as opened:
        small = opened.convert("RGB")
    small.thumbnail((96, 96))
    grey = small.convert("L")
    variants = [
        (small, "PNG", {}), (small.convert("RGBA"), "PNG", {}), (small.convert("P"), "PNG", {}),
        (Image.fromarray(np.asarray(grey).astype(np.uint16) * 257), "PNG", {}),
        (small, "GIF", {}), (small, "BMP", {}), (small.convert("1"), "BMP", {}),
        (small, "TIFF", {}), (small.convert("CMYK"), "TIFF", {}),
        (Image.fromarray(np.asarray(grey).astype(np.int32)), "TIFF", {}),
        (Image.fromarray(np.asarray(grey).astype(np.float32) / 255), "TIFF", {}),
        (small, "TIFF", {"compression": "tiff_lzw"}), (small, "WEBP", {"quality": 60}),
        (small, "WEBP", {"lossless": True}), (small, "ICO", {}), (small, "PPM", {}),
        (grey, "PPM", {}), (small, "TGA", {}), (small, "JPEG", {"progressive": True}),
        (small.convert("CMYK"), "JPEG", {}), (small, "JPEG2000", {}), (small, "PCX", {}),
        (small, "SGI", {}), (small, "IM", {}), (small, "DDS", {}),
    ]
    for image, fmt, options in variants:
        buffer = io.BytesIO()
        try:
            image.save(buffer, fmt, **options)
        except (OSError, ValueError, KeyError):  # a codec this Pillow was built without
            continue
        seeds.append(buffer.getvalue())
    # An animated GIF, whose first frame is signed.
    buffer = io.BytesIO()
    small.save(buffer, "GIF", save_all=True, append_images=[grey.convert("RGB")])
    seeds.append(buffer.getvalue())
    return seeds


if __name__ == "__main__":
    sys.exit(main())
