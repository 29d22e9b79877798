"""The service as its clients see it: a real ``image-match serve`` process on a loopback port, for
each store (SQLite, and the real OpenSearch 2.19 and Elasticsearch 7.17 nodes), with API keys, an
upload cap and the test HTTP server allowed as a URL source.

Every endpoint of dsys/match's API (as its README's clients call it, with requests) and of
``/v1``, their error statuses, the keys, the caps and concurrent writers. The service's own
limits (its queue, timeouts, shutdown, loopback-only mode, the command line) are in
test_server_limits.py, the OpenAPI schema's property-based run in test_server_schema.py.
"""

import io
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from image_match.drivers import open_database
from image_match.records import default_id

from conftest import PHOTO, jpeg_bytes, photos, rgb
from service_process import ServiceProcess
from test_elasticsearch_driver import _Relay
from image_match.drivers.elasticsearch import _parse_url

STORES = [
    "sqlite",
    pytest.param("opensearch", marks=pytest.mark.engine),
    pytest.param("elasticsearch", marks=pytest.mark.engine),
]
WRITE, READ = "test-write-key", "test-read-key"
MAX_UPLOAD = 1_000_000
ENV = {
    "IMAGE_MATCH_API_KEYS": f"{WRITE}, {READ}:read",
    "IMAGE_MATCH_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
    "IMAGE_MATCH_FETCH_ALLOWLIST": "127.0.0.1",
    "IMAGE_MATCH_SIGNING_PROCESSES": "2",
}


def store_url(request, name, tmp_path_factory):
    if name == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('serve') / 'images.db'}"
    return f"{request.getfixturevalue(name + '_url')}/test-serve-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="module", params=STORES)
def service(request, tmp_path_factory):
    url = store_url(request, request.param, tmp_path_factory)
    with ServiceProcess(url, ENV) as process:
        process.store = open_database(url)
        process.kind = request.param
        yield process
    process.store.drop()


def session(key=WRITE):
    client = requests.Session()
    if key:
        client.headers["Authorization"] = f"Bearer {key}"
    return client


@pytest.fixture
def api(service):
    with session() as client:
        yield client


def unique(name="photo"):
    return f"{name}-{uuid.uuid4().hex[:10]}.jpg"


def upload(data, name="photo.jpg"):
    return (name, data, "image/jpeg")


def ok(response, method, result=None):
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["status"], body["error"], body["method"]) == ("ok", [], method)
    if result is not None:
        assert body["result"] == result
    return body["result"]


