"""The Elasticsearch/OpenSearch driver, against real OpenSearch 2.19 and Elasticsearch 7.17 nodes.

The generic store operations are in test_store_behaviour.py; here is what is particular to this
driver: the explicit mapping, the parameters in ``_meta``, both word layouts, image-match 1.x
indices read as they are, raw DSL and portable filters, per-item bulk errors, client detection and
unreachable engines.
"""

import base64
import io
import socket
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import engine_client, photos
from image_match.drivers import open_database
from image_match.drivers import es_filters
from image_match.drivers.elasticsearch import (QueryDSL, SignatureES, _parse_url,
                                               check_client_version)
from image_match.drivers.es_filters import metadata_term, metadata_terms
from image_match.errors import DatabaseError, InvalidParameterError
from image_match.goldberg import ImageSignature
from image_match.records import default_id, filter_matches, normalize_filter
from image_match.signature_database_base import make_record

ENGINES = ["opensearch", "elasticsearch"]


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- without an engine -------------------------------------------------------------------------

@pytest.mark.parametrize("server, client, ok", [
    (7, 7, True), (8, 8, True), (9, 9, True), (9, 8, True),
    (7, 8, False), (8, 7, False), (8, 9, False), (9, 7, False), (6, 7, False),
])
def test_client_version_must_match_the_server(server, client, ok):
    problem = check_client_version(server, client)
    assert (problem is None) == ok
    if not ok and server >= 7:
        wanted = {7: "pip install 'elasticsearch<8,>=7.17'", 8: "pip install 'elasticsearch<9,>=8.0'",
                  9: "pip install 'elasticsearch<10,>=9.0'"}[server]
        assert wanted in problem and "image-match" not in problem


def test_each_elasticsearch_extra_installs_a_client_of_its_major():
    """setup.cfg's [elasticsearchN] extras (and [elasticsearch], [dev]) give a client that
    check_client_version accepts for the servers they are for."""
    import configparser

    from packaging.requirements import Requirement

    setup = configparser.ConfigParser()
    setup.read(Path(__file__).resolve().parent.parent / "setup.cfg")
    extras = setup["options.extras_require"]

    def client_majors(extra):
        (line,) = [line for line in extras.get(extra, raw=False).split()
                   if line.startswith("elasticsearch")]
        specifier = Requirement(line).specifier
        return {major for major in range(5, 12) if any(
            specifier.contains(f"{major}.{minor}.0") for minor in range(30))}

    for server in (7, 8, 9):
        assert client_majors(f"elasticsearch{server}") == {server}
    assert client_majors("elasticsearch") == {8}
    assert all(check_client_version(server, 8) is None for server in (8, 9))
    assert client_majors("dev") == {7}  # the tests' node is Elasticsearch 7.17


def test_url_parts():
    assert _parse_url("http://127.0.0.1:9200/my-index") == (
        "http://127.0.0.1:9200", "my-index", None, None)
    assert _parse_url("https://user:p%40ss@es.example:443/proxy/images")[0] == \
        "https://es.example:443/proxy"
    assert _parse_url("https://user:p%40ss@es.example/x")[2:] == ("user", "p@ss")
    assert _parse_url("http://localhost:9200")[1] == "images"  # 1.x's default index
    assert _parse_url("http://localhost:9200/")[1] == "images"
    with pytest.raises(InvalidParameterError):
        _parse_url("http://localhost:notaport/x")


def test_unreachable_engine_is_a_quick_error_naming_the_url_without_its_password():
    port = _closed_port()
    start = time.monotonic()
    with pytest.raises(DatabaseError) as caught:
        open_database(f"http://admin:s3cret@127.0.0.1:{port}/images")
    assert time.monotonic() - start < 5
    assert f"http://127.0.0.1:{port}/images" in str(caught.value)
    assert "s3cret" not in str(caught.value)
    assert caught.value.transient


