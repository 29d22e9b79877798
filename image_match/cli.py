"""The ``image-match`` command line.

Every command prints for people by default and one JSON object per line with ``--json``. Errors
print one line to stderr: a user mistake (bad option, bad store URL) exits 2, a failure (unreadable
image, unreachable engine) exits 1, and no traceback is shown unless ``-v`` is given.

The commands on a store (add, search, dedupe, ...) are in ``cli_store`` and ``cli_dedupe``, the
engine helper is here, the Celery commands (ingest, worker, job) in ``tasks.cli``; what they share
(errors, output options, ``--db``, progress bars) in ``cli_common``.
"""

import sys

import click
import numpy as np

from . import __version__, kernel
from .cli_common import (CUTOFF, EXIT_FAILURE, EXIT_USAGE, Context, Group,  # noqa: F401
                         json_line, output_options, print_file_names_as_they_are)
from .errors import ImageMatchError, InvalidParameterError
from .goldberg import (DIHEDRAL_NAMES, VARIANTS, ImageSignature, distance_matrix, is_featureless,
                       query_margins, query_part_names)
from .signature_database_base import DEFAULT_CUTOFF
from .words import make_words



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
@click.version_option(__version__, prog_name="image-match", message="%(prog)s, version %(version)s\n"
                      "signatures: " + kernel.describe().replace("%", "%%"))
@click.option("-v", "--verbose", count=True, help="Say more; show tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Say only what was asked for.")
@click.pass_context
def main(ctx, verbose, quiet):
    """Find the copies of a picture: resized, recompressed, cropped, watermarked, flipped.

    \b
    image-match dedupe ~/Pictures             groups of near-duplicates in a folder
    image-match add ~/Pictures                sign and store images (SQLite by default)
    image-match search photo.jpg              the stored copies of a picture
    image-match compare a.jpg b.jpg           the distance between two images
    image-match serve                         the REST service on http://127.0.0.1:8000

    Exit status: 0 done, 1 failed (an unreadable image, an unreachable store), 2 a usage mistake.
    """
    state = ctx.ensure_object(Context)
    state.verbose += verbose
    state.quiet = state.quiet or quiet
    print_file_names_as_they_are()


@main.command(short_help="Print the signatures of images.")
@click.argument("images", nargs=-1, required=True)
@click.option("--words", "show_words", is_flag=True, help="Print the 63 integer words too.")
@output_options
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


@main.command(short_help="Distance between two images, and a verdict.")
@click.argument("first")
@click.argument("second")
@click.option("--cutoff", type=CUTOFF, default=DEFAULT_CUTOFF, show_default=True,
              help="Distances below it are the same picture.")
@click.option("--all-orientations", is_flag=True,
              help="Also compare the images' 8 flips and turns by 90 degrees.")
@click.option("--mirror/--no-mirror", default=True, show_default=True,
              help="Also compare the mirror images, as a search does by default.")
@click.option("--central-crops/--no-central-crops", default=True, show_default=True,
              help="Also compare each image as a light central crop of the other (5-10% cut off "
                   "each side), as a search does by default.")
@output_options
@signature_options
@click.pass_obj
def compare(state, first, second, cutoff, all_orientations, mirror, central_crops, as_json,
            variant, exact):
    """Print the distance between two images and whether it is the same picture.

    The distance is 0 for identical signatures and 1 for unrelated or featureless images. It is
    the distance dedupe groups them at: the nearer of the distances a search of either image
    finds the other at (--json gives both, "searching": {"first", "second"}), each the smallest
    over the searched image's signature, mirror image and central crops against the other's
    signature, a match through a mirror image or a crop counting 0.07 more.
    """
    generator = make_generator(variant, exact)
    options = {"orientations": all_orientations, "mirror": mirror, "central_crops": central_crops}
    margins, names = query_margins(**options), query_part_names(**options)
    signed = [generator.query_signatures(image, **options) for image in (first, second)]
    # Both ways, as dedupe links a pair: each image's signatures against the other's own.
    distances = np.minimum(np.stack([distance_matrix(signed[1], signed[0][:1])[:, 0],
                                     distance_matrix(signed[0], signed[1][:1])[:, 0]]) + margins,
                           1.0)
    query, best = np.unravel_index(int(np.argmin(distances)), distances.shape)
    distance = float(distances[query, best])
    match = distance < cutoff
    via = names[best]
    if as_json:
        json_line({"first": first, "second": second, "distance": distance, "cutoff": cutoff,
                   "match": match, "via": f"{via} of {('second', 'first')[query]}" if best else via,
                   "searching": {"first": float(distances[1].min()),
                                 "second": float(distances[0].min())},
                   **({"orientation": via if via in DIHEDRAL_NAMES else "identity"}
                      if all_orientations else {})})
    else:
        verdict = "same picture" if match else "different pictures"
        how = f", via the {via} of {(second, first)[query]}" if best and match else ""
        click.echo(f"{distance:.4f}\t{verdict} (cutoff {cutoff}{how})")


