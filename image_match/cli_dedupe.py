"""``image-match dedupe``: groups of near-duplicate images in folders or in a store, and what to do
with the copies (report them, move them aside, delete them).

Folders are signed into a private temporary store, so ``image-match dedupe ~/Pictures`` leaves the
user's store alone; ``--in-store`` (or an explicit ``--db``) adds them to the store and reports the
groups they belong to there; without folders the whole store is deduplicated.

In every group one member is kept (``--keep``) and ``dist`` is each member's distance to it. Nothing
is moved or deleted without a line of the report saying so.
"""

import csv
import os
import shutil
import sys
import tempfile
import warnings

import click
import numpy as np

from .cli_common import (CUTOFF, EXIT_FAILURE, can_ask, db_option, expand_paths, human_bytes,
                         is_url, json_line, open_store, output_options, query_options, usage_error,
                         workers_option)
from .cli_store import add_files, store_path
from .errors import ImageLoadError
from .records import record_path
from .signature_database_base import DEFAULT_CUTOFF

# The store's 0.40, not image-match 1.x's 0.45: a folder of N images is N*N/2 pairs, and at 0.45
# about 4 in 100,000 pairs of different photos are closer than the cutoff
# (benchmarks/results/accuracy.txt: FPR@0.45 4.2e-05, FPR@0.40 5.3e-07, 1.x signatures) -
# hundreds of false groups in 10,000 photos - while resized, recompressed, reformatted,
# watermarked and 90%-cropped copies are still found at 0.40.
KEEP_POLICIES = ("largest", "smallest", "oldest", "newest", "first")
CSV_COLUMNS = ("group", "action", "dist", "width", "height", "bytes", "path", "to", "error", "id")
_EXIF_ORIENTATION = 274


@click.command(short_help="Find near-duplicates; report, move or delete them.")
@click.argument("dirs", nargs=-1, metavar="[DIR...]")
@click.option("--keep", type=click.Choice(KEEP_POLICIES), default="largest", show_default=True,
              help="Which member of a group is kept: the most pixels (of equal pixels the "
                   "original-looking file: EXIF, then JPEG/HEIF over a lossless re-encode, then "
                   "the most bytes), the fewest (then bytes), the oldest or newest file "
                   "(modification time), or the first path in sort order.")
@click.option("--move", "move_to", type=click.Path(file_okay=False), metavar="DEST",
              help="Move the other members into DEST (created if needed; names never overwrite).")
@click.option("--delete", "delete_files", is_flag=True,
              help="Delete the other members (asks first; --yes to skip the question).")
@click.option("-y", "--yes", is_flag=True, help="Delete without asking (needed without a terminal).")
@click.option("--cutoff", type=CUTOFF, default=DEFAULT_CUTOFF, show_default=True,
              help="Images closer than this are the same picture (not 1.x's 0.45: a folder makes "
                   "many pairs).")
@click.option("--all-orientations/--no-orientations", default=True, show_default=True,
              help="Group mirrored copies and copies turned by 90, 180 or 270 degrees too (each "
                   "image is also searched in its 7 other orientations).")
@click.option("--crop-windows", is_flag=True,
              help="Also group central crops (down to half the picture) with their originals: "
                   "the temporary store keeps each image's central windows. With --db, the store "
                   "must have been made with them (init --crop-windows).")
@click.option("--central-crops/--no-central-crops", default=None,
              help="Group copies cropped around their centre to 58-90% of the area with their "
                   "originals (default: on with DIRs; a store keeps no images to sign them from).")
@query_options
@click.option("--format", "output_format", type=click.Choice(["table", "csv", "json"]),
              default="table", show_default=True, help="How groups are printed (--json: json).")
@click.option("--in-store", is_flag=True,
              help="Add the DIRs' images to the store (--db) and report their groups there, "
                   "instead of using a temporary store (implied by an explicit --db).")
