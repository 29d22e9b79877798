"""What only the SQLite store promises: one file, WAL, indexed words, safe concurrent writers."""

import multiprocessing
import sqlite3

import numpy as np
import pytest

from image_match.drivers import open_database
from image_match.drivers.sqlite import APPLICATION_ID, SCHEMA_VERSION, SignatureSQLite
from image_match.errors import DatabaseError
from image_match.records import (pack_signatures, pack_windows, unpack_signatures,
                                 unpack_windows)

from conftest import photos


def synthetic(count, seed, prefix):
    rng = np.random.default_rng(seed)
    signatures = rng.integers(-2, 3, (count, 648)).astype(np.int8)
    return [{"path": f"{prefix}/{i}.jpg", "signature": s} for i, s in enumerate(signatures)]


def test_file_is_marked_versioned_and_in_wal_mode(tmp_path):
    path = tmp_path / "images.db"
    SignatureSQLite(path).add_image(str(photos()[0]))
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert connection.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert connection.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    config = connection.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()[0]
    assert '"variant": "1.x"' in config
    signature = connection.execute("SELECT signature FROM records").fetchone()[0]
    assert isinstance(signature, bytes) and len(signature) == 216  # packed, not JSON


def test_candidate_lookup_uses_the_word_index(tmp_path):
    store = SignatureSQLite(tmp_path / "images.db")
    store.add_signatures(synthetic(50, 0, "a"))
    connection = store._connect()
    keys = ", ".join(str(k) for k in range(63))
    plan = " ".join(row[-1] for row in connection.execute(
        f"EXPLAIN QUERY PLAN SELECT record, COUNT(*) AS shared FROM words WHERE word IN ({keys}) "
        f"GROUP BY record ORDER BY shared DESC LIMIT 10"))
    assert "SEARCH words USING PRIMARY KEY (word=?)" in plan, plan
    assert "SCAN words" not in plan


def test_two_processes_write_concurrently_without_losing_records(tmp_path):
    path = tmp_path / "images.db"
    SignatureSQLite(path)  # create it before the writers race
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=_write_many, args=(str(path), seed)) for seed in (1, 2)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(120)
        assert writer.exitcode == 0
    store = SignatureSQLite(path)
    assert store.count() == 2 * 300
    # Every record whole: its words are findable.
    for item in synthetic(300, 1, "writer-1")[::50] + synthetic(300, 2, "writer-2")[::50]:
        assert store.search_signature(item["signature"])[0]["path"] == item["path"]


def _write_many(path, seed):
    store = SignatureSQLite(path, timeout=60)
    items = synthetic(300, seed, f"writer-{seed}")
    for start in range(0, len(items), 10):  # many small transactions, interleaving
        results = store.add_signatures(items[start:start + 10])
        assert all(isinstance(r, str) for r in results), results


def test_reader_in_another_process_sees_committed_records(tmp_path):
    path = tmp_path / "images.db"
    store = SignatureSQLite(path)
    store.add_signatures(synthetic(20, 5, "r"))
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        assert pool.apply(_count, (store,)) == 20  # the forked copy opens its own connection


def _count(store):
    return store.count()


def test_not_an_sqlite_file_or_another_applications(tmp_path):
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not sqlite" * 100)
    with pytest.raises(DatabaseError) as error:
        open_database(f"sqlite:///{junk}")
    assert str(junk) in str(error.value)
    other = tmp_path / "other.db"
    connection = sqlite3.connect(other)
    connection.execute("PRAGMA application_id = 42")
    connection.execute("CREATE TABLE t (x)")
    connection.commit()
    with pytest.raises(DatabaseError, match="another application"):
        open_database(f"sqlite:///{other}")


