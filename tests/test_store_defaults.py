"""Which defaults a store has, and how it keeps them (on SQLite, and on real engines at the end;
indices image-match 1.x wrote are in test_compat_1x.py).

The 1.x constructors keep 1.x's defaults (full-scale decoding, cutoff 0.45, a new record per
add); ``open_database`` gives a NEW store ``NEW_STORE_DEFAULTS``; a store records what it was made
with and adopts it whenever it is opened again, by any entry point.
"""

import json
import sqlite3
import uuid

import pytest

from image_match.drivers import NEW_STORE_DEFAULTS, open_database
from image_match.drivers.elasticsearch import SignatureES
from image_match.drivers.sqlite import SignatureSQLite
from image_match.errors import InvalidParameterError
from image_match.goldberg import ImageSignature
from image_match.records import default_id
from image_match.signature_database_base import CUTOFF_1X, DEFAULT_CUTOFF, SignatureDatabaseBase

from conftest import PHOTO, engine_client


def recorded(path):
    with sqlite3.connect(path) as connection:
        return json.loads(connection.execute("SELECT value FROM meta WHERE key = 'config'")
                          .fetchone()[0])


def test_the_1x_constructors_have_1x_defaults(tmp_path):
    assert SignatureDatabaseBase().distance_cutoff == CUTOFF_1X == 0.45
    assert ImageSignature().draft is False
    store = SignatureSQLite(tmp_path / "images.db")
    assert (store.distance_cutoff, store.ids, store.gis.draft) == (0.45, "new", False)
    config = recorded(tmp_path / "images.db")
    assert (config["distance_cutoff"], config["ids"], config["signature"]["draft"]) == (
        0.45, "new", False)


def test_open_database_gives_a_new_store_image_match_2s_defaults(tmp_path):
    store = open_database(f"sqlite:///{tmp_path / 'images.db'}")
    assert (store.distance_cutoff, store.ids, store.gis.draft) == (DEFAULT_CUTOFF, "path", True)
    config = recorded(tmp_path / "images.db")
    assert (config["distance_cutoff"], config["ids"], config["signature"]["draft"]) == (
        0.40, "path", True)
    assert store.add_image(str(PHOTO)) == default_id(str(PHOTO))


def test_new_store_defaults_are_constructor_arguments_the_store_records(tmp_path):
    """Every key of NEW_STORE_DEFAULTS, today's and those added later: a store open_database made
    and reopened by the 1.x constructor has the parameters of one constructed with them."""
    open_database(f"sqlite:///{tmp_path / 'made.db'}").close()
    reopened = SignatureSQLite(tmp_path / "made.db")
    explicit = SignatureSQLite(tmp_path / "explicit.db", **NEW_STORE_DEFAULTS)
    plain = SignatureSQLite(tmp_path / "plain.db")
    assert reopened._config() == explicit._config() != plain._config()


@pytest.mark.parametrize("first, then", [("1.x", "open_database"), ("open_database", "1.x")])
def test_a_store_is_reopened_with_what_it_was_made_with(tmp_path, first, then):
    path = tmp_path / "images.db"

    def opened(how):
        return SignatureSQLite(path) if how == "1.x" else open_database(f"sqlite:///{path}")

    made = opened(first)
    again = opened(then)
    assert (again.distance_cutoff, again.ids, again.gis.draft) == (
        made.distance_cutoff, made.ids, made.gis.draft)
    # Signed the way the records were: a query finds its own image at distance 0.
    record_id = again.add_image(str(PHOTO))
    assert made.search_image(str(PHOTO))[0] == {**again.search_image(str(PHOTO))[0], "dist": 0.0}
    assert again.search_image(str(PHOTO))[0]["id"] == record_id


def test_given_cutoff_and_ids_override_the_stores_for_this_handle_only(tmp_path):
    path = tmp_path / "images.db"
    open_database(f"sqlite:///{path}").close()
    handle = SignatureSQLite(path, distance_cutoff=0.3, ids="new")
    assert (handle.distance_cutoff, handle.ids) == (0.3, "new")
    first, second = handle.add_image(str(PHOTO)), handle.add_image(str(PHOTO))
    assert first != second and handle.count() == 2
    assert handle.search_image(str(PHOTO), distance_cutoff=0.2)[0]["dist"] == 0.0  # for one call
    again = SignatureSQLite(path)
    assert (again.distance_cutoff, again.ids) == (0.40, "path")  # the record is unchanged


def test_a_store_refuses_another_decoding_than_its_records(tmp_path):
    path = tmp_path / "images.db"
    open_database(f"sqlite:///{path}").close()  # draft decoding
    with pytest.raises(InvalidParameterError, match="draft=True"):
        SignatureSQLite(path, draft=False)
    open_database(f"sqlite:///{tmp_path / 'exact.db'}", draft=False).close()
    with pytest.raises(InvalidParameterError, match="draft=False"):
        SignatureSQLite(tmp_path / "exact.db", draft=True)


def test_a_store_made_before_its_defaults_were_recorded_keeps_those_of_the_time(tmp_path):
    path = tmp_path / "images.db"
    SignatureSQLite(path).close()
    with sqlite3.connect(path) as connection:  # configuration format 2 recorded none of them
        connection.execute("UPDATE meta SET value = json_remove(value, '$.distance_cutoff', "
                           "'$.ids', '$.signature.draft', '$.format') WHERE key = 'config'")
    store = SignatureSQLite(path)
    assert (store.distance_cutoff, store.ids, store.gis.draft) == (0.40, "path", True)


def test_bad_parameters_are_refused(tmp_path):
    for bad in ({"ids": "content"}, {"distance_cutoff": 2}, {"draft": "yes"}, {"no_such": 1}):
        with pytest.raises(InvalidParameterError):
            SignatureSQLite(tmp_path / "x.db", **bad)
    with pytest.raises(InvalidParameterError):
        SignatureSQLite(tmp_path / "x.db", new_store_defaults={"ids": "sometimes"})


@pytest.mark.engine
@pytest.mark.parametrize("engine", ["opensearch", "elasticsearch"])
@pytest.mark.parametrize("first", ["1.x", "open_database"])
def test_an_index_is_reopened_with_what_it_was_made_with(request, engine, first):
    address = request.getfixturevalue(f"{engine}_url")
    index = f"test-{uuid.uuid4().hex[:12]}"

    def opened(how):
        if how == "1.x":
            return SignatureES(engine_client(address), index)
        return open_database(f"{address}/{index}")

    made = opened(first)
    try:
        again = opened("open_database" if first == "1.x" else "1.x")
        expected = (0.45, "new", False) if first == "1.x" else (0.40, "path", True)
        assert (again.distance_cutoff, again.ids, again.gis.draft) == expected
        record_id = again.add_image(str(PHOTO), refresh_after=True)
        assert made.search_image(str(PHOTO))[0]["id"] == record_id
        assert made.search_image(str(PHOTO))[0]["dist"] == 0.0
    finally:
        made.drop()