@workers_option()
@db_option
@output_options
@click.pass_obj
def dedupe(state, dirs, keep, move_to, delete_files, yes, cutoff, all_orientations, crop_windows,
           central_crops, frames, small_rotations, insets, corner_crops, robust, output_format,
           in_store, workers, db_url, as_json):
    """Find groups of near-duplicate images, keep one of each, report (or move, or delete) the others.

    DIR is a folder (searched recursively; hidden files skipped), an image file or a glob. With
    DIRs the images are compared in a temporary store that is thrown away, unless --in-store or
    --db is given; with no DIR the store's own records are grouped, and moving or deleting a copy
    also deletes its record.

    The report has one group per block (a table), one row per member (--format csv), or one JSON
    object per line (--json): {"group", "keep", "members": [{"path", "id", "dist", "width",
    "height", "bytes", "format", "exif", "keep", "action", "to", "error", "metadata"}]}, "dist"
    being the distance to the kept member and "action" one of keep, duplicate (report only),
    moved, deleted, skipped, failed. Exits 1 when an image could not be read or a file could not
    be moved or deleted.

    Mirrored and turned copies are grouped by default (--no-orientations: not), and with DIRs
    light central crops (--no-central-crops: not). --central-crops, --frames, --small-rotations,
    --insets, --corner-crops and --robust sign parts or turned copies of each image too (from the
    same decode), so they need DIRs: a store keeps no images.
    """
    if move_to and delete_files:
        usage_error("dedupe takes --move DEST or --delete, not both")
    query = {"central_crops": bool(dirs) if central_crops is None else central_crops,
             "frames": frames, "small_rotations": small_rotations, "insets": insets,
             "corner_crops": corner_crops, "robust": robust}
    if any(query.values()) and not dirs:
        usage_error("--central-crops, --frames, --small-rotations, --insets, --corner-crops and "
                    "--robust need DIRs (a store keeps no images to sign them from)")
    store_options = {"crop_windows": True} if crop_windows else {}
    if delete_files and not yes and not can_ask():
        usage_error("dedupe --delete needs --yes when it cannot ask (no terminal)")
    action = "move" if move_to else "delete" if delete_files else "report"
    output_format = "json" if as_json else output_format
    state.as_json = state.as_json or output_format != "table"

    if not dirs:
        db = open_store(db_url, **store_options)
        damaged = []
        groups = _find_groups(db, cutoff, all_orientations, damaged=damaged)
        for error in damaged:
            click.echo(f"skipped: {error}", err=True)
        groups, problems = _report_and_act(db, groups, keep, all_orientations, action, move_to, yes,
                                           output_format, roots={}, store_mode=True)
        _summary(state, groups, db.count(), action, move_to)
        if problems or damaged:
            sys.exit(EXIT_FAILURE)
        return

    found, missing = expand_paths(dirs)
    if missing:
        argument, reason = missing[0]
        raise ImageLoadError(argument, reason)
    in_store = in_store or db_url is not None
    with tempfile.TemporaryDirectory(prefix="image-match-dedupe-") as folder:
        if in_store:
            db = open_store(db_url, create=True, **store_options)
            paths = [store_path(path) for path, _ in found]
            roots = {store_path(path): root and os.path.abspath(root) for path, root in found}
        else:
            from .drivers import NEW_STORE_DEFAULTS
            from .drivers.sqlite import SignatureSQLite

            db = SignatureSQLite(os.path.join(folder, "dedupe.db"),
                                 new_store_defaults=NEW_STORE_DEFAULTS, **store_options)
            paths = [path for path, _ in found]
            roots = dict(found)
        try:
            # Refused before any work, not after. The orientations are signed from the pixels
            # too, as a search of the image would sign them.
            options = db.query_options(all_orientations=all_orientations, mirror=False, **query)
            signed = {}
            wanted = all_orientations or any(query.values())
            outcomes = add_files(state, db, paths, workers=workers, label="signing",
                                 query_options=options if wanted else None, queries=signed)
            unreadable = [error for _, _, status, error in outcomes if status == "failed"]
            for error in unreadable:
                click.echo(f"skipped: {error}", err=True)
            margins = db.query_margins(options)[1:]
            queries = {record_id: (signatures, margins) for record_id, signatures in signed.items()}
            groups = _find_groups(db, cutoff, all_orientations, queries)
            # A file name that is not UTF-8 is stored written with \xNN: act on the file itself.
            real_paths = {record_path(path): path for path in paths}
            for member in (member for group in groups for member in group):
                member["path"] = real_paths.get(member["path"], member["path"])
            if in_store:
                added = {record_id for _, record_id, status, _ in outcomes if record_id}
                groups = [group for group in groups if any(m["id"] in added for m in group)]
            groups, problems = _report_and_act(db, groups, keep, all_orientations, action, move_to,
                                               yes, output_format, roots=roots, store_mode=in_store,
                                               show_ids=in_store, queries=queries)
            _summary(state, groups, len(paths) - len(unreadable), action, move_to)
        finally:
            if hasattr(db, "close") and not in_store:
                db.close()
    if problems or unreadable:
        sys.exit(EXIT_FAILURE)


# --- finding the groups -------------------------------------------------------------------------

