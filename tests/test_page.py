"""The moderation page in a real browser: Debian's Chromium driven by Playwright for Python,
against a real ``image-match serve`` process on a loopback port (an SQLite store whose pictures
lie under ``IMAGE_MATCH_MEDIA_ROOTS``, and the test HTTP server as a URL source).

Chromium is ``/usr/bin/chromium`` (``apt-get install chromium``); browsers are never downloaded
(no ``playwright install``). Without Chromium or Playwright these tests are skipped, unless
``IMAGE_MATCH_TEST_REQUIRE_BROWSER`` is set (``.ci/run`` sets it), when they fail.
"""

import json
import os
import re
import shutil
import uuid

import pytest
import requests
from PIL import Image

from image_match.drivers import open_database

from conftest import PHOTO, jpeg_bytes, photos, png_bytes, rgb
from service_process import ServiceProcess

CHROMIUM = "/usr/bin/chromium"
KEY = "page-write-key"


def _browser_or_skip():
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "Playwright for Python is not installed (pip install playwright)"
    if reason is None and not os.access(CHROMIUM, os.X_OK):
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if reason is not None:
        if os.environ.get("IMAGE_MATCH_TEST_REQUIRE_BROWSER"):
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_playwright


@pytest.fixture(scope="module")
def browser():
    sync_playwright = _browser_or_skip()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """The pictures the store holds (under the media root), and copies of them to search with
    (elsewhere)."""
    root = tmp_path_factory.mktemp("media")
    queries = tmp_path_factory.mktemp("queries")
    return root, queries


def shrunk(path, scale=0.6, quality=80):
    image = rgb(path)
    return jpeg_bytes(image.resize((round(image.width * scale), round(image.height * scale)),
                                   Image.Resampling.LANCZOS), quality=quality)


def start(database, media_root, **settings):
    """``image-match serve`` with these IMAGE_MATCH_* settings (``keys="..."``)."""
    env = {"IMAGE_MATCH_MEDIA_ROOTS": str(media_root), "IMAGE_MATCH_FETCH_ALLOWLIST": "127.0.0.1",
           "IMAGE_MATCH_SIGNING_PROCESSES": "1"}
    env.update((f"IMAGE_MATCH_{name.upper()}", str(value)) for name, value in settings.items())
    return ServiceProcess(database, env)


@pytest.fixture(scope="module")
def service(tmp_path_factory, media):
    root, _ = media
    database = f"sqlite:///{tmp_path_factory.mktemp('page') / 'images.db'}"
    with start(database, root) as process:
        process.database = database
        process.root = root
        yield process


@pytest.fixture
def page(browser, service):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    opened.set_default_timeout(30_000)
    # A picture that cannot be shown is answered 403, 404 or 422, which Chromium logs as a
    # failed resource: expected. An error of the page's scripts is not.
    script_errors = []
    opened.on("pageerror", lambda error: script_errors.append(error))
    yield opened
    context.close()
    assert not script_errors


def store(service, path, name=None, data=None):
    """Put a picture under the media root and add it to the store: its record id."""
    target = service.root / (name or os.path.basename(path))
    if data is None:
        shutil.copy(path, target)
    else:
        target.write_bytes(data)
    return open_database(service.database).add_image(str(target), refresh_after=True), target


def matches(page):
    return page.locator("#matches").get_by_role("listitem")


def search_upload(page, service, data, name="query.jpg"):
    page.goto(service.url + "/")
    page.get_by_label("Image", exact=True).set_input_files(
        {"name": name, "mimeType": "image/jpeg", "buffer": data})
    page.get_by_role("button", name="Search").click()
    page.locator("#summary").filter(has_text=re.compile("found")).wait_for()


def test_search_by_upload_finds_the_stored_copy_side_by_side(page, service, media):
    record_id, target = store(service, photos()[0])
    search_upload(page, service, shrunk(photos()[0]))
    found = matches(page)
    assert found.count() >= 1
    first = found.first
    assert first.locator(".path").inner_text() == str(target)
    distance = first.locator(".distance").inner_text()
    assert re.fullmatch(r"0\.\d\d", distance) and float(distance) < 0.2
    assert first.locator(".verdict").inner_text().startswith("duplicate")
    # The stored picture, served small by the service, beside the query's own.
    picture = first.locator("img")
    picture.wait_for()
    assert picture.evaluate("img => img.complete && img.naturalWidth") > 0
    assert picture.get_attribute("src").startswith("blob:")
    assert page.locator("#query-picture img").evaluate("img => img.naturalWidth") > 0