@pytest.mark.parametrize("metadata", [
    {"tag": "a", "n": 1, "x": 1.5, "flag": True, "zero": 0, "none": None},
    {"camera": {"make": "Nikon", "iso": 200.0}, "tags": ["a", "b"], "a.b": 1},
    {"text": "é" * 500, "n": 10 ** 20},
])
def test_metadata_terms_follow_the_reference_filter(metadata):
    """A portable filter matches through the indexed terms exactly when records.filter_matches
    says it matches."""
    indexed = set(metadata_terms(metadata))
    filters = [{"tag": "a"}, {"tag": ["b", "a"]}, {"n": 1}, {"n": 1.0}, {"n": True}, {"flag": True},
               {"flag": 1}, {"zero": False}, {"zero": 0.0}, {"x": 1.5}, {"camera.make": "Nikon"},
               {"camera.iso": 200}, {"tags": "a"}, {"a.b": 1}, {"text": "é" * 500},
               {"n": 10 ** 20}, {"n": 1e20}, {"missing": 1}, {"tag": "a", "n": 2}]
    for pre_filter in filters:
        normalized = normalize_filter(pre_filter)
        by_terms = all(indexed & {metadata_term(key, v) for v in values}
                       for key, values in normalized.items())
        assert by_terms == filter_matches(metadata, normalized), pre_filter


def test_raw_dsl_is_told_from_a_portable_filter():
    check = es_filters.normalize
    assert check({"term": {"path": "x"}}) == [{"term": {"path": "x"}}]
    assert isinstance(check({"bool": {"must": []}}), es_filters.Clauses)
    assert isinstance(check({"nested": {"path": "x", "query": {}}}), es_filters.Clauses)
    assert check({"term": "x"}) == {"term": ["x"]}  # a metadata key named "term"
    assert check({"a": 1, "b": [2, 3]}) == {"a": [1], "b": [2, 3]}
    raw = QueryDSL({"my_plugin_query": {}})
    assert check(raw) == [raw]
    clauses = [{"term": {"a": 1}}, raw]  # 1.x master's list of clauses
    assert check(clauses) == clauses and isinstance(check(clauses), es_filters.Clauses)
    for wrong in ({"owner": {"nested": "dict"}}, {"a": {"b": 1}, "c": 2}, {"term": {}, "c": 1},
                  [], [{"a": 1}], [{"term": {"a": 1}}, "x"]):
        with pytest.raises(InvalidParameterError):
            check(wrong)


def _fields(root=None, legacy=False, mapping=None):
    """IndexFields of an index whose mapping is ``mapping`` (dotted field -> its mapping)."""
    mapping = mapping or {}
    return es_filters.IndexFields(root, legacy, ["image"], mapping.get)


def test_raw_dsl_is_fitted_to_image_match_2s_layout():
    fit = es_filters.fit_query
    fields = _fields(mapping={"path": {"type": "keyword"}})
    term = es_filters.metadata_term
    # 1.x's spellings of a metadata field, flat and under master's doc type.
    for field in ("metadata.tenant_id", "image.metadata.tenant_id", "metadata.tenant_id.keyword"):
        assert fit({"term": {field: "foo"}}, fields) == {
            "terms": {"metadata_terms": [term("tenant_id", "foo")]}}
    assert fit({"terms": {"metadata.n": [1, 2]}}, fields) == {
        "terms": {"metadata_terms": [term("n", 1), term("n", 2)]}}
    assert fit({"match": {"metadata.a.b": {"query": "x"}}}, fields) == {
        "terms": {"metadata_terms": [term("a.b", "x")]}}
    assert fit({"term": {"image.path": "p"}}, fields) == {"term": {"path": "p"}}
    assert fit({"bool": {"must_not": [{"term": {"path.keyword": "p"}}], "boost": 2}}, fields) == {
        "bool": {"must_not": [{"term": {"path": "p"}}], "boost": 2}}
    raw = {"query_string": {"query": "metadata.tenant_id:foo"}}
    assert fit(QueryDSL(raw), fields) == raw  # sent as it is
    for unfit in ({"range": {"metadata.n": {"gte": 1}}}, {"exists": {"field": "metadata.x"}},
                  {"term": {"tenant_id": "foo"}}, {"term": {"metadata": "x"}}, raw,
                  {"term": {"metadata.x": {"nested": 1}}}, {"bool": {"filter": [{"x": 1}]}}):
        with pytest.raises(InvalidParameterError):
            fit(unfit, fields)