def _find_groups(db, cutoff, all_orientations, queries=None, damaged=None):
    """Groups as lists of ``{"id", "path", "metadata", "signature", "timestamp"}``; ``damaged``
    receives the DatabaseError of each record that could not be read."""
    groups = db.find_duplicates(distance_cutoff=cutoff, all_orientations=all_orientations,
                                queries=queries, damaged=[] if damaged is None else damaged)
    records = db.get_many(member["id"] for group in groups for member in group)
    # A member deleted (or damaged) by another process since the search is left out.
    groups = [[_with_signature(records[m["id"]]) for m in group
               if isinstance(records.get(m["id"]), dict)] for group in groups]
    return [group for group in groups if len(group) > 1]


def _with_signature(record):
    record = dict(record, signature=np.asarray(record["signature"], dtype=np.int8))
    if "windows" in record:
        record["windows"] = np.asarray(record["windows"], dtype=np.int8)
    return record


def _file_facts(path):
    """What is known of a local image file from its header (no decode): ``width``, ``height``
    (EXIF rotation applied), ``bytes``, ``mtime``, ``format`` (Pillow's name) and ``exif`` (it
    carries EXIF data); None for what cannot be known (a URL, a missing file)."""
    facts = dict.fromkeys(("width", "height", "bytes", "mtime", "format", "exif"))
    if is_url(path):
        return facts
    try:
        status = os.stat(path)
    except OSError:
        return facts
    facts.update(bytes=status.st_size, mtime=status.st_mtime)
    try:
        from PIL import Image

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as image:
                exif = image.getexif()
                width, height = image.size
                if exif.get(_EXIF_ORIENTATION) in (5, 6, 7, 8):
                    width, height = height, width  # shown turned by 90 degrees
                facts.update(width=width, height=height, format=image.format, exif=len(exif) > 0)
    except Exception:  # noqa: BLE001 - Pillow raises many types for broken headers; size unknown
        pass
    return facts


# The formats cameras and phones write. Of two files with the same pixels, one in these formats and
# one in a lossless format (PNG, BMP, TIFF...), the lossless one is almost always a conversion of
# the other: converting a JPEG to PNG multiplies its bytes and adds no detail, so "the most bytes"
# alone would keep the conversion.
CAMERA_FORMATS = frozenset({"JPEG", "MPO", "HEIF", "AVIF"})


def _keep_key(policy):
    def pixels(m):
        return m["width"] * m["height"] if m["width"] else None

    def original_looking(m):
        """Ranks files of equal pixels (lower first): EXIF present, then a camera format, then
        the most bytes (of the same picture in one format, the less compressed)."""
        return (not m["exif"], m["format"] not in CAMERA_FORMATS, -(m["bytes"] or 0))

    def age(m):
        if m["mtime"] is not None:
            return m["mtime"]
        return _timestamp(m.get("timestamp"))

    if policy == "largest":
        return lambda m: (pixels(m) is None, -(pixels(m) or 0), original_looking(m), m["path"])
    if policy == "smallest":
        return lambda m: (pixels(m) is None, pixels(m) or 0, m["bytes"] or 0, m["path"])
    if policy == "oldest":
        return lambda m: (age(m) is None, age(m) or 0, m["path"])
    if policy == "newest":
        return lambda m: (age(m) is None, -(age(m) or 0), m["path"])
    return lambda m: m["path"]


def _timestamp(value):
    if not value:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value).timestamp()
    except (TypeError, ValueError):
        return None


def _arrange(db, group, policy, all_orientations, queries=None):
    """The group's members with file facts, the kept one first, the others by distance to it."""
    members = []
    for record in group:
        members.append(dict(record, **_file_facts(record["path"])))
    kept = min(members, key=_keep_key(policy))
    # As the store linked them: orientations, crop windows, frames and rotations taking part.
    distances = db.distances_to(kept, members, all_orientations, queries)
    for member, distance in zip(members, distances):
        member["dist"] = 0.0 if member is kept else float(distance)
        member["keep"] = member is kept
        member["action"] = "keep" if member is kept else "duplicate"
        member["to"] = member["error"] = None
    members.sort(key=lambda m: (not m["keep"], m["dist"], m["path"]))
    return members