def test_search_by_url(page, service, http_server):
    record_id, target = store(service, photos()[1])
    url = http_server.serve_bytes("/copy.jpg", shrunk(photos()[1], 0.5))
    page.goto(service.url + "/")
    page.get_by_label("Image URL").fill(url)
    page.get_by_role("button", name="Search").click()
    first = matches(page).first
    first.wait_for()
    assert first.locator(".path").inner_text() == str(target)
    # The query's picture came through the service (fetching.py), not from the browser.
    page.locator("#query-picture img").wait_for()
    assert page.locator("#query-picture img").get_attribute("src").startswith("blob:")
    assert http_server.hits("/copy.jpg") >= 2  # the search, and the thumbnail


def test_add_then_search(page, service):
    data = shrunk(photos()[2], 0.9, 92)
    page.goto(service.url + "/")
    page.get_by_label("Image", exact=True).set_input_files(
        {"name": "upload.jpg", "mimeType": "image/jpeg", "buffer": data})
    page.get_by_label("Metadata").fill("source=moderation\nscore=3\nnote=\"3\"")
    page.get_by_role("button", name="Add").click()
    status = page.get_by_role("status").filter(has_text="Added")
    status.wait_for()
    record_id = re.search(r"\(id (\w+)\)", status.inner_text()).group(1)
    stored = requests.get(f"{service.url}/v1/images/{record_id}").json()
    assert stored["metadata"] == {"source": "moderation", "score": 3, "note": "3"}
    page.get_by_role("button", name="Search").click()
    first = matches(page).first
    first.wait_for()
    assert first.locator(".distance").inner_text() == "0.00"
    assert first.locator(".metadata").inner_text() == "source=moderation, score=3, note=3"
    # An uploaded picture has no file to show: its place says so.
    unavailable = first.locator("figure .unavailable")
    unavailable.wait_for()
    assert "keeps no copy of an uploaded picture" in unavailable.inner_text()


def test_errors_are_one_line(page, service):
    page.goto(service.url + "/")
    page.get_by_role("button", name="Search").click()
    alert = page.get_by_role("alert")
    assert "choose an image file" in alert.inner_text()
    page.get_by_label("Image", exact=True).set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a picture at all\n" * 20})
    page.get_by_role("button", name="Search").click()
    page.get_by_role("alert").filter(has_text="not an image").wait_for()
    text = alert.inner_text()
    assert "\n" not in text and "notes.txt" in text
    page.get_by_label("Metadata").fill("just words")
    page.get_by_role("button", name="Add").click()
    page.get_by_role("alert").filter(has_text="key=value").wait_for()


def test_keyboard_only_search(page, service, http_server):
    record_id, target = store(service, photos()[3])
    url = http_server.serve_bytes("/keyboard.jpg", shrunk(photos()[3], 0.7))
    page.goto(service.url + "/")
    for _ in range(12):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.id") == "url":
            break
    assert page.evaluate("document.activeElement.id") == "url"
    page.keyboard.type(url)
    page.keyboard.press("Enter")
    first = matches(page).first
    first.wait_for()
    assert first.locator(".path").inner_text() == str(target)


def test_a_picture_outside_the_media_roots_is_not_shown(page, service, tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg_bytes(rgb(photos()[4])))
    open_database(service.database).add_image(str(outside), refresh_after=True)
    search_upload(page, service, shrunk(photos()[4]))
    figure = matches(page).first.locator("figure .unavailable")
    figure.wait_for()
    assert "not under IMAGE_MATCH_MEDIA_ROOTS" in figure.inner_text()
    response = requests.get(f"{service.url}/v1/pictures/"
                            f"{open_database(service.database).ids_with_path(str(outside))[0]}")
    assert response.status_code == 403


# --- review ----------------------------------------------------------------------------------------

def planted_group(service, photo, copies=1):
    """A stored photo and ``copies`` smaller copies of it: their record ids."""
    ids = [store(service, photo)[0]]
    for n in range(copies):
        ids.append(store(service, photo, f"copy{n}-{os.path.basename(photo)}",
                         shrunk(photo, 0.7 - 0.1 * n))[0])
    return ids


def group_with(page, record_id):
    """The review page's group holding a record (found by its picture's path)."""
    path = open_database_path(page, record_id)
    return page.locator(".group").filter(has=page.locator(".path", has_text=path))


def open_database_path(page, record_id):
    return page.evaluate(f"fetch('/v1/images/{record_id}').then(r => r.json()).then(r => r.path)")


def review(page, service, query=""):
    page.goto(f"{service.url}/review{query}")
    page.locator("#status").filter(has_text=re.compile("group|No duplicates")).wait_for()