def test_raw_dsl_is_fitted_to_1xs_layouts():
    fit = es_filters.fit_query
    text = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 256}}}
    flat = _fields(legacy=True, mapping={"metadata.tenant_id": {"type": "keyword"},
                                         "metadata.name": text, "path": {"type": "text"}})
    assert fit({"term": {"image.metadata.tenant_id": "foo"}}, flat) == {
        "term": {"metadata.tenant_id": "foo"}}
    assert fit({"term": {"metadata.tenant_id.keyword": "foo"}}, flat) == {
        "term": {"metadata.tenant_id": "foo"}}  # the keyword field has no .keyword subfield
    assert fit({"term": {"metadata.unseen": "x"}}, flat) == {"term": {"metadata.unseen": "x"}}
    # A term on 1.x's dynamically mapped text compares the whole value, on its keyword subfield.
    assert fit({"terms": {"metadata.name": ["Bar-2"]}}, flat) == {
        "terms": {"metadata.name.keyword": ["Bar-2"]}}
    assert fit({"match": {"metadata.name": "bar"}}, flat) == {"match": {"metadata.name": "bar"}}
    raw = {"query_string": {"query": "metadata.tenant_id:foo"}}
    assert fit(raw, flat) == raw  # on 1.x's own documents, as 1.x passed it
    nested = _fields(root="image", legacy=True, mapping={"image.path": {"type": "keyword"},
                                                         "image.metadata.t": {"type": "keyword"}})
    assert fit({"term": {"metadata.t": "x"}}, nested) == {"term": {"image.metadata.t": "x"}}
    assert fit({"range": {"image.metadata.t": {"gte": "a"}}}, nested) == {
        "range": {"image.metadata.t": {"gte": "a"}}}
    assert fit({"term": {"path": "p"}}, nested) == {"term": {"image.path": "p"}}
    with pytest.raises(InvalidParameterError, match="tenant"):
        fit({"term": {"tenant": "x"}}, nested)


# --- against real engines ----------------------------------------------------------------------

@pytest.fixture(params=ENGINES)
def engine_url(request):
    return request.getfixturevalue(f"{request.param}_url")


@pytest.fixture
def index_url(engine_url):
    """A fresh index's URL, dropped after the test."""
    url = f"{engine_url}/test-{uuid.uuid4().hex[:12]}"
    yield url
    address, index, _, _ = _parse_url(url)
    engine_client(address).indices.delete(index=index, ignore=[404])


def _raw_client(store):
    return store.es


def _mapping(store):
    return store._client.get_mapping()


@pytest.fixture(scope="module")
def photo_signatures():
    gis = ImageSignature(draft=True)  # as the stores open_database makes sign
    return {str(p): gis.generate_signature(str(p)) for p in photos()}


def _add(store, signatures, metadata=None):
    items = [{"path": path, "signature": s, "metadata": (metadata or {}).get(path)}
             for path, s in signatures.items()]
    results = store.add_signatures(items, refresh_after=True)
    assert all(isinstance(r, str) for r in results), results
    return results


