"""The commands on a store: add, search, get, delete, count, stats, export, import, init, drop.

Each takes ``--db URL`` (default: ``IMAGE_MATCH_DATABASE``, else the embedded SQLite file in the
user's data directory). Commands that only read or delete do not create a missing SQLite store.
"""

import json
import os
import sys
from datetime import datetime, timezone

import click

from .cli_common import (CUTOFF, EXIT_FAILURE, can_ask, database_url, db_option, expand_paths,
                         human_bytes, is_url, json_line, open_store, output_options, parse_filter,
                         parse_metadata, progress, query_options, usage_error, workers_option)
from .errors import ImageLoadError, ImageMatchError, InvalidParameterError
from .records import content_id, default_id
from .words import SCHEMES

BATCH_SIZE = 500


def store_path(path):
    """The path a record keeps: absolute for a local file (adding it again from another folder
    finds the same record), a URL as it is."""
    return path if is_url(path) else os.path.abspath(path)


def _existing_ids(db, ids):
    """Which of these ids the store holds already, in one round trip."""
    return set(db.get_many(ids))


def add_files(state, db, paths, metadata=None, id_from="path", workers=None, label="adding",
              query_options=None, queries=None):
    """Sign ``paths`` (stored as given) and add them to ``db`` in batches, with a progress bar.

    Returns ``[(path, id or None, status, error or None)]`` in order; status is ``added``,
    ``replaced`` (a record with that id existed) or ``failed``. With ``query_options``, the
    signatures a search of each image adds to its own are signed from the same decode and put
    into ``queries`` as ``{record id: signatures}`` (``db.sign``).
    """
    if workers is None and len(paths) < 32:
        workers = 1  # a process pool costs more than a few images
    outcomes, ready, seen = [], [], set()

    def flush():
        existing = _existing_ids(db, [item["id"] for _, item in ready]) if ready else set()
        stored = db.add_signatures([item for _, item in ready])
        for (index, item), result in zip(ready, stored):
            path = item["path"]
            if isinstance(result, ImageMatchError):
                outcomes[index] = (path, None, "failed", str(result))
            else:
                replaced = result in existing or result in seen
                seen.add(result)
                outcomes[index] = (path, result, "replaced" if replaced else "added", None)
                if queries is not None and index in signed_queries:
                    queries[result] = signed_queries.pop(index)
        ready.clear()

    fetched, signed_queries = {}, {}
    signer_inputs = (_content_input(path, index, fetched) if id_from == "content" and is_url(path)
                     else path for index, path in enumerate(paths))
    with progress(state, len(paths), label) as bar:
        # The signature, and the crop windows' in a store that keeps them.
        signed = db.sign_many(signer_inputs, workers=workers, query_options=query_options)
        for index, (path, fields) in enumerate(zip(paths, signed)):
            outcomes.append(None)
            bar.update(1)
            if index in fetched and isinstance(fetched[index], ImageMatchError):
                fields = fetched.pop(index)
            if isinstance(fields, ImageMatchError):
                outcomes[index] = (path, None, "failed", str(fields))
                continue
            try:
                record_id = _record_id(path, id_from, fetched.pop(index, None))
            except ImageMatchError as error:
                outcomes[index] = (path, None, "failed", str(error))
                continue
            if "query" in fields:
                signed_queries[index] = fields.pop("query")
            ready.append((index, {"path": path, **fields, "metadata": metadata,
                                  "id": record_id}))
            if len(ready) >= BATCH_SIZE:
                flush()
        flush()
    db.refresh()
    return outcomes


def _content_input(url, index, fetched):
    """A URL's bytes, fetched once for both its signature and its content id."""
    from .fetching import fetch

    try:
        data = fetch(url).content
    except ImageMatchError as error:
        fetched[index] = error
        return b""
    fetched[index] = data
    return data


def _record_id(path, id_from, data=None):
    if id_from == "path":
        return default_id(path)
    if data is None:
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except OSError as error:
            raise ImageLoadError(path, f"cannot read: {error.strerror or error}") from None
    return content_id(data)


# --- add ----------------------------------------------------------------------------------------

@click.command(short_help="Sign images and add them to the store.")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@click.option("-m", "--metadata", multiple=True, metavar="KEY=VALUE",
              help="Metadata for every record (repeatable). VALUE is read as JSON when it is a "
                   "number, true/false or a quoted string, else as text; dotted keys nest.")
