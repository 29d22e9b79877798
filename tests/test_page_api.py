"""The routes only the moderation page needs, over HTTP against a real ``image-match serve``
process for every store (SQLite, OpenSearch 2.19, Elasticsearch 7.17): pictures (local files
only under IMAGE_MATCH_MEDIA_ROOTS, URLs only through fetching), "not duplicates" remembered by
the store and honoured by /v1/duplicates, distances to the copy kept; and ``pictures``' own
rules (roots, links, relative paths, thumbnails, the cache) without a server.
"""

import io
import json
import os
import uuid

import pytest
import requests
from PIL import Image

from image_match.drivers import open_database
from image_match.errors import CorruptImageError, ImageLoadError
from image_match.server import pictures
from image_match.server.pictures import NotShown, Thumbnail, make_thumbnail, under_roots

from conftest import PHOTO, jpeg_bytes, photos, png_bytes, rgb
from service_process import ServiceProcess

STORES = [
    "sqlite",
    pytest.param("opensearch", marks=pytest.mark.engine),
    pytest.param("elasticsearch", marks=pytest.mark.engine),
]
WRITE, READ = "page-api-write", "page-api-read"


def bearer(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module", params=STORES)
def served(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'images.db'}"
    else:
        url = f"{request.getfixturevalue(request.param + '_url')}/test-page-{uuid.uuid4().hex[:12]}"
    db = open_database(url)
    # Two groups: a photo and its half-size copy, twice; and a photo alone.
    ids = []
    for number, photo in enumerate(photos()[:2]):
        image = rgb(photo)
        pair = []
        for name, data in ((f"{number}.jpg", jpeg_bytes(image)),
                           (f"{number}-small.jpg", jpeg_bytes(image.resize(
                               (image.width // 2, image.height // 2)), quality=80))):
            (root / name).write_bytes(data)
            pair.append(db.add_image(str(root / name), refresh_after=True))
        ids.append(pair)
    env = {"IMAGE_MATCH_API_KEYS": f"{WRITE},{READ}:read", "IMAGE_MATCH_MEDIA_ROOTS": str(root),
           "IMAGE_MATCH_FETCH_ALLOWLIST": "127.0.0.1", "IMAGE_MATCH_SIGNING_PROCESSES": "1"}
    with ServiceProcess(url, env) as process:
        process.db, process.ids, process.root = db, ids, root
        yield process
    db.drop()


def group_ids(served):
    answer = requests.get(served.url + "/v1/duplicates?all_orientations=true",
                          headers=bearer(READ)).json()
    return sorted(sorted(member["id"] for member in group) for group in answer["groups"])


def test_pictures_of_records_and_urls(served, http_server):
    record_id = served.ids[0][0]
    response = requests.get(f"{served.url}/v1/pictures/{record_id}", headers=bearer(READ))
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    original = rgb(photos()[0])
    assert (int(response.headers["x-image-width"]), int(response.headers["x-image-height"])) == \
        original.size
    with Image.open(io.BytesIO(response.content)) as thumbnail:
        assert max(thumbnail.size) == pictures.SIDE
    assert requests.get(f"{served.url}/v1/pictures/{record_id}").status_code == 401
    missing = requests.get(f"{served.url}/v1/pictures/nope", headers=bearer(READ))
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]

    url = http_server.serve_bytes("/p.png", png_bytes(rgb(photos()[2])))
    fetched = requests.get(f"{served.url}/v1/pictures", params={"url": url}, headers=bearer(READ))
    assert fetched.status_code == 200 and fetched.headers["x-image-bytes"] == str(
        len(png_bytes(rgb(photos()[2]))))
    # Cached: the second look does not fetch again.
    requests.get(f"{served.url}/v1/pictures", params={"url": url}, headers=bearer(READ))
    assert http_server.hits("/p.png") == 1
    bad = requests.get(f"{served.url}/v1/pictures", params={"url": "file:///etc/passwd"},
                       headers=bearer(READ))
    assert bad.status_code == 400


def test_pictures_outside_the_roots_or_unreadable(served, tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg_bytes(rgb(photos()[3])))
    escaping = served.root / f"link-{uuid.uuid4().hex[:6]}.jpg"
    os.symlink(outside, escaping)
    broken = served.root / f"broken-{uuid.uuid4().hex[:6]}.jpg"
    broken.write_bytes(jpeg_bytes(rgb(photos()[3])))
    records = {name: served.db.add_image(str(path), refresh_after=True)
               for name, path in (("outside", outside), ("escaping", escaping),
                                  ("broken", broken))}
    broken.write_bytes(b"this is not a picture any more")
    try:
        for name, status, reason in (("outside", 403, "not under IMAGE_MATCH_MEDIA_ROOTS"),
                                     ("escaping", 403, "not under IMAGE_MATCH_MEDIA_ROOTS"),
                                     ("broken", 415, "not an image")):
            response = requests.get(f"{served.url}/v1/pictures/{records[name]}",
                                    headers=bearer(READ))
            assert response.status_code == status, (name, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert reason in response.json()["detail"]
    finally:
        for record_id in records.values():
            served.db.delete(record_id)


def test_not_duplicates_is_remembered_and_honoured(served):
    before = group_ids(served)
    assert before == sorted(sorted(pair) for pair in served.ids)
    first = served.ids[0]
    url = served.url + "/v1/duplicates/not-duplicates"
    assert requests.post(url, json={"ids": first}, headers=bearer(READ)).status_code == 403
    for ids, reason in ((first[:1], "at least 2"), ([first[0]] * 2, "the ids must differ"),
                        (["\ud800", first[0]], "valid string")):
        refused = requests.post(url, data=json.dumps({"ids": ids}), headers={
            **bearer(WRITE), "Content-Type": "application/json"})
        assert refused.status_code == 400 and reason in refused.json()["detail"], refused.text
    marked = requests.post(url, json={"ids": first}, headers=bearer(WRITE))
    assert marked.status_code == 201 and marked.json() == {"pairs": 1}
    assert group_ids(served) == [sorted(served.ids[1])]
    pairs = requests.get(url, headers=bearer(READ)).json()["pairs"]
    assert [pair["ids"] for pair in pairs] == [sorted(first)]
    # In the store itself: another handle sees it.
    assert [pair["ids"] for pair in open_database(served.database).not_duplicates()] == \
        [sorted(first)]


def test_distances_to_the_copy_kept(served):
    big, small = served.ids[1]
    answer = requests.post(served.url + "/v1/duplicates/distances", headers=bearer(READ),
                           json={"kept": small, "ids": [big, small, "gone"]})
    assert answer.status_code == 200
    distances = answer.json()["distances"]
    assert set(distances) == {big, small} and distances[small] == 0.0
    assert 0 < distances[big] < 0.2
    missing = requests.post(served.url + "/v1/duplicates/distances", headers=bearer(READ),
                            json={"kept": "gone", "ids": [big]})
    assert missing.status_code == 404


# --- pictures, without a server ----------------------------------------------------------------

def test_under_roots(tmp_path):
    root, elsewhere = tmp_path / "root", tmp_path / "elsewhere"
    (root / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (root / "sub" / "a.jpg").write_bytes(b"x")
    (elsewhere / "b.jpg").write_bytes(b"x")
    os.symlink(elsewhere / "b.jpg", root / "link.jpg")
    assert under_roots(str(root / "sub" / "a.jpg"), [str(root)]) == str(root / "sub" / "a.jpg")
    assert under_roots("sub/a.jpg", [str(elsewhere), str(root)]) == str(root / "sub" / "a.jpg")
    for path, reason in ((str(elsewhere / "b.jpg"), "not under"),
                         (str(root / "link.jpg"), "not under"),
                         (str(root / ".." / "elsewhere" / "b.jpg"), "not under"),
                         ("../elsewhere/b.jpg", "no such file under"),
                         ("0123abcd", "keeps no copy of an uploaded picture")):
        with pytest.raises(NotShown, match=reason):
            under_roots(path, [str(root)])
    with pytest.raises(NotShown, match="none set"):
        under_roots(str(root / "sub" / "a.jpg"), [])


def test_thumbnails(monkeypatch):
    photo = rgb(PHOTO)  # 640 x 427
    turned = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees
    photo.save(turned, "JPEG", exif=exif)
    made = make_thumbnail(turned.getvalue())
    assert (made.width, made.height) == (photo.height, photo.width)
    with Image.open(io.BytesIO(made.jpeg)) as thumbnail:
        assert thumbnail.height == pictures.SIDE and thumbnail.width < pictures.SIDE
    clear = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    with Image.open(io.BytesIO(make_thumbnail(png_bytes(clear)).jpeg)) as shown:
        assert shown.getpixel((5, 5)) == (255, 255, 255)  # transparent on white, not black
    with pytest.raises(CorruptImageError):
        make_thumbnail(jpeg_bytes(photo)[:200])
    monkeypatch.setenv("IMAGE_MATCH_MAX_IMAGE_PIXELS", "1000")
    with pytest.raises(ImageLoadError, match="more than IMAGE_MATCH_MAX_IMAGE_PIXELS"):
        make_thumbnail(jpeg_bytes(photo))


def test_the_cache_keeps_the_most_recent_within_its_bytes():
    shown = pictures.Pictures(service=None, roots=(), cache_bytes=25)
    for key in "abc":
        shown._put(key, Thumbnail(b"x" * 10, 1, 1, 10))
    assert shown._get("a") is None and shown._get("b") is not None
    shown._put("d", Thumbnail(b"x" * 10, 1, 1, 10))  # "c" was used least recently
    assert [key for key in "abcd" if shown._get(key)] == ["b", "d"]
    shown._put("huge", Thumbnail(b"x" * 26, 1, 1, 26))
    assert shown._get("huge") is None