@pytest.mark.engine
def test_mapping_is_explicit_and_records_the_parameters(index_url):
    store = open_database(index_url, variant="paper", k=12, N=40)
    mapping = _mapping(store)
    assert mapping["dynamic"] == "strict"
    properties = mapping["properties"]
    assert properties["signature"]["type"] == "binary"  # never indexed, no doc values
    assert properties["metadata"] == {"type": "object", "enabled": False}
    assert properties["path"]["type"] == "keyword"
    assert properties["words"]["type"] == "keyword"
    assert properties["timestamp"]["type"] == "date"
    assert not any(name.startswith("simple_word") for name in properties)
    assert mapping["_meta"]["image_match"]["config"] == store._config()

    reopened = open_database(index_url)  # no parameters: those of the index
    assert (reopened.k, reopened.N, reopened.gis.variant) == (12, 40, "paper")
    with pytest.raises(InvalidParameterError, match="variant"):
        open_database(index_url, variant="1.x")
    with pytest.raises(InvalidParameterError, match="layout"):
        open_database(index_url, layout="simple_words")


@pytest.mark.engine
def test_signature_is_stored_packed(index_url, photo_signatures):
    store = open_database(index_url)
    path, signature = next(iter(photo_signatures.items()))
    record_id = _add(store, {path: signature})[0]
    source = _raw_client(store).get(index=store.index, id=record_id)["_source"]
    assert isinstance(source["signature"], str) and len(source["signature"]) == 288  # 216 bytes
    assert store.get(record_id)["signature"] == signature.tolist()


@pytest.mark.engine
def test_both_layouts_find_the_same_images(engine_url, photo_signatures):
    urls = [f"{engine_url}/test-{uuid.uuid4().hex[:12]}" for _ in range(2)]
    stores = [open_database(urls[0], layout="words"), open_database(urls[1], layout="simple_words")]
    try:
        for store in stores:
            _add(store, photo_signatures)
        gis = ImageSignature(draft=True)
        for path in list(photo_signatures)[:6]:
            copy = gis.generate_signature(path)  # the same photo, decoded again
            found = [store.search_image(path, all_orientations=True) for store in stores]
            assert [m["id"] for m in found[0]] == [m["id"] for m in found[1]]
            assert [m["dist"] for m in found[0]] == pytest.approx([m["dist"] for m in found[1]])
            assert found[0][0]["path"] == path and found[0][0]["dist"] < 0.05
            assert store.search_signature(copy)[0]["path"] == path
    finally:
        for store in stores:
            store.drop()


@pytest.mark.engine
@pytest.mark.parametrize("layout", ["words", "simple_words"])
def test_portable_filter(index_url, photo_signatures, layout):
    store = open_database(index_url, layout=layout)
    path, signature = next(iter(photo_signatures.items()))
    kinds = [{"kind": "a", "n": 1, "flag": True, "camera": {"make": "X"}},
             {"kind": "b", "n": 2.0, "flag": False},
             {"kind": "c", "n": True, "tags": ["a"]}]
    store.add_signatures([{"path": f"{path}#{i}", "signature": signature, "metadata": m}
                          for i, m in enumerate(kinds)], refresh_after=True)

    def found(pre_filter):
        return sorted(m["metadata"]["kind"] for m in store.search_signature(signature, pre_filter))

    assert found(None) == ["a", "b", "c"]
    assert found({"kind": "a"}) == ["a"]
    assert found({"kind": ["a", "c"]}) == ["a", "c"]
    assert found({"n": 2}) == ["b"]  # 2 == 2.0
    assert found({"n": 1}) == ["a"]  # True is not 1
    assert found({"flag": False}) == ["b"]
    assert found({"camera.make": "X"}) == ["a"]
    assert found({"tags": "a"}) == []  # values inside lists are not matched (filter_matches)
    assert found({"kind": "a", "n": 2}) == []