def _report_and_act(db, groups, policy, all_orientations, action, move_to, yes, output_format,
                    roots, store_mode, show_ids=True, queries=None):
    """Arrange each group, confirm deletions, act, and print the report. Returns how many moves
    or deletions failed."""
    arranged = [_arrange(db, group, policy, all_orientations, queries) for group in groups]
    arranged.sort(key=lambda members: (-len(members), members[0]["path"]))
    if action == "delete" and not yes and arranged:
        doomed = [m for members in arranged for m in members[1:]]
        for member in doomed:
            click.echo(f"would delete {member['path']}", err=True)
        total = sum(m["bytes"] or 0 for m in doomed)
        if not click.confirm(f"Delete these {len(doomed)} files ({human_bytes(total)})?",
                             default=False, err=True):
            click.echo("nothing deleted", err=True)
            sys.exit(EXIT_FAILURE)
    writer = None
    if output_format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
    problems = 0
    for number, members in enumerate(arranged, 1):
        if action != "report":
            problems += _act(db, members, action, move_to, roots, store_mode)
        _print_group(number, members, output_format, writer, show_ids)
        sys.stdout.flush()
    return arranged, problems


def _act(db, members, action, move_to, roots, store_mode):
    kept = members[0]
    problems = 0
    if not is_url(kept["path"]) and not os.path.isfile(kept["path"]):
        for member in members[1:]:
            member["action"], member["error"] = "skipped", f"the kept file {kept['path']} is missing"
        return 0
    for member in members[1:]:
        path = member["path"]
        local = not is_url(path) and os.path.lexists(path)
        if local and not os.path.islink(path) and not is_url(kept["path"]) \
                and os.path.realpath(path) == os.path.realpath(kept["path"]):
            member["action"], member["error"] = "skipped", "the kept path links to this file"
            continue
        try:
            if action == "move":
                if not local:
                    member["action"], member["error"] = "skipped", "not a local file"
                    continue
                target = _destination(move_to, path, roots.get(path))
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.move(path, target)
                member["action"], member["to"] = "moved", target
            else:
                if local:
                    os.remove(path)
                elif not store_mode:
                    member["action"], member["error"] = "skipped", "not a local file"
                    continue
                member["action"] = "deleted"
        except OSError as error:
            member["action"], member["error"] = "failed", error.strerror or str(error)
            problems += 1
            continue
        if store_mode and member["id"]:
            db.delete(member["id"])
    return problems


def _destination(folder, path, root):
    """Where a moved file goes: its path under the folder argument it was found in, else its name;
    ``name-1.ext``, ``name-2.ext``... when that exists (nothing is overwritten)."""
    relative = os.path.relpath(path, root) if root else os.path.basename(path)
    if relative.startswith(os.pardir):
        relative = os.path.basename(path)
    target = os.path.join(folder, relative)
    stem, extension = os.path.splitext(target)
    number = 1
    while os.path.lexists(target):
        target = f"{stem}-{number}{extension}"
        number += 1
    return target


def _print_group(number, members, output_format, writer, show_ids):
    public = [{"path": m["path"], "id": m["id"] if show_ids else None, "dist": m["dist"],
               "width": m["width"], "height": m["height"], "bytes": m["bytes"],
               "format": m["format"], "exif": m["exif"], "keep": m["keep"],
               "action": m["action"], "to": m["to"], "error": m["error"],
               "metadata": m.get("metadata")} for m in members]
    if output_format == "json":
        json_line({"group": number, "keep": members[0]["path"], "members": public})
    elif output_format == "csv":
        for member in public:
            writer.writerow([number] + ["" if member[c] is None else member[c]
                                        for c in CSV_COLUMNS[1:]])
    else:
        click.echo(f"group {number}: {len(members)} images")
        for member in public:
            size = (f"{member['width']}x{member['height']}" if member["width"] else "-")
            kind = (member["format"] or "-") + (" EXIF" if member["exif"] else "")
            line = (f"  {member['action']:<9}  {member['dist']:.4f}  {size:>9}  {kind:<9}  "
                    f"{human_bytes(member['bytes']):>8}  {member['path']}")
            if member["to"]:
                line += f" -> {member['to']}"
            if member["error"]:
                line += f" ({member['error']})"
            click.echo(line)


def _summary(state, groups, images, action, move_to):
    if state.as_json or state.quiet:
        return
    copies = sum(len(group) - 1 for group in groups)
    message = (f"{len(groups)} group{'s' if len(groups) != 1 else ''} of near-duplicates among "
               f"{images} images: {copies} cop{'ies' if copies != 1 else 'y'} besides the kept ones")
    if action == "report" and copies:
        message += "; nothing moved or deleted (--move DEST or --delete to act)"
    elif copies:
        counts = {}
        for members in groups:
            for member in members[1:]:
                counts[member["action"]] = counts.get(member["action"], 0) + 1
        done = [f"{counts[name]} {name}" for name in ("moved", "deleted", "skipped", "failed")
                if counts.get(name)]
        message += "; " + ", ".join(done) + (f" (into {move_to})" if counts.get("moved") else "")
    click.echo(message, err=True)
