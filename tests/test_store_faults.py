"""Stores that are not ours, damaged, or out of reach: refused or reported, never written into,
never a traceback.

Another program's SQLite file is refused before anything is written, and never dropped; a damaged
record (metadata that is not JSON, a signature of the wrong size) is a DatabaseError naming it, and
bulk reads (iteration, export, dedupe) report it and go on; a store in a read-only place can still
be searched; store URLs that would silently name the wrong file are refused.
"""

import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys

import pytest
from click.testing import CliRunner

from image_match.cli import main
from image_match import drivers
from image_match.drivers import open_database
from image_match.errors import DatabaseError, InvalidParameterError
from image_match.records import default_id

from conftest import PHOTO, photos


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- another program's file ---------------------------------------------------------------------

@pytest.fixture
def foreign(tmp_path):
    """Another program's SQLite file, with a table named like ours."""
    path = tmp_path / "other.db"
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT)")
    connection.execute("INSERT INTO meta VALUES ('owner', 'someone else')")
    connection.commit()
    connection.close()
    return path


def test_another_programs_file_is_refused_before_anything_is_written(foreign):
    before = digest(foreign)
    for args in (["add", PHOTO], ["search", PHOTO], ["count"], ["init"], ["drop", "-y"]):
        result = run(*args, "--db", f"sqlite:///{foreign}")
        assert result.exit_code == 1, (args, result.output)
        assert result.stderr == (f"error: sqlite:///{foreign}: not an image-match store (an SQLite "
                                 "file of another application); choose another file\n"), args
    assert digest(foreign) == before  # not even switched to WAL
    assert sorted(os.listdir(foreign.parent)) == ["other.db"]
    with pytest.raises(DatabaseError, match="not an image-match store"):
        open_database(f"sqlite:///{foreign}")
    rows = sqlite3.connect(foreign).execute("SELECT * FROM meta").fetchall()
    assert rows == [("owner", "someone else")]


@pytest.mark.parametrize("made", ["empty file", "empty database"])
def test_an_empty_file_becomes_a_store(tmp_path, made):
    path = tmp_path / "new.db"
    if made == "empty file":
        path.touch()
    else:
        sqlite3.connect(path).execute("PRAGMA user_version = 0").close()
    open_database(f"sqlite:///{path}").add_image(str(PHOTO))
    assert open_database(f"sqlite:///{path}").count() == 1


def test_drop_drops_only_a_store_that_is_ours(tmp_path):
    path = tmp_path / "s.db"
    store = open_database(f"sqlite:///{path}")
    store.add_image(str(PHOTO))
    # Another program takes the file over (its mark replaces ours) while the store is open.
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA application_id = 7")
    with pytest.raises(DatabaseError, match="not an image-match store; nothing dropped"):
        store.drop()
    assert sqlite3.connect(path).execute("SELECT COUNT(*) FROM records").fetchone()[0] == 1


# --- damaged stores ------------------------------------------------------------------------------

@pytest.fixture
def damaged(tmp_path):
    """A store of 4 photos, 2 damaged behind its back: metadata that is not JSON, a short
    signature; and one holding NaN, which an older image-match let in."""
    path = tmp_path / "s.db"
    store = open_database(f"sqlite:///{path}")
    chosen = [str(p) for p in photos()[:5]]
    assert all(isinstance(r, str) for r in store.add_images(chosen, workers=1))
    ids = [default_id(p) for p in chosen]
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE records SET metadata = '{not json' WHERE id = ?", (ids[0],))
        connection.execute("UPDATE records SET signature = x'0102' WHERE id = ?", (ids[1],))
        connection.execute("""UPDATE records SET metadata = '{"x": NaN}' WHERE id = ?""", (ids[2],))
    return open_database(f"sqlite:///{path}"), ids, chosen


def test_a_damaged_record_is_a_database_error_naming_it(damaged):
    store, ids, paths = damaged
    for record_id, what in zip(ids, ("metadata", "signature", "metadata")):
        with pytest.raises(DatabaseError) as error:
            store.get(record_id)
        assert f"record {record_id!r} ({paths[ids.index(record_id)]}) cannot be read" in str(error.value)
        assert f"its {what} is damaged" in str(error.value)
    assert store.get(ids[3])["path"] == paths[3]
    many = store.get_many(ids)
    assert [isinstance(many[i], DatabaseError) for i in ids] == [True, True, True, False, False]


def test_bulk_reads_report_damaged_records_and_go_on(damaged):
    store, ids, paths = damaged
    records = list(store.iter_records())
    assert [r["id"] for r in records if isinstance(r, dict)] == ids[3:]
    errors = [r for r in records if isinstance(r, DatabaseError)]
    assert len(errors) == 3 and all("cannot be read" in str(e) for e in errors)
    found = []
    assert store.find_duplicates(damaged=found) == [] and len(found) == 3
    with pytest.warns(RuntimeWarning, match="cannot be read"):
        store.find_duplicates()
    # A search meets the damaged records as candidates: left out, the others found.
    assert [m["path"] for m in store.search_image(paths[3])] == [paths[3]]
    assert store.search_image(paths[1]) == []  # its own record is the damaged one