@pytest.mark.engine
def test_raw_dsl_filter(index_url, photo_signatures):
    store = open_database(index_url)
    ids = _add(store, photo_signatures)
    path, signature = next(iter(photo_signatures.items()))
    [match] = store.search_signature(signature, pre_filter={"term": {"path": path}})
    assert match["id"] == ids[0]
    others = store.search_signature(signature, {"bool": {"must_not": {"term": {"path": path}}}})
    assert all(m["path"] != path for m in others)
    with pytest.raises(InvalidParameterError):  # neither a query nor a portable filter
        store.search_signature(signature, pre_filter={"no_such_query": {"x": 1}})
    with pytest.raises(DatabaseError) as caught:  # passed as it is: the engine refuses it
        store.search_signature(signature, pre_filter=QueryDSL({"no_such_query": {"x": 1}}))
    assert not caught.value.transient and "no_such_query" in str(caught.value)


@pytest.mark.engine
def test_bulk_refusals_are_per_item(index_url, photo_signatures):
    store = open_database(index_url)
    (path, signature), (other, second) = list(photo_signatures.items())[:2]
    huge = "http://example.com/" + "x" * 40000  # a keyword term is at most 32766 bytes
    results = store.add_signatures([
        {"path": path, "signature": signature, "id": "x" * 600},  # ids are at most 512 bytes
        {"path": huge, "signature": signature},  # refused by the engine itself
        {"path": other, "signature": second},
    ], refresh_after=True)
    assert isinstance(results[0], DatabaseError) and "512" in str(results[0])
    assert path in str(results[0])
    assert isinstance(results[1], DatabaseError) and "immense term" in str(results[1])
    assert isinstance(results[2], str)
    assert store.count() == 1


def _legacy_documents(k=16, N=63):
    """Documents as image-match 1.x's add_image wrote them (make_record + a naive timestamp)."""
    gis = ImageSignature()
    documents = []
    for i, path in enumerate(photos()):
        record = make_record(str(path), gis, k, N, metadata={"i": i, "name": path.stem,
                                                             "even": i % 2 == 0})
        record["timestamp"] = datetime(2019, 1, 1, 12, i).isoformat()
        documents.append(record)
    return documents


def _write_raw(store_url, documents, ids=None):
    """Index documents with dynamic mapping, as 1.x did (no mapping made beforehand)."""
    address, index, _, _ = _parse_url(store_url)
    raw = engine_client(address)
    spelled = "body" if type(raw).__module__.startswith("opensearchpy") else "document"
    for n, document in enumerate(documents):
        raw.index(index=index, id=None if ids is None else ids[n], **{spelled: document})
    raw.indices.refresh(index=index)
    return raw


@pytest.mark.engine
def test_a_1x_index_reads_and_searches_without_reindexing(index_url):
    documents = _legacy_documents()
    long_path = "http://example.com/" + "x" * 300 + ".jpg"  # beyond path.keyword's ignore_above
    documents.append(dict(documents[0], path=long_path))
    documents.append(dict(documents[0], path=long_path))
    documents.append(dict(documents[1], timestamp=datetime(2018, 1, 1).isoformat()))  # a duplicate
    raw = _write_raw(index_url, documents)

    store = open_database(index_url)
    assert store.legacy and store.layout == "simple_words"
    assert (store.k, store.N, store.gis.variant) == (16, 63, "1.x")
    assert "_meta" not in _mapping(store)  # nothing was changed in the index
    assert store.count() == len(documents)

    query = documents[3]
    matches = store.search_image(query["path"], all_orientations=True)
    assert matches[0]["path"] == query["path"] and matches[0]["dist"] < 0.05
    assert matches[0]["metadata"] == query["metadata"]
    record = store.get(matches[0]["id"])
    assert record["signature"] == query["signature"]
    assert record["timestamp"].startswith("2019-01-01T12:03:00")

    # Portable filters on 1.x's dynamically mapped metadata (text+keyword, long, boolean).
    signature = np.array(query["signature"])
    assert [m["path"] for m in store.search_signature(signature, {"name": query["metadata"]["name"]})] \
        == [query["path"]]
    assert store.search_signature(signature, {"i": 3})[0]["path"] == query["path"]
    assert store.search_signature(signature, {"i": 4}) == []
    assert store.search_signature(signature, {"even": False})[0]["path"] == query["path"]
    assert store.search_signature(signature, {"even": 0}) == []
    assert store.search_signature(signature, {"term": {"metadata.i": 3}})[0]["path"] == query["path"]

    # delete_duplicates keeps the earliest record of a path, also for paths too long for keyword.
    assert store.delete_duplicates(documents[1]["path"]) == 1
    remaining = [m for m in store.search_signature(np.array(documents[1]["signature"]))
                 if m["path"] == documents[1]["path"]]
    assert len(remaining) == 1 and store.get(remaining[0]["id"])["timestamp"].startswith("2018")
    assert store.delete_duplicates(long_path) == 1
    assert store.delete_path(long_path) == 1

    # New records keep 1.x's document shape, so old and new read alike.
    new_id = store.add_image(str(photos()[5]), metadata={"i": 99}, refresh_after=True)
    source = raw.get(index=store.index, id=new_id)["_source"]
    assert isinstance(source["signature"], list) and "simple_word_0" in source
    assert "words" not in source and "metadata_terms" not in source
    assert store.search_image(str(photos()[5]), pre_filter={"i": 99})[0]["id"] == new_id
    assert len(list(store.iter_records())) == store.count()
    assert store.delete(new_id)