def test_review_shows_a_planted_group_and_deletes_with_confirmation(page, service):
    ids = planted_group(service, photos()[5], copies=2)
    review(page, service)
    group = group_with(page, ids[1])
    assert group.get_by_role("listitem").count() == 3
    kept = group.locator(".member.kept")
    assert kept.count() == 1
    others = group.locator(".member:not(.kept)")
    for n in range(2):
        assert re.fullmatch(r"0\.\d\d", others.nth(n).locator(".distance").inner_text())
    # Each member with its picture, size and date.
    size = group.locator(".member .size").first
    from playwright.sync_api import expect

    expect(group.locator(".member .size").filter(has_text="…")).to_have_count(0)
    assert re.fullmatch(r"\d+ × \d+ px, \d+ KB", size.inner_text())
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC",
                        group.locator(".member .date").first.inner_text())

    victim = others.first
    victim_path = victim.locator(".path").inner_text()
    victim_id = open_database(service.database).ids_with_path(victim_path)[0]
    # Dismissed: nothing deleted.
    page.once("dialog", lambda dialog: dialog.dismiss())
    victim.get_by_role("button", name="Delete").click()
    assert requests.get(f"{service.url}/v1/images/{victim_id}").status_code == 200
    # Confirmed: the record is gone (through /v1), the group keeps its other two.
    page.once("dialog", lambda dialog: dialog.accept())
    victim.get_by_role("button", name="Delete").click()
    page.get_by_role("status").filter(has_text="Deleted").wait_for()
    assert requests.get(f"{service.url}/v1/images/{victim_id}").status_code == 404
    assert group.get_by_role("listitem").count() == 2
    review(page, service)
    assert group_with(page, ids[1]).get_by_role("listitem").count() == 2


def test_keep_measures_the_others_against_the_one_kept(page, service):
    ids = planted_group(service, photos()[6], copies=2)
    review(page, service)
    group = group_with(page, ids[0])
    other = group.locator(".member:not(.kept)").last
    path = other.locator(".path").inner_text()
    other.get_by_role("button", name="Keep").click()
    page.get_by_role("status").filter(has_text="Keeping").wait_for()
    kept = group.locator(".member.kept")
    assert kept.locator(".path").inner_text() == path
    assert kept.get_by_role("button", name="Keep").is_disabled()
    assert group.locator(".member:not(.kept) .distance").count() == 2


def test_not_duplicates_survives_a_reload_and_a_restart(browser, tmp_path, media):
    root = tmp_path / "media"
    root.mkdir()
    database = f"sqlite:///{tmp_path / 'images.db'}"
    with start(database, root) as service:
        service.database, service.root = database, root
        ids = planted_group(service, photos()[7])
        other = planted_group(service, photos()[8])
        context = browser.new_context()
        page = context.new_page()
        review(page, service)
        assert page.locator(".group").count() == 2
        group_with(page, ids[0]).get_by_role("button", name="Not duplicates").click()
        page.get_by_role("status").filter(has_text="not duplicates").wait_for()
        assert page.locator(".group").count() == 1
        review(page, service)  # reload
        assert page.locator(".group").count() == 1
        assert group_with(page, other[0]).count() == 1
        context.close()
    with start(database, root) as service:  # restart
        page = browser.new_page()
        review(page, service)
        assert page.locator(".group").count() == 1
        assert sorted(page.locator(".group .path").all_inner_texts()) == sorted(
            open_database(database).get(i)["path"] for i in other)
        answer = requests.get(service.url + "/v1/duplicates?all_orientations=true").json()
        assert [sorted(m["id"] for m in g) for g in answer["groups"]] == [sorted(other)]
        page.close()
    assert open_database(database).not_duplicates()[0]["ids"] == sorted(ids)


