"""The embedded store: one SQLite file, no server.

Layout (schema version 1, also in ``PRAGMA user_version``):

- ``records``: one row per image: ``id`` (unique), ``path`` (indexed, for exact deletes),
  ``signature`` (packed, 216 bytes for 648 values), ``metadata`` (JSON text), ``timestamp`` and, in
  a store with crop windows, ``windows``: the signatures of the image's central windows, packed
  one after the other (NULL for a record added without them; the column is absent from files
  made before crop windows existed, which cannot have them).
- ``words``: the inverted index, one row ``(word, record)`` per index term of each record (and of
  its windows): the terms of the store's candidate scheme (``words.CandidateScheme.terms``,
  image-match 1.x's words tagged with their position, ``position * 3**k + word``, in a store
  without one recorded). It is a ``WITHOUT ROWID`` table keyed by ``(word, record)``: a query's
  terms are as many range scans of a B-tree, never a scan of all rows.
- ``meta``: the schema version and the store's parameters (see SignatureDatabaseBase).
- ``not_duplicates``: pairs of ids marked "not duplicates" (``a < b``, and when), made by the
  first such mark (a file made before it existed has none until then).

Several processes may read and write one file at a time: the file is in WAL mode (readers never
wait for the writer), every write is one ``BEGIN IMMEDIATE`` transaction, and a writer waits up to
``timeout`` seconds for another to finish instead of failing. A record and its terms are written in
the same transaction, so a record is in the store whole or not at all.
"""

import json
import logging
import os
import sqlite3
import threading
import time
import urllib.parse
from contextlib import contextmanager
from datetime import datetime, timezone

import numpy as np

from ..errors import DatabaseError, InvalidParameterError
from ..records import (Record, indexed_window_terms, pack_signatures, pack_windows, packed_size,
                       unpack_signatures, unpack_windows)