def test_a_file_locked_by_another_process_is_a_transient_error_not_a_bad_file(tmp_path):
    # Bulk ingestion retries transient errors and records the others as the item's failure: a
    # worker that opened the store while another held its lock lost its batch for good.
    path = tmp_path / "images.db"
    SignatureSQLite(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=DELETE")  # so that an exclusive lock keeps readers out
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(DatabaseError) as error:
            SignatureSQLite(path, timeout=0.3)
        assert error.value.transient and "locked" in str(error.value)
        assert "not a usable" not in str(error.value) and str(path) in str(error.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert SignatureSQLite(path, timeout=0.3).count() == 0


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "images.db"
    SignatureSQLite(path)
    connection = sqlite3.connect(path)
    connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    connection.commit()
    with pytest.raises(DatabaseError, match="newer"):
        SignatureSQLite(path)


def test_missing_store_without_create(tmp_path):
    with pytest.raises(DatabaseError, match="no such store"):
        SignatureSQLite(tmp_path / "absent.db", create=False)


def test_memory_store_and_folder_creation(tmp_path):
    memory = SignatureSQLite(":memory:")
    memory.add_image(str(photos()[0]))
    assert memory.count() == 1
    nested = tmp_path / "a" / "b" / "images.db"
    open_database(f"sqlite:///{nested}").add_image(str(photos()[0]))
    assert nested.exists()


def test_a_failed_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    store = SignatureSQLite(tmp_path / "images.db")
    items = synthetic(5, 9, "atomic")

    original = store._remove_words

    def remove_then_fail(connection, ids):
        original(connection, ids)
        connection.execute("INSERT INTO records (id, path, signature, timestamp) "
                           "VALUES ('half', 'half.jpg', x'00', 0)")
        raise sqlite3.OperationalError("disk I/O error (simulated)")

    monkeypatch.setattr(store, "_remove_words", remove_then_fail)
    with pytest.raises(DatabaseError, match="simulated"):
        store.add_signatures(items)
    monkeypatch.undo()
    assert store.count() == 0  # the half-written row was rolled back
    assert all(isinstance(result, str) for result in store.add_signatures(items))
    assert store.count() == 5


def test_crop_windows_words_are_indexed_and_removed_with_the_record(tmp_path):
    from image_match.words import make_words

    store = SignatureSQLite(tmp_path / "images.db", crop_windows=True)
    record_id = store.add_image(str(photos()[0]))
    connection = store._connect()
    signatures = store.gis.record_signatures(str(photos()[0]))
    distinct = {(position, word) for row in make_words(signatures).tolist()
                for position, word in enumerate(row)}
    assert connection.execute("SELECT COUNT(*) FROM words").fetchone()[0] == len(distinct) > 63
    packed = connection.execute("SELECT windows FROM records").fetchone()[0]
    assert isinstance(packed, bytes) and len(packed) == 2 * 216
    store.add_image(str(photos()[0]), img=str(photos()[1]), id=record_id)  # the old words go
    assert connection.execute("SELECT COUNT(*) FROM words").fetchone()[0] == len(
        {(p, w) for row in make_words(store.gis.record_signatures(str(photos()[1]))).tolist()
         for p, w in enumerate(row)})
    assert store.delete(record_id)
    assert connection.execute("SELECT COUNT(*) FROM words").fetchone()[0] == 0


def test_a_file_made_before_crop_windows_still_works(tmp_path):
    path = tmp_path / "images.db"
    SignatureSQLite(path).close()
    connection = sqlite3.connect(path)
    connection.execute("ALTER TABLE records DROP COLUMN windows")  # as files made before
    connection.execute("UPDATE meta SET value = json_remove(value, '$.crop_windows')")
    connection.commit()
    connection.close()
    store = SignatureSQLite(path)
    assert store.crop_windows == ()
    record_id = store.add_image(str(photos()[0]))
    assert store.search_image(str(photos()[0]))[0]["id"] == record_id
    assert "windows" not in store.get(record_id)
    assert store.delete(record_id)


def test_signatures_and_windows_pack_three_values_a_byte_and_back():
    rng = np.random.default_rng(3)
    signatures = rng.integers(-2, 3, (5, 648)).astype(np.int8)
    packed = pack_signatures(signatures)
    assert packed.shape == (5, 216)
    np.testing.assert_array_equal(unpack_signatures(packed), signatures)
    assert len(pack_signatures(signatures[0])) == 216
    np.testing.assert_array_equal(unpack_signatures(pack_signatures(signatures[0])), signatures[0])
    windows = pack_windows(signatures[:2])
    assert isinstance(windows, bytes) and len(windows) == 2 * 216
    np.testing.assert_array_equal(unpack_windows(windows), signatures[:2])
    assert pack_windows(None) is None and unpack_windows(None) is None


def test_a_search_reads_whole_records_for_its_matches_alone(tmp_path, caplog):
    """Candidates are read for ranking only (id, signature, windows); the rest of a record is read
    when it matches: a candidate whose metadata is damaged is no longer read, nor reported, by a
    search that does not find it, and one that matches is left out and reported."""
    path = tmp_path / "s.db"
    store = open_database(f"sqlite:///{path}")
    query = str(photos()[0])
    store.add_images([{"path": query, "metadata": {"n": 0}}], workers=1)
    # Records a part of whose values are the query's: some share its index terms (candidates),
    # none is close enough to match.
    signature, rng = store.gis.generate_signature(query), np.random.default_rng(0)
    variants = []
    for index in range(60):
        changed = rng.random(signature.size) < 0.4
        variant = signature.copy()
        variant[changed] = (variant[changed] + rng.integers(1, 5, changed.sum()) + 2) % 5 - 2
        variants.append({"path": f"v/{index}", "signature": variant, "metadata": {"n": index}})
    store.add_signatures(variants)
    candidates = store._candidates
    seen = []
    store._candidates = lambda *args: seen.append(candidates(*args)) or seen[-1]
    assert [m["path"] for m in store.search_image(query)] == [query]
    other = next(record.path for rows in seen[0] for record in rows if record.path != query)
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE records SET metadata = '{not json' WHERE path = ?", (other,))
    store = open_database(f"sqlite:///{path}")
    with caplog.at_level("WARNING", logger="image_match.drivers.sqlite"):
        found = store.search_image(query)
    assert [(m["path"], m["metadata"]) for m in found] == [(query, {"n": 0})]
    assert "cannot be read" not in caplog.text
    with caplog.at_level("WARNING", logger="image_match.drivers.sqlite"):
        assert store.search_signature(variants[int(other[2:])]["signature"]) == []
    assert f"({other}) cannot be read: its metadata is damaged" in caplog.text


def test_a_match_replaced_while_it_is_searched_is_left_out(tmp_path):
    """The distance of a match is to the signature its candidate had: a record replaced by
    another image between the two reads of a search is not reported with the new image's path."""
    store = open_database(f"sqlite:///{tmp_path / 's.db'}")
    chosen = [str(p) for p in photos()[:3]]
    store.add_images([{"path": chosen[0], "id": "x"}, chosen[1]], workers=1)
    other = store.gis.generate_signature(chosen[2])
    candidates = store._candidates

    def then_replaced(*args):
        found = candidates(*args)
        store.add_signatures([{"id": "x", "path": chosen[2], "signature": other}])
        return found

    store._candidates = then_replaced
    assert store.search_image(chosen[0]) == []
    store._candidates = candidates
    assert [m["path"] for m in store.search_image(chosen[2])] == [chosen[2]]
