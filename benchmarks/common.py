"""What the benchmarks share: the corpus, image-match 1.1.2 loaded beside us, timing, tables."""

import importlib.util
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_CORPUS = ROOT.parent / "shared" / "corpus" / "dev"
TEST_DATA = ROOT / "tests" / "data"
CACHE = Path(os.environ.get("IMAGE_MATCH_BENCH_CACHE", Path.home() / ".cache" / "image-match-bench"))


def corpus_paths():
    """The dev corpus when it is there (../shared/corpus/dev), else the repo's tests/data."""
    folder = Path(os.environ.get("IMAGE_MATCH_CORPUS", SHARED_CORPUS))
    if not folder.is_dir():
        folder = TEST_DATA
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    return folder, paths


#: The share of the dev corpus kept out of every choice of a default, a margin or a threshold:
#: numbers on it tell how a tuned default does on photos it was not tuned on.
HOLDOUT_SHARE = 0.25


def is_held_out(path):
    """Whether a corpus photo belongs to the held-out share: a hash of its file name, so the split
    is the same in every benchmark, on every machine, and does not move when photos are added."""
    import hashlib

    digest = hashlib.blake2b(Path(path).name.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < HOLDOUT_SHARE * 2 ** 64


def split_held_out(paths):
    """``(tuning, held_out)``: the photos defaults may be chosen on, and the ones kept out."""
    paths = list(paths)
    return [p for p in paths if not is_held_out(p)], [p for p in paths if is_held_out(p)]


def load_image_match_1x():
    """image-match 1.1.2's goldberg module, or None.

    It is installed with ``pip install --no-deps --target`` into a cache folder and loaded under
    another module name, since its package name is ours. One shim: it calls
    ``skimage.io.imread(path, as_grey=True)``, a keyword scikit-image renamed ``as_gray``.
    """
    target = CACHE / "image-match-1.1.2"
    module_path = target / "image_match" / "goldberg.py"
    if not module_path.exists():
        result = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
             "image-match==1.1.2"], capture_output=True, text=True)
        if result.returncode != 0:
            print(f"image-match 1.1.2 not available: {result.stderr.strip()[-200:]}", file=sys.stderr)
            return None
    try:
        import skimage.io
    except ImportError:
        print("image-match 1.1.2 needs scikit-image: pip install scikit-image", file=sys.stderr)
        return None
    spec = importlib.util.spec_from_file_location("image_match_1x_goldberg", module_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def imread(path, as_grey=False, **kwargs):
        return skimage.io.imread(path, as_gray=as_grey, **kwargs)

    module.imread = imread
    return module


def optional_import(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def time_per_item(function, items, runs=3, clock=time.process_time):
    """Median over ``runs`` of the seconds per item of ``function`` applied to every item.

    CPU time of this process (all its threads) by default: on a shared, busy machine it moves far
    less than wall time, and a single process waits on nothing else here (files come from the
    page cache after the warm-up pass).
    """
    for item in items:  # warm the page cache and imports
        function(item)
    per_item = []
    for _ in range(runs):
        start = clock()
        for item in items:
            function(item)
        per_item.append((clock() - start) / len(items))
    return statistics.median(per_item)


def time_interleaved(functions, items, runs=3, clock=time.process_time):
    """Seconds per item of each of ``functions`` applied to every item, in ``runs`` runs: a list
    per function, one value per run.

    As ``time_per_item``, but every run times one pass of each function in turn, the order
    turning from run to run, so that a moment when the machine is busier weighs on all of them
    alike: ratios of the values of one run compare like with like.
    """
    for function in functions:  # warm the page cache and imports
        for item in items:
            function(item)
    per_run = [[] for _ in functions]
    for run in range(runs):
        order = list(range(len(functions)))
        order = order[run % len(order):] + order[:run % len(order)]
        for index in order:
            start = clock()
            for item in items:
                functions[index](item)
            per_run[index].append((clock() - start) / len(items))
    return per_run


def print_table(headers, rows, file=None):
    """A reStructuredText simple table, ready to paste into README.rst."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    rule = "  ".join("=" * w for w in widths)
    lines = [rule, "  ".join(h.ljust(w) for h, w in zip(headers, widths)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.append(rule)
    text = "\n".join(lines)
    print(text, file=file)
    return text


def machine_line():
    import platform

    return (f"{platform.python_implementation()} {platform.python_version()}, "
            f"{os.cpu_count()} cores, {platform.machine()}")


def open_luma_draft(path):
    """``(image, (height, width))``: a JPEG opened to decode its luma plane (Y) alone, at the DCT
    scale our loader picks for it, and its size before that reduction.

    Not what image-match does: JPEG luma is 0.299 R + 0.587 G + 0.114 B, while the signature's grey
    is 1.x's 0.2125 R + 0.7154 G + 0.0721 B. The benchmarks use it to show what skipping the
    chroma planes would buy (signature_speed.py) and cost (draft_distance.py).
    """
    from PIL import Image

    from image_match.loading import DRAFT_MIN_SIDE

    image = Image.open(path)
    width, height = image.size
    requested = (width, height)
    if min(width, height) >= 2 * DRAFT_MIN_SIDE:  # as loading.reduce_for_signature decides
        factor = DRAFT_MIN_SIDE / min(width, height)
        requested = (math.ceil(width * factor), math.ceil(height * factor))
    image.draft("L", requested)
    return image, (height, width)


def child_pids(pid):
    """The pids of ``pid``'s children, from /proc (Linux)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    if int(stat.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError, IndexError):
                continue
    return sorted(found)


def rss_bytes(pid):
    """Resident memory of a process, from /proc (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tree_rss(pids):
    """Resident bytes of these processes and all their descendants."""
    todo, seen, total = list(pids), set(), 0
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.add(pid)
            total += rss_bytes(pid)
            todo += child_pids(pid)
    return total