from ..signature_database_base import SignatureDatabaseBase, scored_candidates, with_score

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# "IMM2": marks the file as an image-match store (PRAGMA application_id).
APPLICATION_ID = 0x494D4D32

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    path TEXT NOT NULL,
    signature BLOB NOT NULL,
    metadata TEXT,
    timestamp REAL NOT NULL,
    windows BLOB
);
CREATE INDEX IF NOT EXISTS records_path ON records (path);
CREATE TABLE IF NOT EXISTS words (
    word INTEGER NOT NULL,
    record INTEGER NOT NULL,
    PRIMARY KEY (word, record)
) WITHOUT ROWID;
"""
_NOT_DUPLICATES = """
CREATE TABLE IF NOT EXISTS not_duplicates (
    a TEXT NOT NULL,
    b TEXT NOT NULL,
    timestamp REAL NOT NULL,
    PRIMARY KEY (a, b)
) WITHOUT ROWID
"""

# JSON types of a metadata value, as SQLite's json_type names them.
_JSON_TYPES = {bool: None, int: ("integer", "real"), float: ("integer", "real"), str: ("text",)}


class SignatureSQLite(SignatureDatabaseBase):
    """A store in one SQLite file.

    Parameters
    ----------
    path : str or os.PathLike
        The file; created (with its folder) if missing. ``":memory:"`` for a private store.
    timeout : float
        Seconds a writer waits for another process's write to finish.
    create : bool
        Create the file if it does not exist (otherwise DatabaseError).
    *args, **kwargs
        ``SignatureDatabaseBase``'s parameters (k, N, distance_cutoff, size, variant...).
    """

    def __init__(self, path, *args, timeout=30.0, create=True, **kwargs):
        self.path = os.fspath(path)
        self.timeout = float(timeout)
        super().__init__(*args, **kwargs)
        if self.path != ":memory:":
            exists = os.path.exists(self.path)
            if not exists and not create:
                raise DatabaseError(f"{self.location}: no such store")
            if not exists:
                folder = os.path.dirname(os.path.abspath(self.path))
                try:
                    os.makedirs(folder, exist_ok=True)
                except OSError as error:
                    raise DatabaseError(f"{self.location}: cannot create {folder}: {error}") from None
        self._lock = threading.RLock()
        self._connection = None
        self._pid = None
        self.read_only = False
        self._open(create=create)

    @property
    def location(self):
        return f"sqlite:///{self.path}"

    # --- connection -------------------------------------------------------------------------

    def _connect(self):
        """This process's connection (a forked child, e.g. a Celery worker, opens its own)."""
        if self._connection is None or self._pid != os.getpid():
            # Opening can meet the lock of another process's checkpoint or first WAL recovery
            # without SQLite's busy handler waiting for it: wait here, up to the timeout.
            deadline = time.monotonic() + self.timeout
            while True:
                try:
                    connection = self._new_connection()
                    break
                except sqlite3.DatabaseError as error:
                    if not _is_busy(error):
                        raise DatabaseError(
                            f"{self.location}: not a usable SQLite file ({error})") from None
                    if time.monotonic() >= deadline:
                        raise DatabaseError(f"{self.location}: {error}", transient=True) from None
                    time.sleep(0.05)
            self._connection, self._pid = connection, os.getpid()
        return self._connection

    def _new_connection(self):
        connection = self._open_file()
        try:
            application_id = connection.execute("PRAGMA application_id").fetchone()[0]
            # Only our own files, or an empty one to make ours: checked before anything is
            # written, so that another program's database is never touched.
            if application_id != APPLICATION_ID and (
                    application_id != 0 or connection.execute(
                        "SELECT COUNT(*) FROM sqlite_master").fetchone()[0]):
                raise DatabaseError(f"{self.location}: not an image-match store (an SQLite file "
                                    "of another application); choose another file")
            if not self.read_only:
                connection.execute("PRAGMA journal_mode=WAL")
                # WAL with synchronous=NORMAL cannot corrupt the file; a power cut may lose the
                # last transactions, which bulk ingestion redelivers anyway.
                connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute("PRAGMA cache_size=-65536")  # 64 MiB
        except BaseException:
            connection.close()
            raise
        return connection

    def _open_file(self):
        """A connection to the file; read-only when it or its folder cannot be written (a
        read-only mount, another user's store), which searching and reading need not do."""
        if self.path != ":memory:" and os.path.exists(self.path) and not (
                os.access(self.path, os.W_OK)
                and os.access(os.path.dirname(os.path.abspath(self.path)), os.W_OK)):
            self.read_only = True
        if not self.read_only:
            connection = self._sqlite_connect(self.path)
            try:
                connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return connection
            except sqlite3.OperationalError as error:
                connection.close()
                if not (_is_read_only(error) and os.path.exists(self.path)):
                    raise
            self.read_only = True
        # A WAL file needs its -shm beside it: without a writable folder to create it in,
        # SQLite can still read the file as immutable (nothing can write it there either).
        uri = "file:" + urllib.parse.quote(os.path.abspath(self.path))
        for options in ("mode=ro", "immutable=1"):
            connection = self._sqlite_connect(f"{uri}?{options}", uri=True)
            try:
                connection.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
                return connection
            except sqlite3.OperationalError as error:
                connection.close()
                if options == "immutable=1" or not _is_read_only(error):
                    raise

    def _sqlite_connect(self, target, uri=False):
        return sqlite3.connect(target, timeout=self.timeout, isolation_level=None,
                               check_same_thread=False, uri=uri)

    @contextmanager
    def _reading(self):
        with self._lock:
            try:
                yield self._connect()
            except sqlite3.Error as error:
                raise DatabaseError(f"{self.location}: {error}", transient=_is_busy(error)) from None

    @contextmanager
    def _writing(self):
        """One write transaction: all of it is stored, or none of it."""
        with self._lock:
            connection = self._connect()
            if self.read_only:
                raise DatabaseError(f"{self.location}: read-only (the file or its folder cannot "
                                    "be written)")
            try:
                connection.execute("BEGIN IMMEDIATE")
                try:
                    yield connection
                except BaseException:
                    connection.execute("ROLLBACK")
                    raise
                connection.execute("COMMIT")
            except sqlite3.Error as error:
                raise DatabaseError(f"{self.location}: {error}", transient=_is_busy(error)) from None

    def __getstate__(self):
        # Sent to another process (a pool, a worker): it opens its own connection there.
        state = dict(self.__dict__, _connection=None, _pid=None)
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.RLock()

    def close(self):
        with self._lock:
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None

    # --- the store's parameters -------------------------------------------------------------

    def _read_config(self):
        with self._reading() as connection:
            version = connection.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                return None
            if version > SCHEMA_VERSION:
                raise DatabaseError(f"{self.location}: schema version {version} is newer than this "
                                    f"image-match knows ({SCHEMA_VERSION}); upgrade image-match")
            row = connection.execute("SELECT value FROM meta WHERE key = 'config'").fetchone()
        if not row:
            return None
        try:
            config = json.loads(row[0])
        except (TypeError, ValueError):
            config = None
        if not isinstance(config, dict) or not {"k", "N", "signature"} <= config.keys():
            raise DatabaseError(f"{self.location}: the store's configuration (table meta) is "
                                "damaged: not the JSON image-match wrote")
        return config

    def _create(self, config):
        with self._writing() as connection:
            for statement in _SCHEMA.strip().split(";"):
                if statement.strip():
                    connection.execute(statement)
            connection.execute("INSERT OR REPLACE INTO meta VALUES ('config', ?)", (json.dumps(config),))
            connection.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def drop(self):
        """Delete every record and the store's tables (the file itself stays, empty). Only a
        file marked as an image-match store is opened, so only image-match's tables go."""
        with self._writing() as connection:
            if connection.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                raise DatabaseError(f"{self.location}: not an image-match store; nothing dropped")
            for table in ("words", "records", "not_duplicates", "meta"):
                connection.execute(f"DROP TABLE IF EXISTS {table}")
            connection.execute("PRAGMA user_version = 0")

    # --- primitives -------------------------------------------------------------------------

    def _insert(self, records, refresh=False):
        outcomes = [None] * len(records)
        # One id twice in a batch: the last one wins, as it would one batch after another.
        records = list({record.id: record for record in records}.values())
        packed = pack_signatures(np.stack([record.signature for record in records]))
        rows = [(r.id, r.path, signature.tobytes(),
                 None if r.metadata is None else json.dumps(r.metadata), r.timestamp.timestamp())
                for r, signature in zip(records, packed)]
        columns, updates = "id, path, signature, metadata, timestamp", ""
        if self.crop_windows:
            rows = [row + (pack_windows(r.windows),) for row, r in zip(rows, records)]
            columns, updates = columns + ", windows", ", windows = excluded.windows"
        with self._writing() as connection:
            self._remove_words(connection, [r.id for r in records])
            connection.executemany(
                f"INSERT INTO records ({columns}) VALUES ({_marks(rows[0])}) "
                "ON CONFLICT (id) DO UPDATE SET path = excluded.path, signature = excluded.signature, "
                f"metadata = excluded.metadata, timestamp = excluded.timestamp{updates}", rows)
            rowid_of = {}
            for chunk in _chunks([r.id for r in records], 500):
                rowid_of.update((record_id, rowid) for rowid, record_id in connection.execute(
                    f"SELECT rowid, id FROM records WHERE id IN ({_marks(chunk)})", chunk))
            rowids = np.array([rowid_of[r.id] for r in records], dtype=np.int64)
            terms, owners = _indexed_terms([r.terms for r in records],
                                           [r.window_terms if r.windows is not None else None
                                            for r in records],
                                           [r.windows for r in records], rowids)
            _insert_terms(connection, terms, owners)
        return outcomes

    def _remove_words(self, connection, ids):
        """Delete the index rows of the records with these ids (their terms recomputed from their
        signatures: the index is keyed by term, so this is a lookup per term, not a scan)."""
        found = []
        columns = "rowid, signature" + (", windows" if self.crop_windows else ", NULL")
        for chunk in _chunks(ids, 500):
            found += connection.execute(
                f"SELECT {columns} FROM records WHERE id IN ({_marks(chunk)})", chunk).fetchall()
        if not found:
            return []
        damaged = [rowid for rowid, signature, packed in found
                   if not self._whole(signature) or not self._whole_windows(packed)]
        for rowid in damaged:
            # Its terms cannot be recomputed from what it holds: a scan of the index finds them.
            connection.execute("DELETE FROM words WHERE record = ?", (rowid,))
        rowids = [rowid for rowid, _, _ in found]
        found = [row for row in found if row[0] not in damaged]
        if not found:
            return rowids
        signatures = unpack_signatures([signature for _, signature, _ in found], self.gis.sig_length)
        windows = [unpack_windows(packed, self.gis.sig_length) for _, _, packed in found]
        terms, owners = _indexed_terms(
            self.scheme.terms(signatures),
            [None if w is None else self.scheme.terms(w) for w in windows], windows,
            np.array([rowid for rowid, _, _ in found], dtype=np.int64))
        pairs = set(zip(terms.ravel().tolist(), np.repeat(owners, terms.shape[1]).tolist()))
        connection.executemany("DELETE FROM words WHERE word = ? AND record = ?", pairs)
        return rowids

    def _candidates(self, terms, size, pre_filter):
        keys = np.asarray(terms)
        condition, parameters = _filter_sql(pre_filter)
        hits = []
        with self._reading() as connection:
            for row_keys in keys.tolist():
                if condition:
                    query = (f"SELECT w.record, COUNT(*) AS shared FROM words w "
                             f"JOIN records r ON r.rowid = w.record "
                             f"WHERE w.word IN ({_marks(row_keys)}) AND {condition} "
                             f"GROUP BY w.record ORDER BY shared DESC LIMIT ?")
                else:
                    query = (f"SELECT record, COUNT(*) AS shared FROM words "
                             f"WHERE word IN ({_marks(row_keys)}) "
                             f"GROUP BY record ORDER BY shared DESC LIMIT ?")
                hits.append(connection.execute(query, [*row_keys, *parameters, size]).fetchall())
            return self._ranked(connection, hits)

    def _ranked(self, connection, hits):
        """The candidate lists of ``hits`` (per query signature, ``[(rowid, shared terms)]``, most
        shared first) as records (``scored_candidates``), each read once per search, and only
        what ranking reads: id, signature, windows (``_whole_matches`` reads the rest of the
        matches). A record whose signature or windows are damaged cannot be compared: it is left
        out, and logged."""
        rows = []
        windows = "windows" if self.crop_windows else "NULL"
        for chunk in _chunks(list({rowid for found in hits for rowid, _ in found}), 500):
            rows += connection.execute(f"SELECT rowid, id, path, signature, {windows} FROM records "
                                       f"WHERE rowid IN ({_marks(chunk)})", chunk).fetchall()
        fetched, whole = {}, []
        for row in rows:
            problem = self._packing_problem(row[3], row[4])
            if problem is None:
                whole.append(row)
            else:
                log.warning("%s (left out of a search)", self._unreadable(row[1], row[2], problem))
        signatures = unpack_signatures([row[3] for row in whole], self.gis.sig_length) if whole else []
        for (rowid, record_id, path, _, packed), signature in zip(whole, signatures):
            fetched[rowid] = Record(id=record_id, path=path, signature=signature,
                                    windows=unpack_windows(packed, self.gis.sig_length))
        return scored_candidates([[(rowid, float(shared)) for rowid, shared in found]
                                  for found in hits], fetched)

    def _whole_matches(self, matches):
        """The matches' metadata and timestamps, read for them alone (a search's candidates are
        many, its matches few). A match whose metadata or timestamp is damaged is left out, and
        logged; one deleted or replaced by another image since its candidates were read is left
        out too (its distance was to what it was)."""
        ids = list({record.id for found in matches for record, _ in found})
        if not ids:
            return matches
        with self._reading() as connection:
            read = {record_id: record for _, record_id, record in self._fetch(connection, "id", ids)}
        whole = []
        for found in matches:
            kept = []
            for record, distance in found:
                stored = read.get(record.id)
                if isinstance(stored, DatabaseError):
                    log.warning("%s (left out of a search)", stored)
                elif stored is not None and np.array_equal(stored.signature, record.signature):
                    kept.append((with_score(stored, record.score), distance))
            whole.append(kept)
        return whole

    def _fetch(self, connection, column, keys):
        """``[(rowid, id, Record)]`` for the rows whose ``column`` is in ``keys``; a damaged row
        (a signature or windows of the wrong size, metadata that is not JSON) has a
        DatabaseError naming it in place of its Record."""
        rows = []
        windows = "windows" if self.crop_windows else "NULL"
        for chunk in _chunks(keys, 500):
            rows += connection.execute(
                f"SELECT rowid, id, path, signature, metadata, timestamp, {windows} FROM records "
                f"WHERE {column} IN ({_marks(chunk)})", chunk).fetchall()
        whole = [row for row in rows if self._whole(row[3])]
        signatures = dict(zip((row[0] for row in whole), unpack_signatures(
            [row[3] for row in whole], self.gis.sig_length))) if whole else {}
        return [(row[0], row[1], self._record_of(row, signatures.get(row[0]))) for row in rows]

    def _record_of(self, row, signature):
        rowid, record_id, path, packed_signature, metadata, timestamp, packed = row
        problem = self._packing_problem(packed_signature, packed)
        if problem is None:
            try:
                metadata = None if metadata is None else _strict_json(metadata)
                if metadata is not None and not isinstance(metadata, dict):
                    raise ValueError("not an object")
            except (TypeError, ValueError) as error:
                problem = f"its metadata is damaged (not a JSON object: {error})"
        if problem is None:
            try:
                return Record(id=record_id, path=path, signature=signature, metadata=metadata,
                              timestamp=datetime.fromtimestamp(timestamp, timezone.utc),
                              windows=unpack_windows(packed, self.gis.sig_length))
            except (TypeError, ValueError, OverflowError, OSError):
                problem = "its timestamp is damaged"
        return self._unreadable(record_id, path, problem)

    def _packing_problem(self, signature, windows):
        """Why a row's packed signature or windows cannot be read, or None."""
        if not self._whole(signature):
            return "its signature is damaged (not the packed size of this store's)"
        if not self._whole_windows(windows):
            return "its crop windows are damaged (not the packed size of this store's)"
        return None

    def _unreadable(self, record_id, path, problem):
        return DatabaseError(f"{self.location}: record {record_id!r} ({path}) cannot be read: "
                             f"{problem}")

    def _whole(self, packed):
        return isinstance(packed, bytes) and len(packed) == packed_size(self.gis.sig_length)

    def _whole_windows(self, packed):
        return packed is None or (isinstance(packed, bytes) and len(packed) and
                                  len(packed) % packed_size(self.gis.sig_length) == 0)

    def _get(self, ids):
        with self._reading() as connection:
            return {record_id: record
                    for _, record_id, record in self._fetch(connection, "id", list(ids))}

    def _delete(self, ids):
        with self._writing() as connection:
            rowids = self._remove_words(connection, list(ids))
            for chunk in _chunks(rowids, 500):
                connection.execute(f"DELETE FROM records WHERE rowid IN ({_marks(chunk)})", chunk)
        return len(rowids)

    def _ids_with_path(self, path):
        with self._reading() as connection:
            rows = connection.execute("SELECT id, timestamp FROM records WHERE path = ?",
                                      (path,)).fetchall()
        return [(record_id, datetime.fromtimestamp(stamp, timezone.utc)) for record_id, stamp in rows]

    def _scan(self, batch_size=1000):
        last = 0
        while True:
            with self._reading() as connection:
                rowids = [row[0] for row in connection.execute(
                    "SELECT rowid FROM records WHERE rowid > ? ORDER BY rowid LIMIT ?",
                    (last, batch_size))]
                if not rowids:
                    return
                batch = sorted(self._fetch(connection, "rowid", rowids), key=lambda row: row[0])
            last = rowids[-1]
            for _, _, record in batch:
                yield record

    def _page(self, after, limit):
        # The cursor is the last rowid: pages follow the primary key, whatever the store's size.
        try:
            last = 0 if after is None else int(after)
        except ValueError:
            last = -1
        if last < 0:
            raise InvalidParameterError(f"after={after!r}: not a cursor of {self.location}")
        with self._reading() as connection:
            rowids = [row[0] for row in connection.execute(
                "SELECT rowid FROM records WHERE rowid > ? ORDER BY rowid LIMIT ?",
                (last, limit + 1))]
            batch = sorted(self._fetch(connection, "rowid", rowids[:limit]),
                           key=lambda row: row[0])
        following = str(rowids[limit - 1]) if len(rowids) > limit else None
        return [record for _, _, record in batch], following

    def _paths(self, offset, limit):
        with self._reading() as connection:
            return [row[0] for row in connection.execute(
                "SELECT path FROM records ORDER BY rowid LIMIT ? OFFSET ?", (limit, offset))]

    def _add_distinct(self, pairs):
        with self._writing() as connection:
            connection.execute(_NOT_DUPLICATES)
            connection.executemany("INSERT OR REPLACE INTO not_duplicates VALUES (?, ?, ?)",
                                   [(a, b, moment.timestamp()) for a, b, moment in pairs])

    def _distinct(self):
        with self._reading() as connection:
            if not connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND "
                                      "name = 'not_duplicates'").fetchone():
                return []
            rows = connection.execute("SELECT a, b, timestamp FROM not_duplicates").fetchall()
        return [(a, b, datetime.fromtimestamp(stamp, timezone.utc)) for a, b, stamp in rows]

    def count(self):
        with self._reading() as connection:
            return connection.execute("SELECT COUNT(*) FROM records").fetchone()[0]

    def describe(self):
        size = None
        if self.path != ":memory:":
            size = sum(os.path.getsize(p) for p in (self.path, self.path + "-wal")
                       if os.path.exists(p))
        return {"engine": f"sqlite {sqlite3.sqlite_version}", "location": self.location,
                "records": self.count(), "bytes": size}