@pytest.mark.engine
def test_a_1x_index_made_with_other_words_is_read_with_them(index_url):
    _write_raw(index_url, _legacy_documents(k=10, N=20)[:4])
    store = open_database(index_url)
    assert (store.k, store.N) == (10, 20)
    path = str(photos()[2])
    assert store.search_image(path)[0]["path"] == path
    with pytest.raises(InvalidParameterError):
        open_database(index_url, k=12)


@pytest.mark.engine
def test_a_1x_index_refuses_per_item(index_url):
    documents = _legacy_documents()[:2]
    _write_raw(index_url, documents)
    store = open_database(index_url)
    # metadata.i is a long in the dynamic mapping: a string there is refused by the engine.
    results = store.add_signatures([
        {"path": "a.jpg", "signature": np.array(documents[0]["signature"]), "metadata": {"i": "x"}},
        {"path": "b.jpg", "signature": np.array(documents[1]["signature"]), "metadata": {"i": 7}},
    ], refresh_after=True)
    assert isinstance(results[0], DatabaseError) and "a.jpg" in str(results[0])
    assert isinstance(results[1], str)


@pytest.mark.engine
def test_an_index_of_other_documents_is_refused(index_url):
    _write_raw(index_url, [{"title": "not an image"}])
    with pytest.raises(DatabaseError, match="other documents"):
        open_database(index_url)


@pytest.mark.engine
def test_drop_then_write_creates_the_mapping_again(index_url, photo_signatures):
    store = open_database(index_url)
    _add(store, photo_signatures)
    store.drop()
    assert store.count() == 0
    _add(store, dict(list(photo_signatures.items())[:2]))
    assert _mapping(store)["dynamic"] == "strict" and store.count() == 2


@pytest.mark.engine
def test_describe(index_url, photo_signatures):
    store = open_database(index_url)
    _add(store, photo_signatures)
    described = store.describe()
    assert described["engine"].split()[0] in ("OpenSearch", "Elasticsearch")
    assert described["location"] == index_url
    assert described["records"] == len(photo_signatures) and described["bytes"] > 0


@pytest.mark.engine
def test_find_duplicates_and_scan(index_url, photo_signatures):
    store = open_database(index_url)
    path, signature = next(iter(photo_signatures.items()))
    _add(store, photo_signatures)
    store.add_signatures([{"path": path + ".copy", "signature": signature}], refresh_after=True)
    groups = store.find_duplicates()
    assert any(sorted(m["path"] for m in group) == [path, path + ".copy"] for group in groups)
    assert len(list(store.iter_records(batch_size=5))) == len(photo_signatures) + 1