def test_a_damaged_record_can_be_deleted_or_replaced(damaged):
    store, ids, paths = damaged
    assert store.delete(ids[1])  # its words found without its signature
    words = store._connect().execute("SELECT COUNT(*) FROM words WHERE record NOT IN "
                                     "(SELECT rowid FROM records)").fetchone()[0]
    assert words == 0
    assert store.add_image(paths[0]) == ids[0]  # added again: whole again
    assert store.get(ids[0])["path"] == paths[0]


def test_export_and_dedupe_name_damaged_records_and_go_on(damaged, tmp_path):
    store, ids, paths = damaged
    db = f"sqlite:///{store.path}"
    out = tmp_path / "out.jsonl"
    result = run("export", "--db", db, "-o", out)
    assert result.exit_code == 1
    exported = [json.loads(line) for line in out.read_text().splitlines()]  # valid JSON: no NaN
    assert [r["id"] for r in exported] == ids[3:]
    assert result.stderr.count("cannot be read") == 3 and ids[0] in result.stderr
    result = run("dedupe", "--db", db, "--json")
    assert result.exit_code == 1 and result.stderr.count("skipped: ") == 3
    assert result.stdout == ""  # no groups among the readable ones


def test_a_damaged_configuration_is_a_database_error(tmp_path):
    path = tmp_path / "s.db"
    open_database(f"sqlite:///{path}").add_image(str(PHOTO))
    for value in ("{not json", '"a string"', '{"k": 16}'):
        with sqlite3.connect(path) as connection:
            connection.execute("UPDATE meta SET value = ? WHERE key = 'config'", (value,))
        with pytest.raises(DatabaseError, match=r"configuration \(table meta\) is damaged"):
            open_database(f"sqlite:///{path}")
        result = run("count", "--db", f"sqlite:///{path}")
        assert result.exit_code == 1 and "is damaged" in result.stderr


# --- a store in a read-only place ----------------------------------------------------------------

def read_only_mount_available():
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True) if shutil.which(
        "unshare") else None
    return probe is not None and probe.returncode == 0


@pytest.mark.skipif(not read_only_mount_available(), reason="needs unshare -rm (user namespaces)")
def test_a_store_on_a_read_only_mount_can_be_searched(tmp_path):
    """The folder is bind-mounted read-only in a private mount namespace (root ignores file
    permissions; a read-only mount it cannot ignore)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    store = open_database(f"sqlite:///{folder / 's.db'}")
    store.add_images([str(p) for p in photos()[:3]], workers=1)
    store.close()
    db = f"sqlite:///{folder / 's.db'}"
    script = (f"mount --bind {folder} {folder} && mount -o remount,ro,bind {folder} {folder} && "
              f"{sys.executable} -m image_match search {photos()[0]} --db {db} --json && "
              f"{sys.executable} -m image_match count --db {db}; "
              f"{sys.executable} -m image_match add {photos()[4]} --db {db}")
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True,
                            text=True, timeout=120)
    out = result.stdout.splitlines()
    assert json.loads(out[0])["matches"][0]["path"] == str(photos()[0]), result.stderr
    assert out[1] == "3"
    assert result.returncode == 1
    assert "read-only (the file or its folder cannot be written)" in result.stderr


def test_a_store_file_that_cannot_be_written_can_be_searched(tmp_path):
    """chattr +i: a file not even root may write."""
    path = tmp_path / "s.db"
    store = open_database(f"sqlite:///{path}")
    store.add_images([str(p) for p in photos()[:3]], workers=1)
    store.close()
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", path]).returncode:
        pytest.skip("chattr +i is not available here")
    try:
        reader = open_database(f"sqlite:///{path}", create=False)
        assert reader.read_only and reader.count() == 3
        assert reader.search_image(str(photos()[1]))[0]["path"] == str(photos()[1])
        with pytest.raises(DatabaseError, match="read-only"):
            reader.add_image(str(photos()[4]))
    finally:
        subprocess.run(["chattr", "-i", path])


# --- store URLs ------------------------------------------------------------------------------------

@pytest.mark.parametrize("url, message", [
    ("sqlite:images.db", "an SQLite URL starts with sqlite:// and an empty host"),
    ("sqlite:/srv/images.db", "an SQLite URL starts with sqlite:// and an empty host"),
    ("http://[::1/images", "not a valid URL (Invalid IPv6 URL)"),
    ("http://localhost:99999/images", "not a valid URL (Port out of range"),
    ("sqlite:///a%00b.db", "a file name cannot hold a NUL character"),
])
def test_store_urls_that_would_name_the_wrong_file_are_refused(url, message, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidParameterError, match=re.escape(message)):
        drivers.parse_database_url(url)
    result = run("add", PHOTO, "--db", url)
    assert result.exit_code == 2 and message in result.stderr
    assert os.listdir(tmp_path) == []  # no file made anywhere


@pytest.mark.parametrize("url, parsed", [
    ("sqlite:///images.db", ("sqlite", "images.db")),
    ("sqlite:////srv/images.db", ("sqlite", "/srv/images.db")),
    ("SQLite://localhost/x.db", ("sqlite", "x.db")),
    ("http://user:pw@[::1]:9200/prefix/images", ("search", "http://user:pw@[::1]:9200/prefix/images")),
])
def test_store_urls_that_are_understood(url, parsed):
    assert drivers.parse_database_url(url) == parsed


def test_open_database_makes_what_the_url_names(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    open_database("sqlite:///rel.db").add_image(str(PHOTO))
    assert (tmp_path / "rel.db").is_file()