def test_groups_are_paged_largest_first(browser, tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    database = f"sqlite:///{tmp_path / 'images.db'}"
    with start(database, root) as service:
        service.database, service.root = database, root
        planted_group(service, photos()[9], copies=2)
        for photo in photos()[10:13]:
            planted_group(service, photo)
        page = browser.new_page()
        review(page, service, "?groups=2")
        assert page.locator("#status").inner_text().startswith("4 groups")
        assert page.locator("#page-number").inner_text() == "page 1 of 2"
        sizes = [page.locator(".group").nth(n).get_by_role("listitem").count() for n in range(2)]
        assert sizes == [3, 2]
        page.get_by_role("button", name="Next").click()
        page.locator("#page-number").filter(has_text="page 2 of 2").wait_for()
        assert page.locator(".group").count() == 2
        assert page.get_by_role("button", name="Next").is_disabled()
        page.get_by_role("button", name="Previous").click()
        page.locator("#page-number").filter(has_text="page 1 of 2").wait_for()
        # A decision makes the groups be found again: the pages follow the new ones.
        page.locator(".group").first.get_by_role("button", name="Not duplicates").click()
        page.get_by_role("status").filter(has_text="not duplicates").wait_for()
        page.get_by_role("button", name="Next").click()
        page.locator("#page-number").filter(has_text="page 2 of 2").wait_for()
        page.get_by_role("button", name="Previous").click()
        page.locator("#status").filter(has_text="3 groups").wait_for()
        page.get_by_role("button", name="Next").click()
        page.locator("#page-number").filter(has_text="page 2 of 2").wait_for()
        assert page.locator(".group").count() == 1
        assert not page.get_by_role("alert").inner_text()
        page.close()


def test_with_keys_the_page_asks_for_one(browser, tmp_path):
    root = tmp_path / "media"
    root.mkdir()
    database = f"sqlite:///{tmp_path / 'images.db'}"
    with start(database, root, api_keys=f"{KEY},reader:read", max_upload_bytes=400_000) as service:
        service.database, service.root = database, root
        record_id, target = store(service, photos()[13])
        page = browser.new_page()
        page.goto(service.url + "/")
        page.get_by_label("Image", exact=True).set_input_files(
            {"name": "q.jpg", "mimeType": "image/jpeg", "buffer": shrunk(photos()[13])})
        page.get_by_role("button", name="Search").click()
        page.get_by_role("alert").filter(has_text="API key").wait_for()
        page.get_by_label("API key").fill("reader")
        page.get_by_label("API key").press("Tab")
        page.get_by_role("button", name="Search").click()
        first = matches(page).first
        first.wait_for()
        assert first.locator(".path").inner_text() == str(target)
        first.locator("img").wait_for()
        # A read key may not add.
        page.get_by_role("button", name="Add").click()
        page.get_by_role("alert").filter(has_text="only read").wait_for()
        # Too large: one line, even though the service answers before the upload has ended.
        large = png_bytes(rgb(PHOTO))
        assert len(large) > 400_000
        page.get_by_label("Image", exact=True).set_input_files(
            {"name": "large.png", "mimeType": "image/png", "buffer": large})
        page.get_by_role("button", name="Search").click()
        page.get_by_role("alert").filter(has_text="larger than 400000 bytes").wait_for()
        # The key is kept for the tab's session: the review page has it too.
        page.goto(service.url + "/review")
        assert page.get_by_label("API key").input_value() == "reader"
        page.close()


def test_the_page_loads_nothing_from_elsewhere(service):
    for path in ("/", "/review"):
        response = requests.get(service.url + path)
        assert response.status_code == 200
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert not re.search(r"""(src|href)=["']?(https?:)?//""", response.text)
    for asset in ("common.js", "check.js", "review.js"):
        assert requests.get(f"{service.url}/static/{asset}").status_code == 200
    style = requests.get(f"{service.url}/static/page.css").text
    assert "url(" not in style and "@import" not in style


@pytest.mark.engine
def test_an_engine_that_goes_away_is_one_line_on_the_page(browser, opensearch_url, tmp_path):
    from image_match.drivers.elasticsearch import _parse_url
    from test_elasticsearch_driver import _Relay

    address, _, _, _ = _parse_url(opensearch_url + "/x")
    relay = _Relay(int(address.rsplit(":", 1)[1]))
    index = f"test-page-gone-{uuid.uuid4().hex[:8]}"
    try:
        with start(f"http://127.0.0.1:{relay.port}/{index}", tmp_path) as service:
            page = browser.new_page()
            page.goto(service.url + "/")
            relay.cut()
            page.get_by_label("Image", exact=True).set_input_files(
                {"name": "q.jpg", "mimeType": "image/jpeg", "buffer": shrunk(photos()[0])})
            page.get_by_role("button", name="Search").click()
            alert = page.get_by_role("alert").filter(has_text="cannot reach the engine")
            alert.wait_for()
            assert "\n" not in alert.inner_text()
            page.goto(service.url + "/review")
            page.get_by_role("alert").filter(has_text="cannot reach the engine").wait_for()
            page.close()
    finally:
        relay.cut()
        open_database(f"{opensearch_url}/{index}").drop()


def test_keyboard_only_review(page, service):
    ids = planted_group(service, photos()[14], copies=2)
    review(page, service)
    group = group_with(page, ids[0])
    path = group.locator(".member:not(.kept) .path").first.inner_text()

    def tab_to(locator):
        for _ in range(200):
            page.keyboard.press("Tab")
            if locator.evaluate("element => element === document.activeElement"):
                return
        raise AssertionError(f"Tab never reached {locator}")

    delete = group.locator(".member", has=page.locator(".path", has_text=path)) \
        .get_by_role("button", name="Delete")
    tab_to(delete)
    page.once("dialog", lambda dialog: dialog.accept())
    page.keyboard.press("Enter")
    page.get_by_role("status").filter(has_text="Deleted").wait_for()
    assert open_database(service.database).ids_with_path(path) == []
    tab_to(group.get_by_role("button", name="Not duplicates"))
    page.keyboard.press("Enter")
    page.get_by_role("status").filter(has_text="not duplicates").wait_for()
    assert group.count() == 0