def _indexed_terms(terms, window_terms, windows, rowids):
    """``(terms, owners)``: the (M', T) terms to index for records (each record's own, then its
    windows', ``indexed_window_terms``) and the rowid of each row."""
    rows, owners = [np.asarray(terms)], [np.asarray(rowids)]
    for own_terms, window_signatures, rowid in zip(window_terms, windows, rowids):
        if own_terms is None or window_signatures is None:
            continue
        rows.append(indexed_window_terms(own_terms, window_signatures))
        owners.append(np.full(len(rows[-1]), rowid, dtype=np.int64))
    return np.concatenate(rows), np.concatenate(owners)


def _insert_terms(connection, keys, rowids):
    """Add the (word, record) rows of records: ``keys`` (M, T) terms, ``rowids`` (M,) the
    record of each row.

    In ascending key order, so that the B-tree takes them page by page, and through one
    statement that unpacks them from JSON inside SQLite: an order of magnitude fewer Python calls
    than one executemany row per term.
    """
    terms = keys.ravel()
    records = np.repeat(rowids, keys.shape[1])
    if terms.size and (terms.max() >= 1 << 32 or records.max() >= 1 << 31):
        pairs = sorted(zip(terms.tolist(), records.tolist()))  # beyond the packed form's range
        connection.executemany("INSERT OR IGNORE INTO words (word, record) VALUES (?, ?)", pairs)
        return
    packed = np.sort((terms << 31) | records)
    connection.execute(
        "INSERT OR IGNORE INTO words (word, record) "
        "SELECT value >> 31, value & 2147483647 FROM json_each(?)", (json.dumps(packed.tolist()),))