class _Relay:
    """A TCP relay to the engine that can be cut, so that an engine can "go away" under a store."""

    def __init__(self, port):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.target = port
        self.sockets = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        try:
            self.server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (Linux)
        except OSError:
            pass
        self.server.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


@pytest.mark.engine
def test_an_engine_that_goes_away_gives_a_transient_error(index_url, photo_signatures):
    address, index, _, _ = _parse_url(index_url)
    relay = _Relay(int(address.rsplit(":", 1)[1]))
    try:
        store = open_database(f"http://user:s3cret@127.0.0.1:{relay.port}/{index}")
        _add(store, dict(list(photo_signatures.items())[:2]))
    finally:
        relay.cut()
    start = time.monotonic()
    for operation in (store.count, lambda: store.search_signature(next(iter(photo_signatures.values()))),
                      lambda: store.get("x"), lambda: list(store.iter_records())):
        with pytest.raises(DatabaseError) as caught:
            operation()
        assert caught.value.transient
        assert f"http://127.0.0.1:{relay.port}/{index}" in str(caught.value)
        assert "s3cret" not in str(caught.value)
    assert time.monotonic() - start < 20


@pytest.mark.engine
def test_a_missing_client_library_says_which_extra(opensearch_url, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "opensearchpy", None)  # import opensearchpy -> ImportError
    with pytest.raises(DatabaseError, match=r"needs opensearch-py: pip install 'opensearch-py>=2.0'$"):
        open_database(f"{opensearch_url}/whatever")


@pytest.mark.engine
def test_a_client_of_another_major_is_refused(elasticsearch_url, monkeypatch):
    import elasticsearch

    monkeypatch.setattr(elasticsearch, "VERSION", (8, 15, 0))
    with pytest.raises(DatabaseError, match=r"pip install 'elasticsearch<8,>=7.17'$"):
        open_database(f"{elasticsearch_url}/whatever")


@pytest.mark.engine
def test_open_database_takes_store_parameters(engine_url):
    url = f"{engine_url}/test-{uuid.uuid4().hex[:12]}"
    store = open_database(url, layout="simple_words", size=10, distance_cutoff=0.3, replicas=0)
    try:
        assert (store.layout, store.size, store.distance_cutoff) == ("simple_words", 10, 0.3)
    finally:
        store.drop()


@pytest.mark.engine
def test_what_add_image_stored_the_next_search_finds(index_url):
    """open_database's handles refresh after add_image and add_images (a user's first add then
    search found nothing for about a second); 1.x's constructor keeps 1.x's behaviour."""
    first, second, third, fourth, fifth = photos()[:5]
    store = open_database(index_url)
    store.add_image(str(first))  # creates the index
    address, index, _, _ = _parse_url(index_url)
    client = engine_client(address)
    # No periodic refresh from now on: only one asked for makes a record searchable.
    client.indices.put_settings(index=index, body={"index": {"refresh_interval": "-1"}})

    record_id = store.add_image(str(second))
    assert [m["id"] for m in store.search_image(str(second))] == [record_id]
    assert store.add_images([str(third)]) == [default_id(str(third))]
    assert [m["path"] for m in store.search_image(str(third))] == [str(third)]

    legacy = SignatureES(client, index=index)  # 1.x's constructor: no refresh unless asked
    # (it adopts the store's ids from the path: adding again replaces the record)
    assert legacy.refresh_adds is False
    legacy.add_image(str(fourth))
    assert legacy.search_image(str(fourth)) == []
    legacy.add_image(str(fourth), refresh_after=True)
    assert [m["path"] for m in legacy.search_image(str(fourth))] == [str(fourth)]
    store.add_image(str(fifth), refresh_after=False)
    assert store.search_image(str(fifth)) == []


