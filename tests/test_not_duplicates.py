"""Pairs marked "not duplicates" (the moderation page's decision, issue 14): remembered by every
store (SQLite, and real OpenSearch and Elasticsearch nodes) across handles, honoured by
``find_duplicates`` and by the CLI's ``dedupe`` in store mode, carried by export and import."""

import json

import pytest
from click.testing import CliRunner
from PIL import Image

from image_match.cli import main
from image_match.drivers import open_database
from image_match.errors import InvalidParameterError
from image_match.signature_database_base import MAX_NOT_DUPLICATES

from conftest import jpeg_bytes, photos, rgb
from test_store_behaviour import store_url  # noqa: F401  (the fixture: every store)


@pytest.fixture
def planted(tmp_path):
    """Two photos, each with a half-size copy beside it: two groups of two files."""
    files = []
    for number, photo in enumerate(photos()[:2]):
        image = rgb(photo)
        original, copy = tmp_path / f"{number}-original.jpg", tmp_path / f"{number}-copy.jpg"
        original.write_bytes(jpeg_bytes(image))
        copy.write_bytes(jpeg_bytes(image.resize((image.width // 2, image.height // 2),
                                                 Image.Resampling.LANCZOS), quality=80))
        files.append((str(original), str(copy)))
    return files


def grouped_paths(db):
    return {frozenset(member["path"] for member in group) for group in db.find_duplicates()}


def test_marked_pairs_are_never_linked_again(store_url, planted):
    db = open_database(store_url)
    try:
        ids = {path: db.add_image(path, refresh_after=True) for pair in planted for path in pair}
        assert grouped_paths(db) == {frozenset(pair) for pair in planted}
        assert db.not_duplicates() == []

        assert db.mark_not_duplicates([ids[path] for path in planted[0]]) == 1
        assert grouped_paths(db) == {frozenset(planted[1])}
        # Another handle (another process, a restart) reads the same decisions.
        again = open_database(store_url)
        assert grouped_paths(again) == {frozenset(planted[1])}
        (pair,) = again.not_duplicates()
        assert pair["ids"] == sorted(ids[path] for path in planted[0])
        assert pair["timestamp"].endswith("+00:00")
        # The same pair again is remembered once.
        again.mark_not_duplicates([ids[path] for path in reversed(planted[0])])
        assert len(db.not_duplicates()) == 1
    finally:
        db.drop()
    # Dropping the store forgets its decisions with its records.
    assert open_database(store_url).not_duplicates() == []
    open_database(store_url).drop()


def test_a_group_marks_every_pair_of_its_members(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'images.db'}")
    assert db.mark_not_duplicates(["c", "a", "b", "a"], timestamp="2026-01-02T03:04:05Z") == 3
    assert db.not_duplicates() == [
        {"ids": [a, b], "timestamp": "2026-01-02T03:04:05+00:00"}
        for a, b in (("a", "b"), ("a", "c"), ("b", "c"))]


@pytest.mark.parametrize("ids, reason", [
    (["a"], "1 distinct ids"),
    (["a", "a"], "1 distinct ids"),
    ("ab", "must be a list of record ids"),
    (["a", 3], "must be a list of record ids"),
    (["a", ""], "must be a list of record ids"),
    (["a", "\ud800"], "not valid UTF-8 text"),
    ([str(n) for n in range(MAX_NOT_DUPLICATES + 1)], f"2 to {MAX_NOT_DUPLICATES}"),
])
def test_what_cannot_be_marked(tmp_path, ids, reason):
    db = open_database(f"sqlite:///{tmp_path / 'images.db'}")
    with pytest.raises(InvalidParameterError, match=reason):
        db.mark_not_duplicates(ids)
    assert db.not_duplicates() == []


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def test_dedupe_in_store_mode_honours_the_marks(planted, tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    assert run("add", "--db", url, *[path for pair in planted for path in pair]).exit_code == 0
    report = [json.loads(line) for line in run("dedupe", "--json", "--db", url).stdout.splitlines()]
    assert len(report) == 2
    open_database(url).mark_not_duplicates([m["id"] for m in report[0]["members"]])
    report_after = [json.loads(line)
                    for line in run("dedupe", "--json", "--db", url).stdout.splitlines()]
    assert [group["keep"] for group in report_after] == [report[1]["keep"]]


def test_export_and_import_carry_the_marks(planted, tmp_path):
    source, target = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    assert run("add", "--db", source, *[path for pair in planted for path in pair]).exit_code == 0
    db = open_database(source)
    (group, _) = db.find_duplicates()
    db.mark_not_duplicates([member["id"] for member in group])
    dump = tmp_path / "dump.jsonl"
    exported = run("export", "--db", source, "-o", dump)
    assert exported.exit_code == 0, exported.output
    assert "and 1 pairs marked not duplicates" in exported.stderr
    lines = [json.loads(line) for line in dump.read_text().splitlines()]
    assert lines[-1] == {"not_duplicates": sorted(m["id"] for m in group),
                         "timestamp": db.not_duplicates()[0]["timestamp"]}
    imported = run("import", "--db", target, "--json", dump)
    assert imported.exit_code == 0, imported.output
    summary = json.loads(imported.stdout)
    assert (summary["imported"], summary["not_duplicates"]) == (4, 1)
    copy = open_database(target)
    assert copy.not_duplicates() == db.not_duplicates()
    assert len(copy.find_duplicates()) == 1


def test_import_refuses_a_bad_pair_line_and_goes_on(tmp_path):
    target = f"sqlite:///{tmp_path / 'b.db'}"
    dump = tmp_path / "dump.jsonl"
    dump.write_text('{"not_duplicates": ["a"]}\n'
                    '{"not_duplicates": ["a", "b"], "timestamp": "yesterday"}\n'
                    '{"not_duplicates": ["a", "b"], "timestamp": "2026-01-02T03:04:05Z"}\n')
    result = run("import", "--db", target, dump)
    assert result.exit_code == 1
    assert "line 1: not_duplicates: must be a list of two record ids" in result.stderr
    assert "line 2: not duplicates: timestamp 'yesterday' is not ISO 8601" in result.stderr
    assert open_database(target).not_duplicates() == [
        {"ids": ["a", "b"], "timestamp": "2026-01-02T03:04:05+00:00"}]