def _filter_sql(pre_filter):
    """A portable filter (records.normalize_filter) as an SQL condition on ``r.metadata``, with
    the same type-strict semantics as records.filter_matches."""
    if not pre_filter:
        return "", []
    clauses, parameters = [], []
    for key, allowed in pre_filter.items():
        path = "$" + "".join(f'."{part}"' for part in key.split("."))
        options = []
        for value in allowed:
            if isinstance(value, bool):
                options.append("json_type(r.metadata, ?) = ?")
                parameters += [path, "true" if value else "false"]
            else:
                types = _JSON_TYPES[type(value)]
                options.append(f"(json_type(r.metadata, ?) IN ({_marks(types)}) "
                               f"AND json_extract(r.metadata, ?) = ?)")
                parameters += [path, *types, path, value]
        clauses.append("(" + " OR ".join(options) + ")")
    return " AND ".join(clauses), parameters


def _strict_json(text):
    """JSON as SQLite's JSON functions read it: NaN and infinities are not JSON."""
    return json.loads(text, parse_constant=_not_json)


def _not_json(constant):
    raise ValueError(f"{constant} is not JSON")


def _is_read_only(error):
    message = str(error)
    return "readonly" in message or "unable to open database file" in message


def _is_busy(error):
    return isinstance(error, sqlite3.OperationalError) and "locked" in str(error)


def _marks(values):
    return ", ".join("?" * len(values))


def _chunks(values, size):
    values = list(values)
    for start in range(0, len(values), size):
        yield values[start:start + size]