@click.option("--id-from", type=click.Choice(["path", "content"]), default="path", show_default=True,
              help="A record's id: a hash of its absolute path (adding a file again replaces it) "
                   "or of its bytes (one record per distinct file, whatever its name).")
@workers_option()
@db_option
@output_options
@click.pass_obj
def add(state, paths, metadata, id_from, workers, db_url, as_json):
    """Sign images and add them to the store.

    PATH is an image file, a folder (its image files, recursively; hidden ones are skipped), a
    glob ('photos/**/*.jpg') or an http(s) URL. Local paths are stored absolute.

    Prints a summary of the records added, replaced (a record with the same id existed) and
    failed, with the reasons; with --json one object per image and the totals last. Exits 1 when
    any image failed (the others are stored).
    """
    metadata = parse_metadata(metadata)
    db = open_store(db_url, create=True)
    found, missing = expand_paths(paths)
    outcomes = [(argument, None, "failed", f"{argument}: {reason}") for argument, reason in missing]
    outcomes += add_files(state, db, [store_path(path) for path, _ in found], metadata, id_from,
                          workers)
    totals = {status: sum(1 for outcome in outcomes if outcome[2] == status)
              for status in ("added", "replaced", "failed")}
    if as_json:
        for path, record_id, status, error in outcomes:
            json_line({"path": path, "id": record_id, "status": status,
                       **({"error": error} if error else {})})
        json_line(totals)
    else:
        if state.verbose:
            for path, record_id, status, _ in outcomes:
                if status != "failed":
                    click.echo(f"{status}\t{record_id}\t{path}")
        for _, _, status, error in outcomes:
            if status == "failed":
                click.echo(f"failed: {error}", err=True)
        if not found and not missing:
            state.info(f"no image files in {', '.join(paths)}")
        click.echo(f"added {totals['added']}, replaced {totals['replaced']}, failed "
                   f"{totals['failed']} ({db.location})")
    if totals["failed"]:
        sys.exit(EXIT_FAILURE)


# --- search -------------------------------------------------------------------------------------

@click.command(short_help="Find the stored copies of images.")
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option("--top", type=click.IntRange(1), default=10, show_default=True,
              help="At most this many matches per image.")
@click.option("--cutoff", type=CUTOFF, default=None,
              help="Matches are closer than this (default: the store's; 0.40 in a store "
                   "image-match 2 made, 0.45 in one image-match 1.x made).")
@click.option("--all-orientations", is_flag=True,
              help="Also find flipped and rotated copies (by 90, 180 and 270 degrees).")
@click.option("--mirror/--no-mirror", default=None,
              help="Also find mirror images (default: the store's; on in a store image-match 2 "
                   "made).")
@click.option("--central-crops/--no-central-crops", default=None,
              help="Also find copies cropped around their centre to 58-90% of the area (default: "
                   "the store's; on in a store image-match 2 made).")
@click.option("--filter", "filters", multiple=True, metavar="KEY=VALUE",
              help="Only records whose metadata KEY has this value (repeatable; the same KEY twice "
                   "accepts either value). VALUE is read as --metadata reads it.")
@query_options
@workers_option(default=1)
@db_option
@output_options
@click.pass_obj
def search(state, images, top, cutoff, all_orientations, mirror, central_crops, filters, frames,
           small_rotations, insets, corner_crops, robust, workers, db_url, as_json):
    """The stored copies of each IMAGE (a path or an http(s) URL), closest first.

    Prints a table, or with --json one object per image: {"image", "matches": [{"id", "path",
    "dist", "score", "metadata"}]} or {"image", "error"}. Exits 1 when an image could not be read
    (the others are still searched); finding nothing is not an error. Mirror images and light
    central crops are found by default; crops to half the picture in a store made with 'init
    --crop-windows', whatever the options.
    """
    pre_filter = parse_filter(filters)
    db = open_store(db_url)
    results = db.search_images(images, all_orientations=all_orientations, pre_filter=pre_filter,
                               size=max(db.size, top), distance_cutoff=cutoff, frames=frames,
                               small_rotations=small_rotations, insets=insets,
                               corner_crops=corner_crops, robust=robust, mirror=mirror,
                               central_crops=central_crops, workers=workers)
    failed = 0
    for image, matches in zip(images, results):
        if isinstance(matches, ImageMatchError):
            failed += 1
            if as_json:
                json_line({"image": image, "error": str(matches)})
            else:
                click.echo(f"error: {matches}", err=True)
            continue
        matches = matches[:top]
        if as_json:
            json_line({"image": image, "matches": matches})
            continue
        count = len(matches)
        click.echo(f"{image}: " + (f"{count} match{'es' if count > 1 else ''}" if count else "no match"))
        for match in matches:
            extra = f"  {json.dumps(match['metadata'])}" if match["metadata"] else ""
            ident = f"  {match['id']}" if state.verbose else ""
            click.echo(f"  {match['dist']:.4f}  {match['path']}{ident}{extra}")
    if failed:
        sys.exit(EXIT_FAILURE)


