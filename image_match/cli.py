"""The ``image-match`` command line.

Every command prints for people by default and one JSON object per line with ``--json``. Errors
print one line to stderr: a user mistake (bad option, missing file argument) exits 2, a failure
exits 1, and no traceback is shown unless ``-v`` is given.
"""

import json
import sys

import click
import numpy as np

from . import __version__
from .errors import ImageMatchError, InvalidParameterError
from .goldberg import (DIHEDRAL_NAMES, VARIANTS, ImageSignature, is_featureless, normalized_distance,
                       signature_variants)
from .words import make_words

DEFAULT_CUTOFF = 0.45

EXIT_FAILURE = 1
EXIT_USAGE = 2


class Context:
    """What every command shares: verbosity and output mode."""

    def __init__(self, verbose=0, quiet=False):
        self.verbose = verbose
        self.quiet = quiet

    def info(self, message):
        if not self.quiet:
            click.echo(message, err=True)


class Group(click.Group):
    """A click group that turns our errors into one line and an exit status."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except InvalidParameterError as error:
            _fail(ctx, error, EXIT_USAGE)
        except ImageMatchError as error:
            _fail(ctx, error, EXIT_FAILURE)


def _fail(ctx, error, status):
    state = ctx.find_object(Context)
    if state is not None and state.verbose:
        import traceback

        traceback.print_exc()
    click.echo(f"error: {error}", err=True)
    ctx.exit(status)


def json_line(value):
    click.echo(json.dumps(value, separators=(", ", ": ")))


def signature_options(function):
    """Options that choose how images are signed, shared by the commands that sign."""
    function = click.option("--variant", type=click.Choice(VARIANTS), default="1.x", show_default=True,
                            help="Signature variant: image-match 1.x's, or the paper's.")(function)
    function = click.option("--exact", is_flag=True,
                            help="Decode JPEGs at full scale (slower; 1.x-identical signatures).")(function)
    return function


def make_generator(variant, exact):
    return ImageSignature(variant=variant, draft=not exact)


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="image-match")
@click.option("-v", "--verbose", count=True, help="Say more; show tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Say only what was asked for.")
@click.pass_context
def main(ctx, verbose, quiet):
    """Find the copies of a picture: resized, recompressed, cropped, watermarked, flipped."""
    ctx.obj = Context(verbose, quiet)


@main.command()
@click.argument("images", nargs=-1, required=True)
@click.option("--words", "show_words", is_flag=True, help="Print the 63 integer words too.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per image.")
@signature_options
@click.pass_obj
def signature(state, images, show_words, as_json, variant, exact):
    """Print the signature of each IMAGE (a path or an http(s) URL).

    Exits 1 when any image could not be signed; the others are still printed.
    """
    generator = make_generator(variant, exact)
    failed = 0
    workers = 1 if len(images) < 32 else None  # a process pool costs more than a few images
    for image, result in zip(images, generator.generate_signatures(images, workers=workers)):
        if isinstance(result, ImageMatchError):
            failed += 1
            if as_json:
                json_line({"image": image, "error": str(result)})
            else:
                click.echo(f"error: {result}", err=True)
            continue
        record = {"image": image, "signature": result.tolist(),
                  "featureless": bool(is_featureless(result))}
        if show_words:
            record["words"] = make_words(result).tolist()
        if as_json:
            json_line(record)
        else:
            click.echo(f"{image}\t{' '.join(map(str, record['signature']))}")
            if show_words:
                click.echo(f"{image}\twords\t{' '.join(map(str, record['words']))}")
    if failed:
        sys.exit(EXIT_FAILURE)


@main.command()
@click.argument("first")
@click.argument("second")
@click.option("--cutoff", type=click.FloatRange(0, 1), default=DEFAULT_CUTOFF, show_default=True,
              help="Distances below it are the same picture.")
@click.option("--all-orientations", is_flag=True,
              help="Also compare with FIRST's 8 flips and rotations; keep the closest.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@signature_options
@click.pass_obj
def compare(state, first, second, cutoff, all_orientations, as_json, variant, exact):
    """Print the distance between two images and whether it is the same picture.

    The distance is 0 for identical signatures and 1 for unrelated or featureless images.
    """
    generator = make_generator(variant, exact)
    a = generator.generate_signature(first)
    b = generator.generate_signature(second)
    candidates = signature_variants(a) if all_orientations else a[None]
    distances = normalized_distance(candidates, b)
    best = int(np.argmin(distances))
    distance = float(distances[best])
    match = distance < cutoff
    if as_json:
        json_line({"first": first, "second": second, "distance": distance, "cutoff": cutoff,
                   "match": match, **({"orientation": DIHEDRAL_NAMES[best]} if all_orientations else {})})
    else:
        verdict = "same picture" if match else "different pictures"
        click.echo(f"{distance:.4f}\t{verdict} (cutoff {cutoff})")
