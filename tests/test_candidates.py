"""Candidate schemes in the stores: recorded with a store, kept by stores made without one, moved
between by export and import, and the scheme of new stores against brute force."""

import json
import sqlite3
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

from conftest import PHOTO, jpeg_bytes, photos, rgb
from image_match.drivers import NEW_STORE_DEFAULTS, open_database
from image_match.drivers.sqlite import SignatureSQLite
from image_match.errors import InvalidParameterError
from image_match.signature_database_base import record_distances
from image_match.words import DEFAULT_BANDS, Bands, Words

STORES = ["sqlite", "opensearch", "elasticsearch"]


@pytest.fixture(params=STORES)
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'images.db'}"
    base = request.getfixturevalue(f"{request.param}_url")
    return f"{base}/test-candidates-{uuid.uuid4().hex[:12]}"


def half(image):
    return image.resize((image.width // 2, image.height // 2))


@pytest.fixture
def dropped():
    """Stores to drop at the end of a test."""
    stores = []
    yield stores.append
    for store in stores:
        store.drop()


def test_new_stores_get_bands_and_keep_them(store_url, dropped):
    assert NEW_STORE_DEFAULTS["candidates"] == DEFAULT_BANDS
    store = open_database(store_url)
    dropped(store)
    assert store.scheme == Bands(**{k: v for k, v in DEFAULT_BANDS.items() if k != "scheme"})
    store.add_image(str(PHOTO), refresh_after=True)
    again = open_database(store_url)  # no parameters: the store's own
    assert again.scheme == store.scheme
    assert again.search_image(str(PHOTO))[0]["dist"] < 1e-9
    with pytest.raises(InvalidParameterError, match="candidates"):
        open_database(store_url, candidates="words")
    with pytest.raises(InvalidParameterError, match="candidates"):
        open_database(store_url, candidates={"scheme": "bands", "bands": 32, "width": 9})


def test_a_store_made_with_words_keeps_them(store_url, dropped):
    store = open_database(store_url, candidates="words")
    dropped(store)
    assert store.scheme == Words(16, 63)
    store.add_image(str(PHOTO), refresh_after=True)
    again = open_database(store_url)
    assert again.scheme == Words(16, 63)
    assert again.search_image(jpeg_bytes(half(rgb()), 70))[0]["path"] == str(PHOTO)
    with pytest.raises(InvalidParameterError, match="candidates"):
        open_database(store_url, candidates="bands")


def test_a_sqlite_store_that_recorded_no_scheme_keeps_its_words(tmp_path):
    """A store made before schemes were recorded: its configuration has k and N only."""
    path = tmp_path / "older.db"
    older = SignatureSQLite(str(path), candidates="words")
    older.add_image(str(PHOTO))
    older.close()
    connection = sqlite3.connect(path)
    config = json.loads(connection.execute("SELECT value FROM meta WHERE key = 'config'")
                        .fetchone()[0])
    del config["candidates"]
    connection.execute("UPDATE meta SET value = ? WHERE key = 'config'", (json.dumps(config),))
    connection.commit()
    connection.close()
    store = open_database(f"sqlite:///{path}")
    assert store.scheme == Words(16, 63)
    assert store.search_image(str(PHOTO))[0]["path"] == str(PHOTO)


def test_export_and_import_move_records_between_schemes(store_url, dropped):
    """import re-derives the target's terms from the signatures: a store of words moves into a
    store of bands (and back) and finds the same copies."""
    words = open_database(store_url, candidates="words")
    dropped(words)
    assert all(isinstance(i, str) for i in words.add_images([str(p) for p in photos()],
                                                             workers=1, refresh_after=True))
    copies = [jpeg_bytes(half(rgb(p)), 70) for p in photos()]
    bands = open_database(store_url + "-bands" if "sqlite" not in store_url
                          else store_url.replace(".db", "-bands.db"))
    dropped(bands)
    assert bands.scheme.name == "bands"
    results = bands.add_signatures(list(words.iter_records()), refresh_after=True)
    assert all(isinstance(r, str) for r in results), results
    assert bands.count() == words.count() == len(photos())
    for store in (words, bands):
        found = [store.search_image(copy) for copy in copies]
        assert [r[0]["path"] if r else None for r in found] == [str(p) for p in photos()]


def test_bands_need_a_layout_that_holds_them(opensearch_url):
    with pytest.raises(InvalidParameterError, match="simple_words"):
        open_database(f"{opensearch_url}/test-candidates-{uuid.uuid4().hex[:12]}",
                      layout="simple_words", candidates="bands")


# --- the scheme of new stores against brute force ----------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from distractors import collage, load_photos  # noqa: E402

DISTRACTORS = 3000
ORIGINALS = 200  # the photos, then the first collages: each is searched for by a copy


def _copy(image, index):
    """A copy of ``image`` made one of four ways (by ``index``), as JPEG bytes: each is found by
    a default search."""
    kind = index % 4
    if kind == 0:
        return jpeg_bytes(half(image), 70)
    if kind == 1:
        side = 0.9
        width, height = round(image.width * side), round(image.height * side)
        left, top = (image.width - width) // 2, (image.height - height) // 2
        return jpeg_bytes(image.crop((left, top, left + width, top + height)), 85)
    if kind == 2:
        return jpeg_bytes(image.transpose(0), 85)  # a mirror image
    return jpeg_bytes(image, 30)


@pytest.fixture(scope="module")
def recall_set():
    """``(records, queries)``: the signatures of the shipped photos and of ``DISTRACTORS``
    collages (distinct pictures made of pieces of the photos, seeded), and ``ORIGINALS`` copies
    of the photos and the first collages as JPEG bytes."""
    pieces = load_photos(photos())
    rng = np.random.default_rng(12)
    images = [rgb(p) for p in photos()]
    images += [collage(pieces, rng) for _ in range(DISTRACTORS)]
    from image_match.goldberg import ImageSignature

    signer = ImageSignature(draft=True)
    signatures = np.stack([signer.generate_signature(np.asarray(image)) for image in images])
    queries = [_copy(image, index) for index, image in enumerate(images[:ORIGINALS])]
    return signatures, queries


def test_bands_find_what_brute_force_finds(store_url, recall_set, dropped):
    """At least 99% of the records a default search's own signatures have under the cutoff
    (brute force over every record, with the search's margins) are among the candidates the
    index returns, in every driver; most of them are the planted originals."""
    from image_match.records import Record

    signatures, queries = recall_set
    store = open_database(store_url)
    dropped(store)
    assert store.scheme.name == "bands"
    paths = [f"r{i}" for i in range(len(signatures))]
    results = store.add_signatures([{"path": path, "signature": signature}
                                    for path, signature in zip(paths, signatures)],
                                   refresh_after=True)
    assert all(isinstance(r, str) for r in results), results[:3]
    records = [Record(id=path, path=path, signature=s) for path, s in zip(paths, signatures)]
    wanted = found = planted = 0
    for index, data in enumerate(queries):
        rows, margins = store.query_signer()(data)
        distances = record_distances(rows, records, margins)
        truth = {paths[i] for i in np.flatnonzero(distances < store.distance_cutoff)}
        returned = {match["path"] for match in store.search_image(data)}
        assert returned <= truth  # the search's distances are the brute force's
        wanted += len(truth)
        found += len(truth & returned)
        planted += paths[index] in truth
    assert planted >= 0.9 * len(queries)
    assert found >= 0.99 * wanted, (found, wanted)