# --- get, delete, count, stats ----------------------------------------------------------------------

@click.command(short_help="Print one record.")
@click.argument("record_id", metavar="ID")
@click.option("--signature", "show_signature", is_flag=True, help="Print the signature too.")
@db_option
@output_options
@click.pass_obj
def get(state, record_id, show_signature, db_url, as_json):
    """Print the record with this ID (--json: id, path, signature, metadata, timestamp).

    Exits 1 when there is none.
    """
    record = open_store(db_url).get(record_id)
    if as_json:
        json_line(record)
        return
    for key in ("id", "path", "timestamp"):
        click.echo(f"{key:<10} {record[key]}")
    click.echo(f"{'metadata':<10} {json.dumps(record['metadata'])}")
    if show_signature:
        click.echo(f"{'signature':<10} {' '.join(map(str, record['signature']))}")


@click.command(short_help="Delete records (by id or path).")
@click.option("--id", "ids", multiple=True, metavar="ID", help="Delete the record with this id (repeatable).")
@click.option("--path", "paths", multiple=True, metavar="PATH",
              help="Delete the records of this path or URL (repeatable); a relative path is also "
                   "looked up absolute, as add stores it.")
@db_option
@output_options
@click.pass_obj
def delete(state, ids, paths, db_url, as_json):
    """Delete records from the store (never files).

    Exits 1 when an id or path given has no record (the others are deleted).
    """
    if not ids and not paths:
        usage_error("delete needs --id ID or --path PATH")
    db = open_store(db_url)
    deleted, not_found = 0, []
    for record_id in ids:
        if db.delete(record_id):
            deleted += 1
        else:
            not_found.append(record_id)
    for path in paths:
        count = db.delete_path(path)
        if not count and not is_url(path) and os.path.abspath(path) != path:
            count = db.delete_path(os.path.abspath(path))
        deleted += count
        if not count:
            not_found.append(path)
    if as_json:
        json_line({"deleted": deleted, "not_found": not_found})
    else:
        for missing in not_found:
            click.echo(f"error: {db.location}: no record with id or path {missing!r}", err=True)
        click.echo(f"deleted {deleted} record{'s' if deleted != 1 else ''}")
    if not_found:
        sys.exit(EXIT_FAILURE)


@click.command(short_help="Print the number of records.")
@db_option
@output_options
def count(db_url, as_json):
    """Print how many records the store holds (--json: {"count": N})."""
    number = open_store(db_url).count()
    if as_json:
        json_line({"count": number})
    else:
        click.echo(number)


@click.command(short_help="Print the store's engine, records and size.")
@db_option
@output_options
def stats(db_url, as_json):
    """Print the store's engine, location, records and size on disk.

    --json: {"engine", "location", "records", "bytes"} (bytes null when the engine does not say;
    the OpenSearch/Elasticsearch store adds "layout").
    """
    description = open_store(db_url).describe()
    if as_json:
        json_line(description)
        return
    for key, value in description.items():
        if key == "bytes":
            key, value = "size", "-" if value is None else f"{human_bytes(value)} ({value} bytes)"
        click.echo(f"{key:<9} {value}")


# --- export, import -------------------------------------------------------------------------------

@click.command("export", short_help="Write every record as JSON lines.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default="-",
              show_default=True, help="The file to write ('-': standard output).")
