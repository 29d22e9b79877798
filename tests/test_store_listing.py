"""Listing a store page by page, paths at an offset, exact-path lookups, and a search split into
its signing and its store halves: on SQLite and the real OpenSearch and Elasticsearch nodes.

What the service needs from the store API (``records_page``, ``paths``, ``ids_with_path``,
``query_signer``/``record_signer`` with ``search_queries``), each checked against the store's own
contents.
"""

import pickle
import uuid

import numpy as np
import pytest

from image_match.drivers import open_database
from image_match.errors import ImageLoadError, InvalidParameterError
from image_match.signature_database_base import MAX_PAGE

from conftest import PHOTO, photos
from test_elasticsearch_driver import _legacy_documents, _write_raw

STORES = [
    "sqlite",
    pytest.param("opensearch", marks=pytest.mark.engine),
    pytest.param("elasticsearch", marks=pytest.mark.engine),
]


@pytest.fixture(params=STORES)
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'images.db'}"
    base = request.getfixturevalue(f"{request.param}_url")
    return f"{base}/test-listing-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(store_url):
    db = open_database(store_url)
    yield db
    db.drop()


def _signatures(count, seed=0):
    """Distinct random signatures (codes -2..2), enough to fill a store without decoding."""
    return np.random.default_rng(seed).integers(-2, 3, (count, 648)).astype(np.int8)


def _fill(store, count):
    items = [{"path": f"img/{n:05d}.jpg", "signature": signature, "metadata": {"n": n}}
             for n, signature in enumerate(_signatures(count))]
    ids = store.add_signatures(items, refresh_after=True)
    assert all(isinstance(i, str) for i in ids), ids
    return dict(zip(ids, (item["path"] for item in items)))


def _all_pages(store, limit):
    pages, after = [], None
    while True:
        records, after = store.records_page(after, limit)
        pages.append(records)
        if after is None:
            return pages


def test_pages_list_every_record_once_in_a_stable_order(store):
    stored = _fill(store, 23)
    pages = _all_pages(store, 5)
    assert [len(page) for page in pages] == [5, 5, 5, 5, 3]
    listed = [record for page in pages for record in page]
    assert {r["id"]: r["path"] for r in listed} == stored
    assert len(listed) == len(stored)
    first = listed[0]
    assert first == store.get(first["id"])  # as get returns them, signature and all
    # The same pages again: the order is the store's own, not an accident of one call.
    assert [r["id"] for page in _all_pages(store, 5) for r in page] == [r["id"] for r in listed]
    # The last full page says there is no more: no empty page after it.
    assert [len(page) for page in _all_pages(store, 23)] == [23]


def test_a_page_after_a_deleted_record_goes_on(store):
    _fill(store, 6)
    page, after = store.records_page(None, 3)
    store.delete(page[-1]["id"])  # the record the cursor names is gone
    rest, following = store.records_page(after, 10)
    assert len(rest) == 3 and following is None
    assert not {r["id"] for r in rest} & {r["id"] for r in page}


def test_an_empty_store_has_one_empty_page(store):
    assert store.records_page() == ([], None)
    assert store.paths() == []


def test_page_limits_and_cursors_are_checked(store):
    for limit in (0, -1, MAX_PAGE + 1, 2.0, "5", True):
        with pytest.raises(InvalidParameterError, match="limit"):
            store.records_page(None, limit)
    for after in ("", 7):
        with pytest.raises(InvalidParameterError, match="after"):
            store.records_page(after, 5)


def test_a_foreign_cursor_is_refused_by_sqlite(tmp_path):
    db = open_database(f"sqlite:///{tmp_path / 'x.db'}")
    for cursor in ("abc", "-3"):
        with pytest.raises(InvalidParameterError, match=f"{cursor!r}: not a cursor"):
            db.records_page(cursor)


def test_paths_at_an_offset_follow_the_page_order(store):
    _fill(store, 12)
    order = [r["path"] for page in _all_pages(store, 4) for r in page]
    assert store.paths(0, 20) == order
    assert store.paths(3, 4) == order[3:7]
    assert store.paths(10, 5) == order[10:]
    assert store.paths(12, 5) == [] and store.paths(500, 5) == [] and store.paths(2 ** 70) == []
    assert store.paths(2, 0) == []
    for bad in ((-1, 5), (0, -1), (0, 10 * MAX_PAGE + 1), ("1", 2)):
        with pytest.raises(InvalidParameterError):
            store.paths(*bad)