# --- the commands on a store ----------------------------------------------------------------------

def _register_store_commands():
    from .cli_dedupe import dedupe
    from .cli_store import COMMANDS

    for command in COMMANDS + (dedupe,):
        main.add_command(command)


_register_store_commands()


# --- serve: the REST service (image_match.server) ------------------------------------------------

@main.command(short_help="Run the REST service (dsys/match's API and /v1).")
@click.option("--db", "db_url", metavar="URL", help="The store (default: $IMAGE_MATCH_DATABASE, "
              "else the embedded SQLite file).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; not loopback needs API keys or --no-auth.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True,
              help="Port (0: a free one).")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Worker processes.")
@click.option("--no-auth", is_flag=True,
              help="Serve without API keys (IMAGE_MATCH_API_KEYS) on any address.")
def serve(db_url, host, port, workers, no_auth):
    """Serve the store over HTTP until stopped (SIGTERM or Ctrl-C finish the requests in flight).

    dsys/match's API at the root (/add, /search, /compare, /delete, /count, /list, /ping) and
    the JSON API under /v1, described by /openapi.json. Prints the URL it serves on.
    Needs the [server] extra (pip install '.[server]' in image-match's folder).
    """
    from .server import serve as run

    run(db_url, host, port, workers, no_auth, echo=lambda line: click.echo(line))


# --- engine: a local OpenSearch / Elasticsearch node ----------------------------------------------

@main.group(cls=Group, short_help="Start, stop or check a local search engine.")
def engine():
    """Start, stop or check a local OpenSearch or Elasticsearch node (for --db http://...).

    Needs a JDK 17 and Maven: the first start builds the node from the Maven projects installed
    with image-match (downloads about 50 MB once), in the user's data directory.
    """


def _engine_dirs(kind, data_dir):
    from . import local_engine

    if data_dir:
        return [data_dir]
    return [local_engine.default_data_dir(k) for k in ([kind] if kind else local_engine.ENGINES)]


def _engine_state(running):
    state = {"running": True, "kind": running.kind, "version": running.version, "url": running.url,
             "pid": running.pid, "data_dir": str(running.data_dir), "log": str(running.log_path)}
    if _is_cluster(running):
        state["nodes"] = running.urls
    return state


def _is_cluster(running):
    from .local_engine import LocalCluster

    return isinstance(running, LocalCluster)


def _cluster_note(running):
    if not _is_cluster(running):
        return ""
    return f"; a cluster of {len(running.nodes)} nodes, {len(running.urls)} running: " + \
        " ".join(running.urls)


@engine.command("start")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="HTTP port on 127.0.0.1 (default: a free one).")
@click.option("--heap", default="512m", show_default=True, help="JVM heap (512m, 2g...).")
@click.option("--timeout", type=click.IntRange(1), default=180, show_default=True,
              help="Seconds to wait for the node to answer.")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="The node's folder (default: image-match/engines/KIND in the user's data directory).")
@click.option("--kind", type=click.Choice(["opensearch", "elasticsearch"]), default="opensearch",
              show_default=True, help="Which engine.")