@db_option
@output_options
@click.pass_obj
def export_records(state, output, db_url, as_json):
    """Write every record as JSON lines: {"id", "path", "signature", "metadata", "timestamp"},
    and "windows" (the crop windows' signatures) from a store that keeps them; then each pair
    marked "not duplicates" (on the moderation page) as {"not_duplicates": [ID, ID], "timestamp"}.

    For backups and for moving a store to another engine (image-match import). A file is written
    whole or not at all. A damaged record (stored data that cannot be read) is named on stderr and
    left out, and the command exits 1.
    """
    db = open_store(db_url)
    total = db.count()
    written, damaged = 0, 0
    to_file = output != "-"
    target = output + ".partial" if to_file else None
    stream = open(target, "w", encoding="utf-8") if to_file else sys.stdout
    try:
        with progress(state, total, "exporting") as bar:
            for record in db.iter_records():
                bar.update(1)
                if isinstance(record, ImageMatchError):  # damaged: named, and the rest goes on
                    click.echo(f"failed: {record}", err=True)
                    damaged += 1
                    continue
                stream.write(json.dumps(record, separators=(",", ":")) + "\n")
                written += 1
        pairs = db.not_duplicates()
        for pair in pairs:
            stream.write(json.dumps({"not_duplicates": pair["ids"], "timestamp": pair["timestamp"]},
                                    separators=(",", ":")) + "\n")
        if to_file:
            stream.close()
            os.replace(target, output)
    finally:
        if to_file and not stream.closed:
            stream.close()
            os.remove(target)
    if to_file and as_json:
        json_line({"exported": written, "failed": damaged, "output": output,
                   "not_duplicates": len(pairs)})
    elif to_file:
        state.info(f"exported {written} records from {db.location} to {output}"
                   + (f" and {len(pairs)} pairs marked not duplicates" if pairs else "")
                   + (f", {damaged} damaged left out" if damaged else ""))
    if damaged:
        sys.exit(EXIT_FAILURE)


@click.command("import", short_help="Add records from JSON lines (export's).")
@click.argument("source", type=click.Path(dir_okay=False, allow_dash=True), default="-",
                metavar="[FILE]")
@click.option("--batch-size", type=click.IntRange(1), default=BATCH_SIZE, show_default=True,
              help="Records per request to the store.")
@db_option
@output_options
@click.pass_obj
def import_records(state, source, batch_size, db_url, as_json):
    """Add the records of a JSON lines FILE (standard input by default), as export writes them.

    Signatures are stored as they are (no image is read), so the target store must be built
    with the same signature variant as the source. The crop windows' signatures of an export from
    a store with crop windows are kept when the target has them too ('init --crop-windows'), and
    left out otherwise. The target indexes the records by its own candidate scheme (their terms
    are made again from the signatures), so an export moves a store to another scheme: 'init
    --candidates words' or 'bands' first. A record whose id exists replaces it. Bad lines are
    reported with their line numbers and the others imported; exits 1 if any failed. Pairs marked
    "not duplicates" ({"not_duplicates": [ID, ID], "timestamp"} lines) are remembered in the
    target as well.
    """
    stream = sys.stdin if source == "-" else open(source, encoding="utf-8")
    try:
        db = open_store(db_url, create=True)
    except BaseException:
        if stream is not sys.stdin:
            stream.close()
        raise
    size = None if source == "-" else os.fstat(stream.fileno()).st_size
    imported, failures, batch, pairs = 0, [], [], 0

    def flush():
        nonlocal imported
        for (line_number, _), result in zip(batch, db.add_signatures([item for _, item in batch])):
            if isinstance(result, ImageMatchError):
                failures.append((line_number, str(result)))
            else:
                imported += 1
        batch.clear()

    try:
        with progress(state, size, "importing") as bar:
            for line_number, line in enumerate(stream, 1):
                bar.update(len(line.encode("utf-8")))
                if not line.strip():
                    continue
                try:
                    item = _import_item(line)
                    if "not_duplicates" in item:
                        pairs += db.mark_not_duplicates(item["not_duplicates"], item["timestamp"])
                        continue
                    batch.append((line_number, item))
                except InvalidParameterError as error:
                    failures.append((line_number, str(error)))
                    continue
                if len(batch) >= batch_size:
                    flush()
            flush()
    finally:
        if stream is not sys.stdin:
            stream.close()
    db.refresh()
    name = "standard input" if source == "-" else source
    if as_json:
        json_line({"imported": imported, "failed": len(failures), "not_duplicates": pairs,
                   "errors": [{"line": n, "error": e} for n, e in failures]})
    else:
        for line_number, error in failures:
            click.echo(f"failed: {name}, line {line_number}: {error}", err=True)
        marked = f", {pairs} pairs marked not duplicates" if pairs else ""
        click.echo(f"imported {imported}, failed {len(failures)}{marked} ({db.location})")
    if failures:
        sys.exit(EXIT_FAILURE)