def failed(response, status, error=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert (body["status"], body["method"], body["result"]) == ("fail", "", [])
    assert len(body["error"]) == 1
    if error is not None:
        assert error in body["error"][0], body
    return body["error"][0]


def problem(response, status, detail=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == status and body["type"] == "about:blank" and body["title"]
    assert "Traceback" not in body["detail"] and "\n" not in body["detail"]
    if detail is not None:
        assert detail in body["detail"], body
    return body["detail"]


def metric(text, name, **labels):
    """The value of one sample of a Prometheus exposition (None when it is not there)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def turned(path=PHOTO, operation=Image.Transpose.ROTATE_90):
    return jpeg_bytes(rgb(path).transpose(operation), quality=92)


def not_an_image():
    return b"just some text, not a picture\n" * 10


# --- dsys/match's API, called as its README's clients call it --------------------------------------

def test_dsys_readme_calls(service, api, http_server):
    """The calls of dsys/match's README and benchmark, word for word in requests."""
    url = service.url
    path = unique("readme")
    with open(PHOTO, "rb") as image:
        ok(api.post(url + "/add", files={"image": image},
                    data={"filepath": path, "metadata": '{"owner": "ann", "n": 1}'}), "add", [])
    address = http_server.serve_bytes("/copy.jpg", jpeg_bytes(rgb(PHOTO).resize((320, 213))))
    ok(api.post(url + "/add", data={"url": address, "filepath": path + ".url"}), "add", [])
    service.store.refresh()

    with open(PHOTO, "rb") as image:
        found = ok(api.post(url + "/search", files={"image": image}), "search")
    first = next(match for match in found if match["filepath"] == path)
    assert first == {"score": pytest.approx(100.0), "filepath": path,
                     "metadata": {"owner": "ann", "n": 1}}
    assert [m["score"] for m in found] == sorted((m["score"] for m in found), reverse=True)
    assert all(set(m) == {"score", "filepath", "metadata"} for m in found)
    by_url = ok(api.post(url + "/search", data={"url": address}), "search")
    assert {path, path + ".url"} <= {m["filepath"] for m in by_url}
    copy = next(m for m in by_url if m["filepath"] == path)
    stored = service.store.search_image(PHOTO.read_bytes())
    assert 0 < copy["score"] < 100  # (1 - dist) * 100, dist the store's own
    assert any(abs((1 - m["dist"]) * 100 - 100.0) < 1e-6 for m in stored if m["path"] == path)

    score = ok(api.post(url + "/compare", data={"url1": address, "url2": address}), "compare")
    assert score == [{"score": pytest.approx(100.0)}]
    with open(PHOTO, "rb") as a, open(photos()[0], "rb") as b:
        (different,) = ok(api.post(url + "/compare", files={"image1": a, "image2": b}), "compare")
    assert different["score"] < 60

    count = ok(api.get(url + "/count"), "count")
    assert count == [service.store.count()] and count[0] >= 2
    assert ok(api.post(url + "/count"), "count") == count
    listed = ok(api.get(url + "/list", params={"offset": 0, "limit": 20}), "list")
    assert len(listed) == min(20, count[0]) and all(isinstance(p, str) for p in listed)

    ok(api.delete(url + "/delete", data={"filepath": path}), "delete", [])
    ok(api.delete(url + "/delete", data={"filepath": path + ".url"}), "delete", [])
    assert service.store.ids_with_path(path) == service.store.ids_with_path(path + ".url") == []
    ok(api.get(url + "/ping"), "ping", [])
    ok(requests.post(url + "/ping"), "ping", [])  # no key needed


def test_dsys_add_replaces_every_record_of_exactly_that_path(service, api):
    path = unique("replace")
    signature = np.zeros(648, np.int8)
    signature[::7] = 1
    # Records dsys/match or image-match 1.x left under that path, with ids of their own.
    for record_id in ("old-1", "old-2", "old-3"):
        service.store.add_signatures([{"path": path, "signature": signature, "id": record_id}])
    service.store.add_signatures([{"path": path + "x", "signature": signature, "id": "other"}],
                                 refresh_after=True)
    ok(api.post(service.url + "/add", files={"image": upload(PHOTO.read_bytes())},
                data={"filepath": path}), "add")
    assert service.store.ids_with_path(path) == [default_id(path)]
    assert service.store.ids_with_path(path + "x") == ["other"]
    ok(api.post(service.url + "/add", files={"image": upload(photos()[0].read_bytes())},
                data={"filepath": path}), "add")
    service.store.refresh()
    assert service.store.ids_with_path(path) == [default_id(path)]
    found = service.store.search_image(photos()[0].read_bytes())
    assert path in [m["path"] for m in found]
    assert path not in [m["path"] for m in service.store.search_image(PHOTO.read_bytes())]


def test_dsys_delete_is_exact(service, api):
    path = unique("exact")
    for name in (path, path + ".bak", path.upper(), "dir/" + path):
        ok(api.post(service.url + "/add", files={"image": upload(PHOTO.read_bytes())},
                    data={"filepath": name}), "add")
    service.store.refresh()
    ok(api.delete(service.url + "/delete", data={"filepath": path}), "delete")
    assert service.store.ids_with_path(path) == []
    for name in (path + ".bak", path.upper(), "dir/" + path):
        assert service.store.ids_with_path(name) == [default_id(name)]
    ok(api.delete(service.url + "/delete", data={"filepath": "never/added.jpg"}), "delete")


def test_dsys_list_pages_in_the_store_order(service, api):
    service.store.refresh()
    order = service.store.paths(0, 10_000)
    url = service.url + "/list"
    assert ok(api.get(url), "list") == order[:20]
    assert ok(api.get(url, params={"offset": 1, "limit": 3}), "list") == order[1:4]
    assert ok(api.post(url, data={"offset": "2", "limit": "2"}), "list") == order[2:4]
    assert ok(api.get(url, params={"offset": -5, "limit": 2}), "list") == order[:2]
    assert ok(api.get(url, params={"limit": -1}), "list") == []
    assert ok(api.get(url, params={"offset": len(order) + 10}), "list") == []
    assert ok(api.get(url, params={"offset": 2 ** 70}), "list") == []
    failed(api.get(url, params={"offset": "one"}), 400, "bad request")
    failed(api.get(url, params={"limit": 10_001}), 400, "bad request")


@pytest.mark.parametrize("kind", STORES)
def test_dsys_list_goes_past_10000_records(request, kind, tmp_path_factory):
    """dsys/match's /list failed past the engine's 10,000-result window."""
    url = store_url(request, kind, tmp_path_factory)
    store = open_database(url)
    rng = np.random.default_rng(7)
    try:
        for start in range(0, 10_050, 2_500):
            signatures = rng.integers(-2, 3, (min(2_500, 10_050 - start), 648)).astype(np.int8)
            results = store.add_signatures(
                [{"path": f"bulk/{start + n}", "signature": s} for n, s in enumerate(signatures)])
            assert all(isinstance(r, str) for r in results)
        store.refresh()
        with ServiceProcess(url, ENV) as process, session(READ) as client:
            tail = ok(client.get(process.url + "/list", params={"offset": 10_035, "limit": 20}),
                      "list")
            assert tail == store.paths(10_035, 20) and len(tail) == 15
            assert ok(client.post(process.url + "/list", data={"offset": 10_000, "limit": 5}),
                      "list") == store.paths(10_000, 5)
            assert ok(client.get(process.url + "/count"), "count") == [10_050]
    finally:
        store.drop()


def test_dsys_all_orientations(service, api):
    path = unique("orientation")
    ok(api.post(service.url + "/add", files={"image": upload(PHOTO.read_bytes())},
                data={"filepath": path}), "add")
    service.store.refresh()
    query = turned()

    def found(**data):
        result = ok(api.post(service.url + "/search", files={"image": upload(query)}, data=data),
                    "search")
        return path in [m["filepath"] for m in result]

    assert found()  # IMAGE_MATCH_ALL_ORIENTATIONS: true by default
    assert found(all_orientations="true")
    assert not found(all_orientations="false")
    assert not found(all_orientations="True")  # only the text true, as dsys/match


def test_dsys_errors(service, api, http_server):
    url = service.url
    failed(api.post(url + "/add", files={"image": upload(PHOTO.read_bytes())}), 400, "bad request")
    failed(api.post(url + "/add", data={"filepath": "x.jpg"}), 400, "bad request")
    failed(api.post(url + "/search"), 400, "bad request")
    failed(api.post(url + "/compare", data={"url1": "http://127.0.0.1/x"}), 400, "bad request")
    failed(api.delete(url + "/delete"), 400, "bad request")
    failed(api.get(url + "/nothing/here"), 404, "not found")
    failed(api.get(url + "/add"), 405, "method not allowed")
    failed(api.put(url + "/count"), 405, "method not allowed")
    failed(api.post(url + "/delete", data={"filepath": "x"}), 405, "method not allowed")
    message = failed(api.post(url + "/add", data={"filepath": "x.jpg", "metadata": "{oops"},
                              files={"image": upload(PHOTO.read_bytes())}), 400)
    assert message.startswith("metadata: not valid JSON")
    failed(api.post(url + "/add", data={"filepath": "x.jpg", "metadata": "[1, 2]"},
                    files={"image": upload(PHOTO.read_bytes())}), 400, "must be a JSON object")
    failed(api.post(url + "/search", files={"image": upload(not_an_image(), "notes.txt")}), 415,
           "image 'notes.txt' (300 bytes): not an image")
    cut = PHOTO.read_bytes()[:700]
    message = failed(api.post(url + "/search", files={"image": upload(cut, "cut.jpg")}), 422)
    assert message.startswith("image 'cut.jpg' (700 bytes): ")
    missing = http_server.serve_status("/missing.jpg", 404)
    failed(api.post(url + "/search", data={"url": missing}), 422,
           f"{missing}: HTTP 404 Not Found")
    failed(api.post(url + "/search", data={"url": "http://10.1.2.3/x.jpg"}), 422,
           "refused address 10.1.2.3 (private")
    failed(api.post(url + "/search", data={"url": "file:///etc/passwd"}), 422,
           "unsupported scheme 'file'")
    failed(api.post(url + "/search", data={"url": "/etc/passwd"}), 422, "/etc/passwd")


# --- /v1 -------------------------------------------------------------------------------------------

def test_v1_add_get_list_delete(service, api, http_server):
    v1 = service.url + "/v1"
    path = unique("v1")
    response = api.post(v1 + "/images", files={"image": upload(PHOTO.read_bytes())},
                        data={"path": path, "metadata": '{"owner": "ann"}'})
    assert response.status_code == 201, response.text
    added = response.json()
    assert added == {"id": default_id(path), "path": path, "status": "added"}
    assert response.headers["location"] == f"/v1/images/{added['id']}"
    again = api.post(v1 + "/images", files={"image": upload(PHOTO.read_bytes())},
                     data={"path": path, "refresh": "true"})
    assert (again.status_code, again.json()["status"]) == (201, "replaced")
    problem(api.post(v1 + "/images", files={"image": upload(PHOTO.read_bytes())},
                     data={"path": path, "replace": "false"}), 409, "exists")
    own = api.post(v1 + "/images", json={"url": http_server.serve_bytes("/a.jpg", PHOTO.read_bytes()),
                                          "id": "my-own-id", "metadata": {"n": [1, 2]},
                                          "refresh": True})
    assert own.status_code == 201 and own.json()["id"] == "my-own-id", own.text
    assert own.json()["path"] == http_server.url("/a.jpg")
    unnamed = api.post(v1 + "/images", files={"image": upload(photos()[1].read_bytes())})
    assert unnamed.status_code == 201
    assert len(unnamed.json()["path"]) == 32  # the bytes' hash: the same upload, the same record

    record = api.get(f"{v1}/images/{added['id']}").json()
    assert record["path"] == path and record["metadata"] is None and "signature" not in record
    assert record["timestamp"].endswith("+00:00")
    with_signature = api.get(f"{v1}/images/my-own-id", params={"signature": "true"}).json()
    assert len(with_signature["signature"]) == 648 and with_signature["metadata"] == {"n": [1, 2]}
    problem(api.get(v1 + "/images/no-such-id"), 404, "no record with id 'no-such-id'")

    service.store.refresh()
    seen, cursor = [], None
    while True:
        params = {"limit": 7, **({"cursor": cursor} if cursor else {})}
        page = api.get(v1 + "/images", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert len(body["items"]) <= 7
        seen += [item["id"] for item in body["items"]]
        cursor = body["next"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == service.store.count()
    assert {added["id"], "my-own-id"} <= set(seen)
    problem(api.get(v1 + "/images", params={"limit": 0}), 400, "limit")
    problem(api.get(v1 + "/images", params={"limit": 1001}), 400, "limit")

    assert api.delete(f"{v1}/images/{added['id']}").status_code == 204
    problem(api.delete(f"{v1}/images/{added['id']}"), 404)
    problem(api.get(f"{v1}/images/{added['id']}"), 404)
    assert api.delete(f"{v1}/images/my-own-id").status_code == 204


def test_v1_search(service, api, http_server):
    v1 = service.url + "/v1"
    paths = {}
    for n, photo in enumerate(photos()[:4]):
        paths[photo] = unique(f"search{n}")
        response = api.post(v1 + "/images", files={"image": upload(photo.read_bytes())},
                            data={"path": paths[photo], "metadata": f'{{"n": {n}, "team": "a"}}',
                                  "refresh": "true"})
        assert response.status_code == 201, response.text
    photo = photos()[2]
    response = api.post(v1 + "/search", files={"image": upload(photo.read_bytes())})
    assert response.status_code == 200, response.text
    matches = response.json()["matches"]
    assert matches[0]["path"] == paths[photo] and matches[0]["dist"] < 1e-9
    assert set(matches[0]) == {"id", "path", "dist", "score", "metadata"}
    assert matches[0]["metadata"] == {"n": 2, "team": "a"}
    assert [m["dist"] for m in matches] == sorted(m["dist"] for m in matches)

    by_url = api.post(v1 + "/search", json={"url": http_server.serve_bytes("/q.jpg",
                                                                         photo.read_bytes()),
                                            "top": 1, "cutoff": 0.3})
    assert [m["path"] for m in by_url.json()["matches"]] == [paths[photo]]
    for chosen in ({"filter": {"n": 2}}, {"filter": {"n": [2, 3], "team": "a"}},
                   {"filter": ["n=2"]}):
        found = api.post(v1 + "/search", json={"url": http_server.url("/q.jpg"), **chosen})
        assert [m["path"] for m in found.json()["matches"]] == [paths[photo]], (chosen, found.text)
    assert api.post(v1 + "/search", json={"url": http_server.url("/q.jpg"),
                                          "filter": {"n": 3}}).json()["matches"] == []
    as_form = api.post(v1 + "/search", files={"image": upload(photo.read_bytes())},
                       data={"filter": ["n=2", "team=a"], "top": "5"})
    assert [m["path"] for m in as_form.json()["matches"]] == [paths[photo]]
    oriented = api.post(v1 + "/search", files={"image": upload(turned(photo))},
                        data={"all_orientations": "true"})
    assert oriented.json()["matches"][0]["path"] == paths[photo]
    robust = api.post(v1 + "/search", files={"image": upload(photo.read_bytes())},
                      data={"robust": "true"})
    assert robust.json()["matches"][0]["path"] == paths[photo]

    image = {"image": upload(photo.read_bytes())}
    problem(api.post(v1 + "/search", files=image, data={"top": "0"}), 400, "top")
    problem(api.post(v1 + "/search", files=image, data={"cutoff": "2"}), 400, "cutoff")
    problem(api.post(v1 + "/search", files=image, data={"colour": "blue"}), 400, "colour")
    problem(api.post(v1 + "/search", files=image, data={"corner_crops": "true"}), 409,
            "corner_crops needs a store made with crop windows")
    problem(api.post(v1 + "/search", files=image, data={"url": http_server.url("/q.jpg")}), 400,
            "url: goes in a JSON body")
    problem(api.post(v1 + "/search", json={"top": 3}), 400, "give an image")
    problem(api.post(v1 + "/search", json={"url": http_server.url("/q.jpg"), "top": "3"}), 400,
            "top")
    problem(api.post(v1 + "/search", json={"url": http_server.url("/q.jpg"),
                                           "filter": {"n": {"gt": 1}}}), 400, "filter")
    problem(api.post(v1 + "/search", json={"url": http_server.url("/q.jpg"),
                                           "filter": ["n"]}), 400, "filter")
    problem(api.post(v1 + "/search", data="{not json", headers={"content-type":
                                                                "application/json"}), 400, "JSON")
    problem(api.post(v1 + "/search", json=[1, 2]), 400, "JSON object")
    problem(api.post(v1 + "/search", data=b"x", headers={"content-type": "text/plain"}), 415,
            "Content-Type text/plain")
    problem(api.post(v1 + "/search", files={"image": upload(not_an_image(), "a.txt")}), 415,
            "image 'a.txt'")
    problem(api.post(v1 + "/search", files={"image": upload(PHOTO.read_bytes()[:500], "c.jpg")}),
            422, "image 'c.jpg' (500 bytes)")
    problem(api.post(v1 + "/search", json={"url": http_server.serve_status("/gone.jpg", 410)}),
            422, "HTTP 410 Gone")
    problem(api.post(v1 + "/search", json={"url": http_server.serve_status(
        "/down.jpg", 503, headers={"Retry-After": "9"})}), 502, "HTTP 503")


def test_v1_search_batch(service, api, http_server):
    v1 = service.url + "/v1"
    path = unique("batch")
    api.post(v1 + "/images", files={"image": upload(PHOTO.read_bytes())},
             data={"path": path, "refresh": "true"})
    files = [("image", upload(PHOTO.read_bytes(), "a.jpg")),
             ("image", upload(not_an_image(), "b.txt")),
             ("image", upload(turned(), "c.jpg"))]
    response = api.post(v1 + "/search/batch", files=files, data={"top": "100"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 3
    assert path in [m["path"] for m in results[0]["matches"]]
    assert 1 <= len(api.post(v1 + "/search/batch", files=files[:1], data={"top": "1"}).json()[
        "results"][0]["matches"]) <= 1
    assert results[1]["error"]["status"] == 415 and "b.txt" in results[1]["error"]["detail"]
    assert path not in [m["path"] for m in results[2]["matches"]]
    by_url = api.post(v1 + "/search/batch", json={"urls": [
        http_server.serve_bytes("/d.jpg", PHOTO.read_bytes()), "http://10.9.9.9/e.jpg"]})
    results = by_url.json()["results"]
    assert path in [m["path"] for m in results[0]["matches"]]
    assert results[1]["error"]["status"] == 422 and "10.9.9.9" in results[1]["error"]["detail"]
    oriented = api.post(v1 + "/search/batch", json={"urls": [http_server.serve_bytes(
        "/t.jpg", turned())], "all_orientations": True}).json()["results"]
    assert path in [m["path"] for m in oriented[0]["matches"]]
    problem(api.post(v1 + "/search/batch", json={}), 400, "give images")
    problem(api.post(v1 + "/search/batch", json={"urls": ["http://x/y"] * 65}), 400, "urls")
    problem(api.post(v1 + "/search/batch", data={"urls": "http://x/y"}), 400, "JSON body")


def test_v1_compare(service, api, http_server):
    v1 = service.url + "/v1"
    same = api.post(v1 + "/compare", files={"image1": upload(PHOTO.read_bytes()),
                                            "image2": upload(PHOTO.read_bytes())}).json()
    assert same == {"distance": 0.0, "cutoff": service.store.distance_cutoff, "match": True}
    other = api.post(v1 + "/compare", json={
        "url1": http_server.serve_bytes("/1.jpg", PHOTO.read_bytes()),
        "url2": http_server.serve_bytes("/2.jpg", photos()[0].read_bytes())}).json()
    assert other["distance"] > 0.5 and other["match"] is False
    rotated = {"image1": upload(turned()), "image2": upload(PHOTO.read_bytes())}
    plain = api.post(v1 + "/compare", files=rotated).json()
    oriented = api.post(v1 + "/compare", files=rotated, data={"all_orientations": "true",
                                                              "cutoff": "0.3"}).json()
    assert plain["match"] is False and oriented["match"] is True and oriented["cutoff"] == 0.3
    problem(api.post(v1 + "/compare", files={"image1": upload(PHOTO.read_bytes())}), 400,
            "image2")


def test_v1_duplicates(service, api):
    v1 = service.url + "/v1"
    base = unique("dup")
    copies = [jpeg_bytes(rgb(photos()[5]).resize((300, 200)), quality=q) for q in (90, 60, 40)]
    for n, data in enumerate(copies):
        assert api.post(v1 + "/images", files={"image": upload(data)},
                        data={"path": f"{base}-{n}", "refresh": "true"}).status_code == 201
    response = api.get(v1 + "/duplicates", params={"limit": 1000})
    while response.status_code == 202:
        assert response.json()["status"] == "computing" and response.headers["retry-after"]
        response = api.get(v1 + "/duplicates", params={"limit": 1000})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready" and body["records"] == service.store.count()
    ours = [group for group in body["groups"]
            if any(member["path"].startswith(base) for member in group)]
    assert len(ours) == 1
    assert {f"{base}-{n}" for n in range(3)} <= {member["path"] for member in ours[0]}
    assert ours[0][0]["dist"] == 0.0

    first = api.get(v1 + "/duplicates", params={"limit": 1}).json()
    if first["next"] is not None:
        second = api.get(v1 + "/duplicates", params={"limit": 1, "cursor": first["next"]}).json()
        assert second["groups"] != first["groups"]
        api.post(v1 + "/images", files={"image": upload(copies[0])},
                 data={"path": f"{base}-more", "refresh": "true"})
        api.get(v1 + "/duplicates", params={"limit": 1})  # computes them again
        problem(api.get(v1 + "/duplicates", params={"limit": 1, "cursor": first["next"]}), 409,
                "computed again")
    problem(api.get(v1 + "/duplicates", params={"cursor": "nonsense"}), 400, "cursor")
    problem(api.get(v1 + "/duplicates", params={"limit": 0}), 400, "limit")


def test_v1_stats_and_operations(service, api):
    stats = api.get(service.url + "/v1/stats").json()
    assert stats["store"]["records"] == service.store.count()
    assert stats["store"]["location"] == service.store.location
    assert stats["parameters"]["cutoff"] == service.store.distance_cutoff
    assert stats["service"]["signing_processes"] == 2
    assert requests.get(service.url + "/healthz").json() == {"status": "ok"}
    ready = requests.get(service.url + "/readyz").json()
    assert ready == {"status": "ready", "records": service.store.count()}
    problem(requests.get(service.url + "/metrics"), 401)
    metrics = api.get(service.url + "/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert metric(text, "image_match_http_requests_total", route="/v1/stats", method="GET",
                  status="200") >= 1
    assert metric(text, "image_match_signing_seconds_count") >= 1
    assert metric(text, "image_match_store_seconds_count", operation="search") >= 1
    assert metric(text, "image_match_store_records") == service.store.count()
    schema = requests.get(service.url + "/openapi.json").json()
    assert {"/add", "/search", "/v1/images", "/v1/search", "/v1/duplicates",
            "/v1/jobs"} <= set(schema["paths"])
    access = service.access_log()
    assert access and {"request_id", "method", "path", "route", "status", "ms"} <= set(access[-1])
    response = api.get(service.url + "/healthz", headers={"X-Request-ID": "trace-me-1"})
    assert response.headers["x-request-id"] == "trace-me-1"


# --- keys and caps ---------------------------------------------------------------------------------

def test_keys(service):
    url = service.url
    image = {"image": upload(PHOTO.read_bytes())}
    anonymous = requests.post(url + "/v1/search", files=image)
    problem(anonymous, 401, "API key")
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    problem(requests.post(url + "/v1/search", files=image,
                          headers={"Authorization": "Bearer wrong"}), 401, "not one of")
    failed(requests.post(url + "/search", files=image), 401, "API key")
    failed(requests.get(url + "/count"), 401)
    with session(READ) as reader:
        assert reader.post(url + "/v1/search", files=image).status_code == 200
        assert reader.get(url + "/v1/images").status_code == 200
        assert reader.get(url + "/count").status_code == 200
        problem(reader.post(url + "/v1/images", files=image), 403, "may only read")
        failed(reader.post(url + "/add", files=image, data={"filepath": "x"}), 403)
        failed(reader.delete(url + "/delete", data={"filepath": "x"}), 403)
        problem(reader.delete(url + "/v1/images/x"), 403)
        problem(reader.post(url + "/v1/jobs", json={"urls": ["http://a/b.jpg"]}), 403)
    assert requests.get(url + "/count", headers={"X-API-Key": READ}).status_code == 200
    host = url.split("//", 1)[1]
    assert requests.get(f"http://{READ}:@{host}/count").status_code == 200  # Basic, in the URL
    assert requests.get(url + "/healthz").status_code == 200
    assert requests.get(url + "/ping").status_code == 200


def test_upload_cap(service, api):
    big = b"\xff\xd8\xff" + bytes(MAX_UPLOAD + 10)
    problem(api.post(service.url + "/v1/search", files={"image": upload(big)}), 413,
            f"larger than {MAX_UPLOAD} bytes")
    failed(api.post(service.url + "/search", files={"image": upload(big)}), 413,
           "IMAGE_MATCH_MAX_UPLOAD_BYTES")

    def chunks():  # no Content-Length: counted as it arrives
        yield (b'--zz\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
               b"Content-Type: image/jpeg\r\n\r\n\xff\xd8\xff")
        for _ in range(40):
            yield b"x" * 50_000

    response = api.post(service.url + "/v1/search", data=chunks(),
                        headers={"content-type": "multipart/form-data; boundary=zz"})
    problem(response, 413)
    # Still serving.
    assert api.post(service.url + "/v1/search",
                    files={"image": upload(PHOTO.read_bytes())}).status_code == 200


def test_pixel_bomb(service, api):
    buffer = io.BytesIO()
    Image.new("L", (20_000, 20_000)).save(buffer, "PNG")  # 400 million pixels in 400 kB
    bomb = buffer.getvalue()
    assert len(bomb) < MAX_UPLOAD
    problem(api.post(service.url + "/v1/search", files={"image": upload(bomb, "bomb.png")}), 422,
            "too many pixels")


def test_concurrent_writers(service, api):
    """Sixteen clients adding at once through both APIs, some to the same paths: every request
    succeeds, and each path ends with exactly one record."""
    base = unique("concurrent")
    images = [jpeg_bytes(rgb(photo).resize((200, 133)), quality=85) for photo in photos()[:8]]
    paths = [f"{base}/{n % 12}" for n in range(48)]

    def add(n):
        with session() as client:
            if n % 2:
                return client.post(service.url + "/add", files={"image": upload(images[n % 8])},
                                   data={"filepath": paths[n]}).status_code
            return client.post(service.url + "/v1/images", files={"image": upload(images[n % 8])},
                               data={"path": paths[n]}).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(add, range(len(paths))))
    assert set(statuses) <= {200, 201} and statuses.count(200) == 24, statuses
    service.store.refresh()
    for path in set(paths):
        assert service.store.ids_with_path(path) == [default_id(path)], path


@pytest.mark.engine
def test_an_engine_that_goes_away(opensearch_url):
    """Through a relay to the engine that is then cut: 503 with Retry-After, the engine named;
    /readyz says unavailable; the process keeps serving."""
    address, _, _, _ = _parse_url(opensearch_url + "/x")
    relay = _Relay(int(address.rsplit(":", 1)[1]))
    index = f"test-serve-gone-{uuid.uuid4().hex[:8]}"
    try:
        with ServiceProcess(f"http://127.0.0.1:{relay.port}/{index}") as process:
            assert requests.get(process.url + "/readyz").status_code == 200
            relay.cut()
            response = requests.post(process.url + "/v1/search",
                                     files={"image": upload(PHOTO.read_bytes())})
            detail = problem(response, 503, f"127.0.0.1:{relay.port}/{index}")
            assert "reach the engine" in detail and response.headers["retry-after"] == "5"
            failed(requests.get(process.url + "/count"), 503, "cannot reach the engine")
            ready = requests.get(process.url + "/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
            assert requests.get(process.url + "/healthz").status_code == 200
    finally:
        relay.cut()
        open_database(f"{opensearch_url}/{index}").drop()
