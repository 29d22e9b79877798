"""image-match's store commands through CliRunner: add, search, get, delete, count, stats, export,
import, init, drop; their JSON shapes; and one-line errors with the right exit status."""

import json
import os
import re
import shutil

import pytest
from click.testing import CliRunner
from PIL import Image

from image_match import cli_common
from image_match.cli import main
from image_match.drivers import open_database
from image_match.records import content_id, default_id

from conftest import PHOTO, central_crop, corner_crop, photos, rgb

CLOSED_PORT_URL = "http://127.0.0.1:9/images"  # the discard port: nothing listens


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


@pytest.fixture
def db(tmp_path, monkeypatch):
    """A store URL in tmp_path, also the default (so a test never touches the user's store)."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("IMAGE_MATCH_DATABASE", url)
    return url


@pytest.fixture
def folder(tmp_path):
    """Four photos, one in a subfolder, one hidden, and a text file that is not an image."""
    root = tmp_path / "pics"
    (root / "sub").mkdir(parents=True)
    (root / ".cache").mkdir()
    chosen = photos()[:4]
    shutil.copy(chosen[0], root / "a.jpg")
    shutil.copy(chosen[1], root / "b.jpg")
    shutil.copy(chosen[2], root / "sub" / "c.jpg")
    shutil.copy(chosen[3], root / ".cache" / "hidden.jpg")
    (root / "notes.txt").write_text("not an image")
    return root


def lines(result):
    return [json.loads(line) for line in result.stdout.splitlines()]


def only_line(result):
    """The one line a failed command prints."""
    assert result.stderr.count("\n") == 1, result.stderr
    return result.stderr.strip()


# --- add --------------------------------------------------------------------------------------

def test_add_a_folder_recursively_then_again(db, folder):
    first = run("add", folder)
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() == f"added 3, replaced 0, failed 0 ({db})"
    again = run("add", "--json", folder / "a.jpg", folder / "sub")
    assert again.exit_code == 0
    outcomes = lines(again)
    assert outcomes[-1] == {"added": 0, "replaced": 2, "failed": 0}
    assert [o["status"] for o in outcomes[:-1]] == ["replaced", "replaced"]
    # Paths are stored absolute, ids are the hash of that path.
    assert outcomes[0]["path"] == str(folder / "a.jpg")
    assert outcomes[0]["id"] == default_id(str(folder / "a.jpg"))
    assert open_database(db).count() == 3


def test_add_a_relative_path_stores_it_absolute(db, folder, monkeypatch):
    monkeypatch.chdir(folder)
    result = run("add", "--json", "a.jpg")
    assert lines(result)[0]["path"] == str(folder / "a.jpg")


def test_add_globs_and_failures_with_reasons(db, folder, tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    result = run("add", "--json", str(folder / "*.jpg"), tmp_path / "broken.jpg",
                 tmp_path / "missing.jpg", str(tmp_path / "nothing-*.png"))
    assert result.exit_code == 1
    outcomes = {o.get("path"): o for o in lines(result)[:-1]}
    assert lines(result)[-1] == {"added": 2, "replaced": 0, "failed": 3}
    assert outcomes[str(tmp_path / "missing.jpg")]["error"].endswith(": no such file")
    assert outcomes[str(tmp_path / "nothing-*.png")]["error"].endswith("no file matches this pattern")
    assert outcomes[str(tmp_path / "broken.jpg")]["status"] == "failed"
    assert "not an image" in outcomes[str(tmp_path / "broken.jpg")]["error"] or \
        "broken" in outcomes[str(tmp_path / "broken.jpg")]["error"]


def test_add_prints_failures_on_stderr_and_the_summary_on_stdout(db, folder, tmp_path):
    result = run("add", folder, tmp_path / "missing.jpg")
    assert result.exit_code == 1
    assert result.stdout.strip() == f"added 3, replaced 0, failed 1 ({db})"
    assert result.stderr.strip() == f"failed: {tmp_path / 'missing.jpg'}: no such file"


def test_a_missing_file_is_worded_alike_by_every_command(db, folder, tmp_path):
    missing = tmp_path / "missing.jpg"
    reasons = {}
    for command in (["add"], ["search"], ["signature"], ["dedupe"], ["compare", folder / "a.jpg"]):
        result = run(*command, missing)
        assert result.exit_code == 1, result.output
        reasons[command[0]] = result.stderr.strip().split(f"{missing}: ", 1)[1]
    assert set(reasons.values()) == {"no such file"}, reasons


def test_add_ids_from_content(db, folder):
    shutil.copy(folder / "a.jpg", folder / "a-copy.jpg")
    result = run("add", "--json", "--id-from", "content", folder / "a.jpg", folder / "a-copy.jpg")
    outcomes = lines(result)
    expected = content_id((folder / "a.jpg").read_bytes())
    assert outcomes[0]["id"] == outcomes[1]["id"] == expected
    assert [o["status"] for o in outcomes[:2]] == ["added", "replaced"]
    assert outcomes[-1] == {"added": 1, "replaced": 1, "failed": 0}
    assert open_database(db).count() == 1


def test_add_metadata_values_are_json_scalars(db, folder):
    run("add", folder / "a.jpg", "-m", "year=2020", "-m", "tag=holiday", "-m", "ok=true",
        "-m", 'code="2020"', "-m", "camera.make=Canon")
    record = open_database(db).get(default_id(str(folder / "a.jpg")))
    assert record["metadata"] == {"year": 2020, "tag": "holiday", "ok": True, "code": "2020",
                                  "camera": {"make": "Canon"}}


def test_add_uses_the_default_store_in_the_data_directory(tmp_path, monkeypatch, folder):
    monkeypatch.delenv("IMAGE_MATCH_DATABASE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    result = run("add", folder / "a.jpg")
    assert result.exit_code == 0
    assert (tmp_path / "data" / "image-match" / "images.db").is_file()
    assert run("count").stdout.strip() == "1"


def test_add_quiet_and_verbose(db, folder):
    verbose = run("add", "-v", folder / "a.jpg")
    assert verbose.stdout.splitlines()[0] == (
        f"added\t{default_id(str(folder / 'a.jpg'))}\t{folder / 'a.jpg'}")
    # No progress bar without a terminal: stderr stays empty.
    assert verbose.stderr == ""


def test_add_empty_folder(db, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run("add", tmp_path / "empty")
    assert result.exit_code == 0
    assert "no image files" in result.stderr
    assert run("add", "-q", tmp_path / "empty").stderr == ""


# --- search -------------------------------------------------------------------------------------

@pytest.fixture
def stored(db, folder):
    assert run("add", folder, "-m", "year=2020").exit_code == 0
    run("add", folder / "b.jpg", "-m", 'year="2020"')
    return folder


def test_search_table_and_json(stored, tmp_path):
    copy = tmp_path / "copy.jpg"
    with Image.open(stored / "a.jpg") as image:
        image.resize((image.width // 2, image.height // 2)).save(copy, quality=60)
    table = run("search", copy)
    assert table.exit_code == 0
    first, second = table.stdout.splitlines()
    assert first == f"{copy}: 1 match"
    assert second.split()[1] == str(stored / "a.jpg")
    result = lines(run("search", "--json", copy, stored / "b.jpg"))
    assert [r["image"] for r in result] == [str(copy), str(stored / "b.jpg")]
    match = result[0]["matches"][0]
    assert set(match) == {"id", "path", "dist", "score", "metadata"}
    assert match["path"] == str(stored / "a.jpg") and 0 < match["dist"] < 0.45
    assert match["metadata"] == {"year": 2020}


def test_search_no_match_top_and_cutoff(stored):
    other = photos()[10]
    assert run("search", other).stdout.strip() == f"{other}: no match"
    assert lines(run("search", "--json", other)) == [{"image": str(other), "matches": []}]
    everything = run("search", "--json", "--top", "1", "--cutoff", "1", stored / "a.jpg")
    assert len(lines(everything)[0]["matches"]) == 1
    assert run("search", "--top", "0", stored / "a.jpg").exit_code == 2


def test_search_filter_reads_json_scalars(stored):
    numeric = lines(run("search", "--json", "--filter", "year=2020", stored / "a.jpg"))[0]["matches"]
    assert [m["path"] for m in numeric] == [str(stored / "a.jpg")]
    text = lines(run("search", "--json", "--filter", 'year="2020"', stored / "b.jpg"))[0]["matches"]
    assert [m["path"] for m in text] == [str(stored / "b.jpg")]
    assert lines(run("search", "--json", "--filter", "year=2021", stored / "a.jpg"))[0]["matches"] == []
    either = run("search", "--json", "--filter", "year=2021", "--filter", "year=2020", stored / "a.jpg")
    assert len(lines(either)[0]["matches"]) == 1
    bad = run("search", "--filter", "year", stored / "a.jpg")
    assert bad.exit_code == 2 and only_line(bad) == "error: --filter 'year': expected KEY=VALUE"


def test_search_all_orientations_finds_a_turned_copy(stored, tmp_path):
    turned = tmp_path / "turned.png"
    with Image.open(stored / "a.jpg") as image:
        image.transpose(Image.Transpose.ROTATE_90).save(turned)
    assert lines(run("search", "--json", turned))[0]["matches"] == []
    found = lines(run("search", "--json", "--all-orientations", turned))[0]["matches"]
    assert [m["path"] for m in found] == [str(stored / "a.jpg")]


def test_search_bad_images_exit_1_after_the_others(stored, tmp_path):
    (tmp_path / "text.jpg").write_text("hello")
    result = run("search", "--json", stored / "a.jpg", tmp_path / "missing.jpg", tmp_path / "text.jpg")
    assert result.exit_code == 1
    out = lines(result)
    assert len(out[0]["matches"]) == 1
    assert out[1] == {"image": str(tmp_path / "missing.jpg"),
                      "error": f"{tmp_path / 'missing.jpg'}: no such file"}
    assert out[2]["error"].startswith(f"{tmp_path / 'text.jpg'}: ")
    table = run("search", tmp_path / "missing.jpg")
    assert table.exit_code == 1 and only_line(table) == f"error: {tmp_path / 'missing.jpg'}: no such file"


# --- get, delete, count, stats ----------------------------------------------------------------------

def test_get_count_stats(stored, db):
    record_id = default_id(str(stored / "a.jpg"))
    record = lines(run("get", "--json", record_id))[0]
    assert set(record) == {"id", "path", "signature", "metadata", "timestamp"}
    assert record["path"] == str(stored / "a.jpg") and len(record["signature"]) == 648
    human = run("get", record_id).stdout.splitlines()
    assert human[0].split() == ["id", record_id] and human[1].split() == ["path", str(stored / "a.jpg")]
    assert run("count").stdout == "3\n"
    assert lines(run("count", "--json")) == [{"count": 3}]
    stats = lines(run("stats", "--json"))[0]
    assert stats["engine"].startswith("sqlite") and stats["records"] == 3 and stats["bytes"] > 0
    assert stats["location"] == db
    assert "records   3" in run("stats").stdout


def test_get_missing_id_is_one_line_exit_1(stored, db):
    result = run("get", "nope")
    assert result.exit_code == 1
    assert only_line(result) == f"error: {db}: no record with id 'nope'"


def test_delete_by_id_and_path(stored, db, monkeypatch):
    record_id = default_id(str(stored / "a.jpg"))
    assert lines(run("delete", "--json", "--id", record_id)) == [{"deleted": 1, "not_found": []}]
    monkeypatch.chdir(stored)
    result = run("delete", "--path", "b.jpg")  # relative: looked up absolute too
    assert result.exit_code == 0 and result.stdout.strip() == "deleted 1 record"
    missing = run("delete", "--id", "nope", "--path", str(stored / "sub" / "c.jpg"))
    assert missing.exit_code == 1
    assert missing.stdout.strip() == "deleted 1 record"
    assert missing.stderr.strip() == f"error: {db}: no record with id or path 'nope'"
    assert run("count").stdout.strip() == "0"
    assert (stored / "a.jpg").is_file()  # records only, never files
    assert run("delete").exit_code == 2


def test_read_commands_do_not_create_a_store(tmp_path):
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    for command in (["count"], ["stats"], ["get", "x"], ["search", PHOTO], ["delete", "--id", "x"],
                    ["export"], ["dedupe"]):
        result = run(*command, "--db", url)
        assert result.exit_code == 1, command
        assert only_line(result) == f"error: {url}: no such store"
    assert not (tmp_path / "typo.db").exists()


# --- export, import -------------------------------------------------------------------------------

def test_export_import_round_trip_sqlite_to_sqlite(stored, db, tmp_path):
    dump = tmp_path / "dump.jsonl"
    result = run("export", "-o", dump)
    assert result.exit_code == 0 and result.stdout == ""
    assert result.stderr.strip() == f"exported 3 records from {db} to {dump}"
    exported = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(exported) == 3 and set(exported[0]) == {"id", "path", "signature", "metadata", "timestamp"}
    assert run("export").stdout == dump.read_text()  # standard output, nothing else on it

    target = f"sqlite:///{tmp_path / 'copy.db'}"
    imported = run("import", dump, "--db", target)
    assert imported.exit_code == 0, imported.output
    assert imported.stdout.strip() == f"imported 3, failed 0 ({target})"
    copy = {r["id"]: r for r in open_database(target).iter_records()}
    assert copy == {r["id"]: r for r in exported}
    # and the copy searches like the original
    assert lines(run("search", "--json", "--db", target, stored / "a.jpg"))[0]["matches"][0]["path"] == \
        str(stored / "a.jpg")


def test_import_from_stdin_reports_bad_lines(db, stored, tmp_path):
    good = run("export").stdout.splitlines()
    text = "\n".join([good[0], "{not json", '{"path": "x"}', good[1],
                      json.dumps(dict(json.loads(good[2]), signature=[7] * 648))]) + "\n"
    target = f"sqlite:///{tmp_path / 'copy.db'}"
    result = run("import", "--json", "--db", target, input=text)
    assert result.exit_code == 1
    summary = lines(result)[0]
    assert summary["imported"] == 2 and summary["failed"] == 3
    assert [e["line"] for e in summary["errors"]] == [2, 3, 5]
    assert "not JSON" in summary["errors"][0]["error"]


def test_import_a_missing_file_is_one_line_and_creates_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    result = run("import", "--db", url, tmp_path / "nope.jsonl")
    assert result.exit_code == 1
    assert only_line(result) == f"error: {tmp_path / 'nope.jsonl'}: No such file or directory"
    assert not (tmp_path / "new.db").exists()


def test_export_to_an_unwritable_place_is_one_line(stored, tmp_path):
    result = run("export", "-o", tmp_path / "no" / "such" / "dir" / "dump.jsonl")
    assert result.exit_code == 1
    assert only_line(result).startswith("error: ") and "No such file or directory" in result.stderr


# --- init, drop ---------------------------------------------------------------------------------

def test_init_and_drop(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'new.db'}"
    created = run("init", "--db", url, "--variant", "paper")
    assert created.exit_code == 0
    assert created.stdout.startswith(f"ready: {url} (sqlite")
    assert "variant paper, candidates bands, 0 records" in created.stdout
    assert lines(run("init", "--json", "--db", url))[0]["variant"] == "paper"  # kept
    conflict = run("init", "--db", url, "--variant", "1.x")
    assert conflict.exit_code == 2 and "variant='paper'" in only_line(conflict)
    for option in ("--shards", "--replicas"):
        no_shards = run("init", "--db", url, option, "2")
        assert no_shards.exit_code == 2 and only_line(no_shards) == (
            f"error: {option} is for an OpenSearch or Elasticsearch store (--db http://...)")

    refused = run("drop", "--db", url)  # no terminal, no --yes
    assert refused.exit_code == 2
    assert only_line(refused) == f"error: drop deletes every record of {url}: confirm with --yes"
    monkeypatch.setattr(cli_common, "can_ask", lambda: True)
    monkeypatch.setattr("image_match.cli_store.can_ask", lambda: True)
    declined = run("drop", "--db", url, input="n\n")
    assert declined.exit_code == 1 and "nothing dropped" in declined.stderr
    dropped = run("drop", "--db", url, input="y\n")
    assert dropped.exit_code == 0 and dropped.stdout.strip() == f"dropped {url} (0 records)"
    gone = run("drop", "--yes", "--json", "--db", url)
    assert gone.exit_code == 1 and only_line(gone) == f"error: {url}: no such store"
    assert run("add", "--db", url, PHOTO).exit_code == 0  # adding creates it again


def test_export_and_import_move_a_store_to_another_candidate_scheme(tmp_path):
    words, bands = (f"sqlite:///{tmp_path / name}" for name in ("words.db", "bands.db"))
    created = lines(run("init", "--json", "--candidates", "words", "--db", words))[0]
    assert created["candidates"] == {"scheme": "words", "k": 16, "N": 63}
    assert run("add", "--db", words, PHOTO).exit_code == 0
    dump = tmp_path / "dump.jsonl"
    assert run("export", "-o", dump, "--db", words).exit_code == 0
    assert run("init", "--candidates", "bands", "--db", bands).exit_code == 0
    assert run("import", dump, "--db", bands).exit_code == 0
    found = lines(run("search", "--json", "--db", bands, PHOTO))[0]["matches"]
    assert [m["path"] for m in found] == [str(PHOTO)]
    conflict = run("init", "--candidates", "words", "--db", bands)
    assert conflict.exit_code == 2 and "candidates=" in only_line(conflict)


# --- errors ---------------------------------------------------------------------------------------

STORE_COMMANDS = [["add", PHOTO], ["search", PHOTO], ["get", "x"], ["delete", "--id", "x"], ["count"],
                  ["stats"], ["export"], ["import", os.devnull], ["init"], ["drop", "--yes"],
                  ["dedupe"], ["dedupe", "--db", "{url}", PHOTO]]


@pytest.mark.parametrize("command", STORE_COMMANDS, ids=lambda c: " ".join(map(str, c[:2])))
@pytest.mark.parametrize("url, status, message", [
    ("mysql://host/db", 2, "error: mysql://host/db: unsupported store (expected sqlite:///file.db or "
                           "http(s)://host:port/index)"),
    ("sqlite://host/x.db", 2, "error: sqlite://host/x.db: an sqlite URL has no host: "
                              "sqlite:///relative.db or sqlite:////absolute/path.db"),
    (CLOSED_PORT_URL, 1, "error: http://127.0.0.1:9/images: cannot reach the engine"),
], ids=["bad scheme", "bad sqlite", "unreachable"])
def test_bad_store_urls(command, url, status, message, tmp_path):
    args = [str(a).replace("{url}", url) for a in command]
    if "--db" not in args:
        args += ["--db", url]
    result = run(*args)
    assert result.exit_code == status, result.output
    assert only_line(result).startswith(message)
    assert "Traceback" not in result.output


def test_a_web_server_that_is_not_an_engine_says_what_answered(http_server):
    address, url = f"http://127.0.0.1:{http_server.port}", http_server.url("/images")
    page = b"<!DOCTYPE html><html><head><title>Grafana</title></head><body>...</body></html>"
    http_server.serve_bytes("/", page, content_type="text/html; charset=utf-8")
    result = run("count", "--db", url)
    assert result.exit_code == 1, result.output
    assert re.fullmatch(f"error: {url}: not an Elasticsearch or OpenSearch engine: GET {address}/ "
                        r"answered HTTP 200 \(text/html, server BaseHTTP/[^)]+\): 'Grafana'",
                        only_line(result))

    http_server.serve_status("/", 404, b"Not Found: /", content_type="text/plain")
    missing = run("count", "--db", url)
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert re.search(r"answered HTTP 404 \(text/plain, server [^)]+\): 'Not Found: /'$",
                     only_line(missing))

    http_server.serve_bytes("/", b'{"status": "ok"}', content_type="application/json")
    other_json = run("count", "--db", url)
    assert other_json.exit_code == 1
    assert only_line(other_json).endswith(""": '{"status": "ok"}'""")


def test_a_server_that_does_not_speak_http_is_named(tmp_path):
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def greet():  # as an SSH server does: its banner first, whatever the client sends
        connection, _ = listener.accept()
        with connection:
            connection.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
            connection.recv(1024)

    threading.Thread(target=greet, daemon=True).start()
    address = f"http://127.0.0.1:{listener.getsockname()[1]}"
    url = f"{address}/images"
    try:
        result = run("count", "--db", url)
    finally:
        listener.close()
    assert result.exit_code == 1, result.output
    assert only_line(result).startswith(f"error: {url}: not an Elasticsearch or OpenSearch engine: "
                                        f"GET {address}/ was not answered in HTTP")


def test_the_environment_variable_names_the_store(monkeypatch):
    monkeypatch.setenv("IMAGE_MATCH_DATABASE", "mysql://nope")
    result = run("count")
    assert result.exit_code == 2 and only_line(result).startswith("error: mysql://nope: unsupported store")


def test_verbose_shows_the_traceback(db):
    result = run("-v", "get", "nope")
    assert result.exit_code == 1 and "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" in run("get", "-v", "nope").stderr  # after the command too


@pytest.mark.parametrize("args", [["add"], ["search"], ["get"], ["add", "--workers", "0", "x"],
                                  ["count", "--nope"], ["nope"], ["add", PHOTO, "-m", "x"],
                                  ["dedupe", "--move", "d", "--delete", "."],
                                  ["search", "--cutoff", "2", "x"]])
def test_usage_mistakes_are_one_line_exit_2(args, db):
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert only_line(result).startswith("error: ")


def test_help_names_the_default_store():
    result = run("add", "--help")
    assert "IMAGE_MATCH_DATABASE" in result.stdout and "images.db" in result.stdout
    for command in ("add", "search", "compare", "dedupe", "delete", "get", "count", "stats", "export",
                    "import", "init", "drop", "engine", "signature"):
        assert f"\n  {command} " in run("--help").stdout


# --- engine (without starting one) --------------------------------------------------------------

def test_engine_status_and_stop_when_none_runs(tmp_path):
    status = run("engine", "status", "--data-dir", tmp_path)
    assert status.exit_code == 0 and status.stdout.strip() == "no engine running"
    assert lines(run("engine", "status", "--json", "--data-dir", tmp_path)) == [
        {"running": False, "engines": []}]
    stop = run("engine", "stop", "--data-dir", tmp_path)
    assert stop.exit_code == 0 and stop.stdout.strip() == "no engine was running"
    bad = run("engine", "start", "--kind", "mongodb")
    assert bad.exit_code == 2 and only_line(bad).startswith("error: Invalid value for '--kind'")


def test_engine_start_without_launchers_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGE_MATCH_ENGINES_DIR", str(tmp_path / "nowhere"))
    result = run("engine", "start", "--data-dir", tmp_path / "node")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: engine launchers not found in")


def test_add_urls_with_path_and_content_ids(db, http_server, monkeypatch):
    monkeypatch.setenv("IMAGE_MATCH_FETCH_ALLOWLIST", "127.0.0.1")
    data = PHOTO.read_bytes()
    url = http_server.serve_bytes("/a.jpg", data, "image/jpeg")
    missing = http_server.serve_status("/gone.jpg", 404)
    by_path = lines(run("add", "--json", url))
    assert by_path[0] == {"path": url, "id": default_id(url), "status": "added"}
    by_content = run("add", "--json", "--id-from", "content", url, missing)
    assert by_content.exit_code == 1
    outcomes = lines(by_content)
    assert outcomes[0] == {"path": url, "id": content_id(data), "status": "added"}
    assert outcomes[1]["status"] == "failed" and outcomes[1]["error"].startswith(missing)
    assert http_server.hits("/a.jpg") == 2  # once per add: the bytes are fetched once for both
    found = lines(run("search", "--json", PHOTO))[0]["matches"]
    assert {m["id"] for m in found} == {default_id(url), content_id(data)}


def test_celery_commands_are_wired_when_their_module_is_there():
    pytest.importorskip("image_match.tasks.cli")
    assert {"ingest", "worker", "job"} <= set(main.commands)


# --- crop windows, frames and small rotations ------------------------------------------------------

def _hard_copies(folder):
    """A central half crop, a captioned and a turned copy of three photos, in ``folder``."""
    from test_store_behaviour import captioned

    chosen = [photos()[i] for i in (2, 4, 5)]
    folder.mkdir()
    central_crop(rgb(chosen[0]), 0.5).save(folder / "half.jpg", quality=92)
    captioned(rgb(chosen[1])).save(folder / "meme.jpg", quality=92)
    rgb(chosen[2]).rotate(12, resample=Image.Resampling.BICUBIC).save(folder / "turned.jpg",
                                                                       quality=92)
    return chosen


def test_init_with_crop_windows_then_search_robustly(db, tmp_path):
    chosen = _hard_copies(tmp_path / "copies")
    result = run("init", "--crop-windows", "--json")
    assert result.exit_code == 0, result.output
    assert lines(result)[0]["crop_windows"] == [0.5, 0.75]
    assert "crop windows 50%/75%" in run("init").stdout
    assert run("add", *chosen).exit_code == 0
    copies = [tmp_path / "copies" / name for name in ("half.jpg", "meme.jpg", "turned.jpg")]
    plain = lines(run("search", "--json", *copies))
    assert [bool(r["matches"]) for r in plain] == [True, False, False]
    assert plain[0]["matches"][0]["path"] == str(chosen[0])
    robust = lines(run("search", "--json", "--robust", *copies))
    assert [r["matches"][0]["path"] for r in robust] == [str(p) for p in chosen]
    assert lines(run("search", "--json", "--frames", copies[1]))[0]["matches"]
    assert lines(run("search", "--json", "--small-rotations", copies[2]))[0]["matches"]
    corner = tmp_path / "copies" / "corner.jpg"
    corner_crop(rgb(chosen[1]), 0.8, "bottom-right").save(corner, quality=92)
    assert not lines(run("search", "--json", corner))[0]["matches"]
    found = lines(run("search", "--json", "--corner-crops", corner))[0]["matches"]
    assert found and found[0]["path"] == str(chosen[1])


def test_corner_crops_need_a_store_with_crop_windows(db):
    assert run("add", PHOTO).exit_code == 0
    result = run("search", "--corner-crops", PHOTO)
    assert result.exit_code == 2 and "corner_crops needs a store made with crop" in only_line(result)


def test_crop_windows_are_chosen_at_creation(db):
    assert run("add", PHOTO).exit_code == 0
    result = run("init", "--crop-windows")
    assert result.exit_code == 2 and "without crop windows" in only_line(result)


def test_export_import_keeps_the_windows(db, tmp_path):
    assert run("init", "--crop-windows").exit_code == 0
    assert run("add", *photos()[:3]).exit_code == 0
    exported = tmp_path / "records.jsonl"
    assert run("export", "-o", exported).exit_code == 0
    records = [json.loads(line) for line in exported.read_text().splitlines()]
    assert all(len(r["windows"]) == 2 for r in records)
    target = f"sqlite:///{tmp_path / 'target.db'}"
    assert run("init", "--db", target, "--crop-windows").exit_code == 0
    assert run("import", "--db", target, exported).exit_code == 0
    imported = open_database(target)
    for record in records:
        assert imported.get(record["id"])["windows"] == record["windows"]
    plain = f"sqlite:///{tmp_path / 'plain.db'}"  # without crop windows: they are left out
    assert run("import", "--db", plain, exported).exit_code == 0
    assert "windows" not in open_database(plain).get(records[0]["id"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(dict(records[0], windows=[[7]])) + "\n")
    result = run("import", "--db", target, bad)
    assert result.exit_code == 1 and "windows must be" in result.stderr


def test_dedupe_with_crop_windows_and_robust(tmp_path):
    chosen = _hard_copies(tmp_path / "pics")
    for path in chosen:
        shutil.copy(path, tmp_path / "pics" / path.name)
    groups = lambda *options: sorted(sorted(os.path.basename(m["path"]) for m in g["members"])
                                     for g in lines(run("dedupe", tmp_path / "pics", "--json",
                                                        *options)))
    assert groups() == []
    assert groups("--crop-windows") == [sorted(["half.jpg", chosen[0].name])]
    assert groups("--crop-windows", "--robust") == sorted([
        sorted(["half.jpg", chosen[0].name]), sorted(["meme.jpg", chosen[1].name]),
        sorted(["turned.jpg", chosen[2].name])])
    assert groups("--frames") == [sorted(["meme.jpg", chosen[1].name])]
    for group in lines(run("dedupe", tmp_path / "pics", "--json", "--robust", "--crop-windows")):
        assert all(m["dist"] < 0.40 for m in group["members"])


def test_query_options_on_a_store_need_dirs(db):
    result = run("dedupe", "--robust")
    assert result.exit_code == 2 and "need DIRs" in only_line(result)