def _import_item(line):
    try:
        record = json.loads(line)
    except ValueError as error:
        raise InvalidParameterError(f"not JSON ({error})") from None
    if isinstance(record, dict) and "not_duplicates" in record:
        ids = record["not_duplicates"]
        if (not isinstance(ids, list) or len(ids) != 2
                or not all(isinstance(i, str) and i for i in ids)):
            raise InvalidParameterError("not_duplicates: must be a list of two record ids")
        return {"not_duplicates": ids, "timestamp": record.get("timestamp")}
    if not isinstance(record, dict) or "path" not in record or "signature" not in record:
        raise InvalidParameterError("not a record (needs path and signature)")
    # The signature's and windows' codes are checked by add_signatures, which names the path.
    item = {key: record.get(key) for key in ("id", "path", "signature", "metadata", "windows")}
    timestamp = record.get("timestamp")
    if timestamp is not None:
        try:
            moment = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
            item["timestamp"] = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
        except ValueError:
            raise InvalidParameterError(
                f"{record['path']}: timestamp {timestamp!r} is not ISO 8601") from None
    return item


# --- init, drop ---------------------------------------------------------------------------------

@click.command(short_help="Create the store.")
@click.option("--variant", type=click.Choice(["1.x", "paper"]), default=None,
              help="The signature variant of a new store (default 1.x); an existing store keeps its own.")
@click.option("--crop-windows", is_flag=True,
              help="A new store also keeps the signatures of each image's central 50% and 75% "
                   "(about 3 times the index), so that copies cropped to their centre are found. "
                   "An existing store keeps its own setting (given here, it must have them).")
@click.option("--shards", type=click.IntRange(1), default=None,
              help="OpenSearch/Elasticsearch: primary shards of a new index (default 1).")
@click.option("--replicas", type=click.IntRange(0), default=None,
              help="OpenSearch/Elasticsearch: replicas of each shard of a new index (default: 1 "
                   "once the cluster has a second node, else 0).")
@click.option("--candidates", type=click.Choice(SCHEMES), default=None,
              help="How a new store finds candidates: 'bands' (the default) or 'words', "
                   "image-match 1.x's. An existing store keeps its own (given here, it must be "
                   "the same); export and import move records to a store of another.")
@db_option
@output_options
def init(variant, crop_windows, shards, replicas, candidates, db_url, as_json):
    """Create the store if it does not exist, and say what it holds."""
    options = {"variant": variant} if variant else {}
    if crop_windows:
        options["crop_windows"] = True
    for name, value in (("shards", shards), ("replicas", replicas)):
        if value is not None:
            if not str(database_url(db_url)).startswith(("http://", "https://")):
                raise InvalidParameterError(f"--{name} is for an OpenSearch or Elasticsearch "
                                            "store (--db http://...)")
            options[name] = value
    if candidates:
        options["candidates"] = candidates
    db = open_store(db_url, create=True, **options)
    description = db.describe()
    variant = db.gis.parameters()["variant"]
    windows = list(db.crop_windows)
    if as_json:
        json_line({**description, "variant": variant, "crop_windows": windows,
                   "candidates": db.scheme.config()})
    else:
        extra = (f", crop windows {'/'.join(f'{round(100 * a)}%' for a in windows)}"
                 if windows else "")
        click.echo(f"ready: {description['location']} ({description['engine']}, variant {variant}"
                   f"{extra}, candidates {db.scheme.name}, {description['records']} records)")


@click.command(short_help="Delete the store and all its records.")
@click.option("-y", "--yes", is_flag=True, help="Do not ask for confirmation.")
@db_option
@output_options
@click.pass_obj
def drop(state, yes, db_url, as_json):
    """Delete the store and every record in it (image files are not touched).

    Asks for confirmation on a terminal; without one, needs --yes (else exits 2).
    """
    url = database_url(db_url)
    if not yes and not can_ask():
        usage_error(f"drop deletes every record of {url}: confirm with --yes")
    db = open_store(db_url)
    records = db.count()
    if not yes and not click.confirm(f"Drop {db.location} and its {records} records?", default=False,
                                     err=True):
        click.echo("nothing dropped", err=True)
        sys.exit(EXIT_FAILURE)
    db.drop()
    if as_json:
        json_line({"dropped": db.location, "records": records})
    else:
        click.echo(f"dropped {db.location} ({records} records)")


COMMANDS = (add, search, get, delete, count, stats, export_records, import_records, init, drop)
