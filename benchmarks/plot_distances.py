"""Draw the distances of copies and of unrelated pairs around the cutoff, from accuracy.py's pairs.

    python benchmarks/accuracy.py --methods 1.x,default --no-costs --distances pairs.npz \
        --output /tmp/accuracy.txt
    python benchmarks/plot_distances.py pairs.npz [--method default] \
        [--output benchmarks/results/distances.png]

One panel for the whole corpus and one for its held-out share (``common.split_held_out``: the
photos no default was tuned on): the share of copies of a picture (every transformation of
``benchmarks/transforms.py``, against their original) and the share of pairs of different
pictures at each distance, on a log scale so that the few unrelated pairs near the cutoff show;
the cutoffs 0.40 (image-match 2's stores) and 0.45 (image-match 1.x's) as lines, with the share of
copies found and of unrelated pairs let through at each. Needs matplotlib (the [docs] extra).
"""

import argparse
import sys
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"
CUTOFFS = ((0.40, "0.40, image-match 2"), (0.45, "0.45, image-match 1.x"))
BINS = np.linspace(0.0, 1.0, 101)


def shares(values):
    """The share of ``values`` in each of ``BINS``."""
    counts, _ = np.histogram(np.clip(values, 0.0, 1.0), bins=BINS)
    return counts / max(values.size, 1)


def draw(axes, positives, negatives, title):
    centres = (BINS[:-1] + BINS[1:]) / 2
    width = BINS[1] - BINS[0]
    axes.bar(centres, shares(positives), width=width, alpha=0.6, color="tab:blue",
             label=f"a copy and its original ({positives.size:,}: every transformation)")
    axes.bar(centres, shares(negatives), width=width, alpha=0.6, color="tab:red",
             label=f"different pictures ({negatives.size:,} pairs)")
    axes.set_yscale("log")
    axes.set_ylim(0.5 / max(negatives.size, 1), 1.0)
    axes.set_xlim(0.0, 1.0)
    for cutoff, label in CUTOFFS:
        found = np.mean(positives < cutoff)
        through = int(np.sum(negatives < cutoff))
        axes.axvline(cutoff, color="black", linestyle="-" if cutoff == 0.40 else ":", linewidth=1,
                     label=f"cutoff {label}: {100 * found:.1f}% of the copies, "
                           f"{through} different pairs")
    axes.set_title(title, fontsize=10)
    axes.set_xlabel("normalized distance")
    axes.set_ylabel("share of pairs")
    axes.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=Path, help="the .npz accuracy.py --distances saved")
    parser.add_argument("--method", default="default",
                        help="which of its methods (default: image-match 2's default search)")
    parser.add_argument("--output", type=Path, default=RESULTS / "distances.png")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with np.load(args.pairs) as saved:
        methods = sorted({key.split("/")[0] for key in saved.files if "/" in key})
        if args.method not in methods:
            sys.exit(f"{args.pairs}: no method {args.method!r} (it has: {', '.join(methods)})")
        pairs = {key.split("/", 1)[1]: saved[key] for key in saved.files
                 if key.startswith(args.method + "/")}
        command = str(saved["command"])

    figure, panels = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    draw(panels[0], pairs["positives"], pairs["negatives"], f"{args.method}: the whole corpus")
    draw(panels[1], pairs["positives"][pairs["positives_held_out"]],
         pairs["negatives"][pairs["negatives_held_out"]],
         f"{args.method}: held-out share (not tuned on)")
    panels[1].set_ylabel("")
    figure.text(0.01, 0.01, command, fontsize=6, color="grey")
    figure.tight_layout(rect=(0, 0.03, 1, 1))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=80)
    print(f"saved {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