@click.option("--nodes", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Nodes: more than one forms a cluster on loopback (each index then keeps a "
                   "replica of every shard on another node).")
@output_options
@click.pass_obj
def engine_start(state, port, heap, timeout, data_dir, kind, nodes, as_json):
    """Start a node (or a cluster of --nodes) in the background; it runs until `image-match
    engine stop`.

    Prints its URL (-q: the URL alone, for URL=$(image-match engine start -q)).
    """
    from . import local_engine

    if nodes > 1 and port is not None:
        raise InvalidParameterError("--port is for one node; a cluster's nodes take free ports")
    if local_engine.needs_build(kind):
        state.info(f"building the {kind} engine with Maven (once; about 50 MB to download)...")
    state.info(f"starting {kind}{f' ({nodes} nodes)' if nodes > 1 else ''}...")
    if nodes > 1:
        started = local_engine.start_cluster(kind, nodes=nodes, data_dir=data_dir, heap=heap,
                                             timeout=timeout)
    else:
        started = local_engine.start(kind, port=port, data_dir=data_dir, heap=heap, timeout=timeout)
    if as_json:
        json_line(_engine_state(started))
    elif state.quiet:
        click.echo(started.url)
    else:
        click.echo(f"{kind} {started.version} running at {started.url} (pid {started.pid}, "
                   f"data {started.data_dir})" + _cluster_note(started))
        state.info(f"use it: --db {started.url}/images, or export "
                   f"IMAGE_MATCH_DATABASE={started.url}/images")


@engine.command("stop")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="The node's folder (default: the user's nodes of --kind, or of both kinds).")
@click.option("--kind", type=click.Choice(["opensearch", "elasticsearch"]), default=None,
              help="Which engine (default: whichever is running).")
@output_options
def engine_stop(data_dir, kind, as_json):
    """Stop the node (no error if none is running)."""
    from . import local_engine

    stopped = [node for node in (local_engine.stop(folder) for folder in _engine_dirs(kind, data_dir))
               if node is not None]
    if as_json:
        json_line({"stopped": [dict(_engine_state(node), running=False) for node in stopped]})
    elif stopped:
        for node in stopped:
            if _is_cluster(node):
                click.echo(f"stopped the {node.kind} cluster of {len(node.nodes)} nodes in "
                           f"{node.data_dir}")
            else:
                click.echo(f"stopped {node.kind} at {node.url} (pid {node.pid})")
    else:
        click.echo("no engine was running")


@engine.command("status")
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="The node's folder (default: the user's nodes of --kind, or of both kinds).")
@click.option("--kind", type=click.Choice(["opensearch", "elasticsearch"]), default=None,
              help="Which engine (default: both).")
@output_options
@click.pass_obj
def engine_status(state, data_dir, kind, as_json):
    """Say whether a node is running, where, and its cluster health (-q: the URL of each running
    node alone; exit 1 when none runs)."""
    from . import local_engine

    running = [node for node in (local_engine.status(folder) for folder in _engine_dirs(kind, data_dir))
               if node is not None]
    if as_json:
        json_line({"running": bool(running),
                   "engines": [dict(_engine_state(node), health=node.health()) for node in running]})
    elif state.quiet:
        for node in running:
            click.echo(node.url)
        if not running:
            sys.exit(EXIT_FAILURE)
    elif running:
        for node in running:
            click.echo(f"{node.kind} {node.version} running at {node.url} (pid {node.pid}, "
                       f"health {node.health() or 'not answering'}, data {node.data_dir})"
                       + _cluster_note(node))
    else:
        click.echo("no engine running")


# --- the Celery commands (bulk ingestion), from their own module ---------------------------------

def _register_celery_commands():
    try:
        from .tasks.cli import ingest, job, worker
    except ModuleNotFoundError as error:
        if error.name in ("image_match.tasks", "image_match.tasks.cli"):
            return  # not part of this installation (yet)
        _register_unavailable(("ingest", "worker", "job"), error)
        return
    except ImportError as error:
        _register_unavailable(("ingest", "worker", "job"), error)
        return
    for command in (ingest, worker, job):
        main.add_command(command)


def _register_unavailable(names, error):
    """Commands that say why they cannot run, instead of breaking the whole command line."""
    from .errors import ImageMatchError
    from .extras import install_command

    for name in names:
        def unavailable(**_):
            raise ImageMatchError(f"the {' / '.join(names)} commands cannot load: {error} "
                                  f"({install_command('celery')})")

        main.add_command(click.Command(name, callback=unavailable, context_settings={
            "ignore_unknown_options": True, "allow_extra_args": True},
            help="Unavailable: its module could not be imported.", hidden=False))


_register_celery_commands()