@pytest.mark.engine
@pytest.mark.parametrize("engine", ["opensearch", "elasticsearch"])
def test_paths_past_the_engines_result_window(request, engine):
    """dsys/match's /list failed past 10,000 records (from + size): an offset beyond it walks
    there by search_after."""
    url = f"{request.getfixturevalue(engine + '_url')}/test-listing-{uuid.uuid4().hex[:12]}"
    db = open_database(url)
    try:
        signatures = _signatures(10_050, seed=1)
        for start in range(0, len(signatures), 2500):
            chunk = signatures[start:start + 2500]
            results = db.add_signatures([{"path": f"p/{start + n}", "signature": s}
                                         for n, s in enumerate(chunk)])
            assert all(isinstance(r, str) for r in results)
        db.refresh()
        tail = db.paths(9_990, 100)  # past the window: walked to
        assert len(tail) == 60
        order = [r["path"] for r in db.records_page(None, MAX_PAGE)[0]]
        assert db.paths(0, 5) == order[:5]
        # The walk and a plain window agree where both reach.
        assert db.paths(9_990, 10) == tail[:10]
        assert db.paths(10_040, 20) == tail[50:]
        listed = set()
        after = None
        while True:
            page, after = db.records_page(after, MAX_PAGE)
            listed.update(r["path"] for r in page)
            if after is None:
                break
        assert len(listed) == 10_050 and set(tail) <= listed
    finally:
        db.drop()


@pytest.mark.engine
@pytest.mark.parametrize("engine", ["opensearch", "elasticsearch"])
def test_a_1x_index_pages_and_lists_too(request, engine):
    """An index of image-match 1.x's documents has no id field of ours: it is listed by _id."""
    url = f"{request.getfixturevalue(engine + '_url')}/test-listing-{uuid.uuid4().hex[:12]}"
    documents = _legacy_documents()
    _write_raw(url, documents)
    db = open_database(url)
    try:
        assert db.legacy
        listed = [r for page in _all_pages(db, 4) for r in page]
        assert sorted(r["path"] for r in listed) == sorted(d["path"] for d in documents)
        assert db.paths(0, 100) == [r["path"] for r in listed]
        # A record image-match 2 adds to it keeps 1.x's document shape (no id field).
        db.add_image(str(PHOTO), refresh_after=True)
        assert len([r for page in _all_pages(db, 7) for r in page]) == len(documents) + 1
    finally:
        db.drop()


def test_ids_with_path_are_exact(store):
    path = "photos/cat.jpg"
    first = store.add_signatures([{"path": path, "signature": _signatures(1)[0], "id": "a"},
                                  {"path": path, "signature": _signatures(1, 2)[0], "id": "b"},
                                  {"path": path + "x", "signature": _signatures(1, 3)[0]},
                                  {"path": "Photos/Cat.jpg", "signature": _signatures(1, 4)[0]},
                                  {"path": "photos/cat", "signature": _signatures(1, 5)[0]}],
                                 refresh_after=True)
    assert all(isinstance(i, str) for i in first)
    assert sorted(store.ids_with_path(path)) == ["a", "b"]
    assert store.ids_with_path("nothing/here.jpg") == []


def test_a_search_in_two_halves_is_search_image(store):
    ids = store.add_images([str(p) for p in photos()[:5]], workers=1, refresh_after=True)
    assert all(isinstance(i, str) for i in ids)
    data = PHOTO.read_bytes()
    for options in ({}, {"all_orientations": True}, {"robust": True}):
        signer = pickle.loads(pickle.dumps(store.query_signer(**options)))  # it travels
        query = signer(data)
        assert store.search_queries([query]) == [store.search_image(data, **options)]
    # Several queries, one call; a cutoff and a filter as search_image takes them.
    queries = [store.query_signer()(str(p)) for p in photos()[:3]]
    found = store.search_queries(queries, distance_cutoff=0.2, pre_filter=None)
    assert [matches[0]["path"] for matches in found] == [str(p) for p in photos()[:3]]
    with pytest.raises(ImageLoadError):
        store.query_signer()(b"not an image")
    with pytest.raises(InvalidParameterError, match="corner_crops"):
        store.query_signer(corner_crops=True)


def test_a_record_signer_signs_as_sign(store):
    signer = pickle.loads(pickle.dumps(store.record_signer()))
    signed = signer(PHOTO.read_bytes())
    assert np.array_equal(signed["signature"], store.sign(str(PHOTO))["signature"])
    record_id = store.add_signatures([{"path": "x.jpg", **signed}], refresh_after=True)[0]
    assert store.search_image(str(PHOTO))[0]["id"] == record_id