@pytest.mark.engine
def test_a_subclass_of_a_client_is_taken(index_url):
    address, index, _, _ = _parse_url(index_url)

    class Client(type(engine_client(address))):
        """A user's client class (authentication, logging...)."""

    store = SignatureES(Client([address]), index)
    store.add_image(str(photos()[0]), refresh_after=True)
    assert store.count() == 1


def test_only_the_two_client_libraries_are_taken():
    with pytest.raises(InvalidParameterError, match="OpenSearch client"):
        SignatureES(object())


@pytest.mark.engine
def test_a_dropped_1x_index_comes_back_in_the_new_layout(index_url):
    _write_raw(index_url, _legacy_documents()[:2])
    store = open_database(index_url)
    assert store.legacy
    store.drop()
    store.add_image(str(photos()[0]), refresh_after=True)
    assert not store.legacy and _mapping(store)["dynamic"] == "strict"
    assert store.search_image(str(photos()[0]))[0]["dist"] < 0.05


def test_the_1x_import_path():
    from image_match import elasticsearch_driver

    assert elasticsearch_driver.SignatureES is SignatureES
    assert callable(elasticsearch_driver.normalized_distance)


@pytest.mark.engine
def test_crop_windows_are_stored_packed_and_their_words_indexed(index_url):
    store = open_database(index_url, crop_windows=True)
    mapping = _mapping(store)
    assert mapping["properties"]["windows"] == {"type": "binary"}
    assert mapping["_meta"]["image_match"]["config"]["crop_windows"] == [0.5, 0.75]
    record_id = store.add_image(str(photos()[0]), refresh_after=True)
    source = _raw_client(store).get(index=store.index, id=record_id)["_source"]
    assert isinstance(source["windows"], str) and len(source["windows"]) == 576  # 2 x 216 bytes
    assert len(source["words"]) == len(set(source["words"])) > 63
    assert open_database(index_url).crop_windows == (0.5, 0.75)


@pytest.mark.engine
def test_a_1x_index_refuses_crop_windows(index_url):
    _write_raw(index_url, _legacy_documents()[:2])
    with pytest.raises(InvalidParameterError, match="crop windows"):
        open_database(index_url, crop_windows=True)
    store = open_database(index_url)
    assert store.legacy and store.crop_windows == ()


@pytest.mark.engine
def test_crop_windows_in_the_simple_words_layout(index_url):
    store = open_database(index_url, layout="simple_words", crop_windows=True)
    store.add_images([str(p) for p in photos()], workers=1, refresh_after=True)
    with Image.open(photos()[2]) as image:
        width, height = image.size
        side = 0.5 ** 0.5
        left, top = round(width * (1 - side) / 2), round(height * (1 - side) / 2)
        half = image.convert("RGB").crop((left, top, width - left, height - top))
    buffer = io.BytesIO()
    half.save(buffer, "JPEG", quality=90)
    assert store.search_image(buffer.getvalue())[0]["path"] == str(photos()[2])
    source = _raw_client(store).get(index=store.index, id=default_id(str(photos()[2])))["_source"]
    assert any(isinstance(source[f"simple_word_{i}"], list) for i in range(63))


@pytest.mark.engine
def test_a_damaged_stored_signature_is_a_database_error_naming_the_record(index_url,
                                                                           photo_signatures):
    store = open_database(index_url)
    signatures = list(photo_signatures.values())[:3]
    ids = _add(store, dict(zip(list(photo_signatures)[:3], signatures)))
    # Written past the driver: a packed signature cut short.
    raw, change = _raw_client(store), {"signature": base64.b64encode(b"\0" * 100).decode()}
    spelled = {"body": {"doc": change}} if type(raw).__module__.startswith("opensearchpy") else {
        "doc": change}
    raw.update(index=store.index, id=ids[0], refresh=True, **spelled)
    with pytest.raises(DatabaseError, match=ids[0]):
        store.search_signature(signatures[0])
    with pytest.raises(DatabaseError, match=ids[0]):
        store.get(ids[0])
    assert store.get(ids[1])["signature"] == signatures[1].tolist()
