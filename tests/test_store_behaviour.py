"""One behaviour suite for every store: SQLite, and real OpenSearch and Elasticsearch nodes.

Each test gets a new, empty store from ``open_database``; the engine nodes are started once per
session (tests/conftest.py). Records are added with ``refresh_after=True`` so that the engines
make them searchable before the test searches.
"""

import io
import uuid

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from image_match.drivers import open_database
from image_match.errors import DatabaseError, ImageLoadError, InvalidParameterError, RecordNotFoundError
from image_match.goldberg import ImageSignature
from image_match.records import default_id

from conftest import PHOTO, central_crop, corner_crop, photos, rgb

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
    return f"{base}/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(store_url):
    db = open_database(store_url)
    yield db
    db.drop()


@pytest.fixture
def filled(store):
    ids = store.add_images([str(p) for p in photos()], workers=1, refresh_after=True)
    assert all(isinstance(i, str) for i in ids), ids
    return store


def encoded(image, fmt="JPEG", **options):
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, fmt, **options)
    return buffer.getvalue()


def copies(path):
    """Transformed copies of a photo that must still be found."""
    colour = rgb(path)
    w, h = colour.size
    marked = colour.copy()
    ImageDraw.Draw(marked).text((w // 20, h - h // 8), "(c) someone else 2026", fill="white")
    return {
        "resized": encoded(colour.resize((w // 2, h // 2), Image.LANCZOS)),
        "recompressed": encoded(colour, quality=30),
        "cropped": encoded(colour.crop((w // 40, h // 40, w - w // 40, h - h // 40))),
        "watermarked": encoded(marked),
        "png": encoded(colour, "PNG"),
    }


def paths_of(results):
    return [match["path"] for match in results]


# --- adding and searching --------------------------------------------------------------------

def test_round_trip_finds_each_photo_first_and_exactly(filled):
    for path in photos():
        results = filled.search_image(str(path))
        assert results[0]["path"] == str(path)
        assert results[0]["dist"] < 1e-9
        assert results[0]["id"] == default_id(str(path))
        assert set(results[0]) >= {"id", "path", "dist", "score", "metadata"}
        assert [r["dist"] for r in results] == sorted(r["dist"] for r in results)
        assert len({r["id"] for r in results}) == len(results)


def test_transformed_copies_are_found_first(filled):
    for path in photos()[:6]:
        for name, data in copies(path).items():
            results = filled.search_image(data, bytestream=True)
            assert results and results[0]["path"] == str(path), (path.name, name, results[:2])
            assert results[0]["dist"] < filled.distance_cutoff


def test_unrelated_image_finds_nothing(filled, tmp_path):
    noise = Image.fromarray(np.random.default_rng(3).integers(0, 256, (300, 400, 3), np.uint8))
    assert filled.search_image(encoded(noise)) == []
    blank = encoded(Image.new("RGB", (300, 200), "white"))
    assert filled.search_image(blank) == []


def test_all_orientations_finds_flipped_and_rotated_copies(filled):
    photo = rgb(PHOTO)
    for operation in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM,
                      Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                      Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE):
        data = encoded(photo.transpose(operation), quality=92)
        oriented = filled.search_image(data, all_orientations=True)
        assert oriented and oriented[0]["path"] == str(PHOTO), operation
        # A new store's search finds the mirror image by default, not the other orientations.
        found = str(PHOTO) in paths_of(filled.search_image(data))
        assert found == (operation == Image.Transpose.FLIP_LEFT_RIGHT), operation
        assert str(PHOTO) not in paths_of(filled.search_image(data, mirror=False)), operation
        assert len({r["id"] for r in oriented}) == len(oriented)


def test_search_images_many_at_once_with_a_bad_one(filled):
    queries = [str(photos()[0]), b"not an image", str(photos()[1])]
    results = filled.search_images(queries)
    assert paths_of(results[0])[0] == str(photos()[0])
    assert isinstance(results[1], ImageLoadError)
    assert paths_of(results[2])[0] == str(photos()[1])
    oriented = filled.search_images(queries, all_orientations=True)
    assert paths_of(oriented[2])[0] == str(photos()[1]) and isinstance(oriented[1], ImageLoadError)


def test_cutoff_and_size_per_search(filled):
    data = copies(PHOTO)["resized"]
    distance = filled.search_image(data, bytestream=True)[0]["dist"]
    assert filled.search_image(data, distance_cutoff=distance / 2) == []
    assert filled.search_image(data, size=1)[0]["path"] == str(PHOTO)
    with pytest.raises(InvalidParameterError):
        filled.search_image(data, distance_cutoff=1.5)
    with pytest.raises(InvalidParameterError):
        filled.search_image(data, size=0)


def test_search_by_signature(filled):
    signature = filled.gis.generate_signature(PHOTO)
    assert filled.search_signature(signature)[0]["path"] == str(PHOTO)
    with pytest.raises(InvalidParameterError):
        filled.search_signature(signature[:100])


# --- metadata filters ------------------------------------------------------------------------

def test_portable_pre_filter(store):
    first, second, third = (str(p) for p in photos()[:3])
    store.add_image(first, metadata={"owner": "ann", "n": 1, "flag": True, "camera": {"make": "X"}})
    store.add_image(second, metadata={"owner": "bob", "n": 2, "flag": False})
    store.add_image(third, refresh_after=True)
    assert paths_of(store.search_image(first, pre_filter={"owner": "ann"})) == [first]
    assert store.search_image(first, pre_filter={"owner": "bob"}) == []
    assert paths_of(store.search_image(first, pre_filter={"owner": ["bob", "ann"]})) == [first]
    assert paths_of(store.search_image(first, pre_filter={"camera.make": "X"})) == [first]
    assert paths_of(store.search_image(first, pre_filter={"n": 1, "owner": "ann"})) == [first]
    assert store.search_image(first, pre_filter={"n": 2, "owner": "ann"}) == []
    # Types are kept apart: True is not 1, "1" is not 1; 1 and 1.0 are the same number.
    assert store.search_image(first, pre_filter={"flag": 1}) == []
    assert store.search_image(first, pre_filter={"n": "1"}) == []
    assert paths_of(store.search_image(first, pre_filter={"n": 1.0})) == [first]
    assert paths_of(store.search_image(first, pre_filter={"flag": True})) == [first]
    assert paths_of(store.search_image(second, pre_filter={"flag": False})) == [second]
    assert store.search_image(third, pre_filter={"owner": "ann"}) == []
    with pytest.raises(InvalidParameterError):
        store.search_image(first, pre_filter={"owner": {"nested": "dict"}})


# --- get, delete, count, export --------------------------------------------------------------

def test_get_delete_and_count(filled):
    path = str(photos()[2])
    record_id = default_id(path)
    record = filled.get(record_id)
    assert record["path"] == path and record["id"] == record_id
    np.testing.assert_array_equal(record["signature"], filled.gis.generate_signature(path))
    assert record["timestamp"]
    count = filled.count()
    assert count == len(photos())
    assert filled.delete(record_id) is True
    filled.refresh()
    assert filled.count() == count - 1
    assert filled.delete(record_id) is False
    with pytest.raises(RecordNotFoundError) as error:
        filled.get(record_id)
    assert record_id in str(error.value)
    assert path not in paths_of(filled.search_image(path))


def test_readding_a_path_replaces_its_record(store):
    path = str(PHOTO)
    first = store.add_image(path, metadata={"version": 1}, refresh_after=True)
    second = store.add_image(path, metadata={"version": 2}, refresh_after=True)
    assert first == second == default_id(path)
    assert store.count() == 1
    assert store.get(first)["metadata"] == {"version": 2}
    # The words were replaced too: a search finds one record, with the new metadata.
    results = store.search_image(path)
    assert len(results) == 1 and results[0]["metadata"] == {"version": 2}


def test_replacing_with_another_image_moves_its_words(store):
    path, other = str(photos()[0]), str(photos()[5])
    store.add_image(path, refresh_after=True)
    store.add_image(path, img=other, refresh_after=True)  # same record, other picture
    assert store.count() == 1
    assert store.search_image(path) == []
    assert paths_of(store.search_image(other)) == [path]


def test_delete_path_is_exact_and_delete_duplicates_keeps_one(store):
    path = str(PHOTO)
    store.add_image(path, id="a")
    store.add_image(path, id="b")
    store.add_image(path, id="c")
    store.add_image(path + ".copy", img=path, id="d", refresh_after=True)
    assert store.delete_duplicates(path) == 2
    store.refresh()
    assert store.count() == 2
    assert store.get("a")["path"] == path  # the earliest stays
    assert store.delete_path(path) == 1
    store.refresh()
    assert [r["id"] for r in store.iter_records()] == ["d"]
    assert store.delete_path("/no/such/path.jpg") == 0


def test_iter_records_exports_everything(filled):
    exported = list(filled.iter_records(batch_size=5))
    assert sorted(r["path"] for r in exported) == sorted(str(p) for p in photos())
    for record in exported[:3]:
        np.testing.assert_array_equal(record["signature"],
                                      filled.gis.generate_signature(record["path"]))


def test_signatures_round_trip_exactly(store):
    rng = np.random.default_rng(7)
    signatures = rng.integers(-2, 3, (20, 648)).astype(np.int8)
    items = [{"path": f"synthetic/{i}.jpg", "signature": s, "metadata": {"i": i}}
             for i, s in enumerate(signatures)]
    ids = store.add_signatures(items, refresh_after=True)
    for record_id, signature in zip(ids, signatures):
        np.testing.assert_array_equal(store.get(record_id)["signature"], signature)


# --- bulk with bad items ----------------------------------------------------------------------

def test_bulk_add_reports_each_bad_item_and_stores_the_rest(store, tmp_path):
    good = [str(p) for p in photos()[:4]]
    items = [good[0], str(tmp_path / "missing.jpg"), good[1],
             {"path": "junk", "image": b"this is not an image"},
             {"path": good[2], "metadata": {"k": "v"}, "id": "chosen"}, good[3]]
    results = store.add_images(items, workers=1, batch_size=2, refresh_after=True)
    assert results[0] == default_id(good[0]) and results[2] == default_id(good[1])
    assert isinstance(results[1], ImageLoadError) and "missing.jpg: no such file" in str(results[1])
    assert isinstance(results[3], ImageLoadError) and "not an image" in str(results[3])
    assert results[4] == "chosen" and results[5] == default_id(good[3])
    assert store.count() == 4
    assert store.get("chosen")["metadata"] == {"k": "v"}


def test_add_signatures_refuses_bad_records_one_by_one(store):
    good = np.zeros(648, np.int8)
    good[::7] = 1
    results = store.add_signatures([
        {"path": "ok.jpg", "signature": good},
        {"path": "short.jpg", "signature": good[:10]},
        {"path": "", "signature": good},
        {"path": "meta.jpg", "signature": good, "metadata": "not a dict"},
        {"path": "ok2.jpg", "signature": good},
        ("tuple.jpg", good),
        {"path": "nosig.jpg"},
        {"path": "range.jpg", "signature": good * 3},
        {"path": "nan.jpg", "signature": np.full(648, np.nan)},
        {"path": "fraction.jpg", "signature": good * 0.5},
        {"path": "text.jpg", "signature": ["a"] * 648},
        {"path": "ragged.jpg", "signature": [[1], [1, 2]]},
    ], refresh_after=True)
    assert results[0] == default_id("ok.jpg") and results[4] == default_id("ok2.jpg")
    refused = results[1:4] + results[5:]
    assert all(isinstance(r, InvalidParameterError) for r in refused), refused
    for result, name in zip(results[5:], ["tuple.jpg", "nosig.jpg", "range.jpg", "nan.jpg",
                                          "fraction.jpg", "text.jpg", "ragged.jpg"]):
        assert name in str(result)
    assert "short.jpg" in str(results[1]) and "meta.jpg" in str(results[3])
    assert store.count() == 2


def test_bad_single_add_raises_with_the_input_named(store, tmp_path):
    with pytest.raises(ImageLoadError) as error:
        store.add_image(str(tmp_path / "nope.png"))
    assert str(tmp_path / "nope.png") in str(error.value)
    assert store.count() == 0


# --- groups of duplicates -----------------------------------------------------------------------

def test_find_duplicates_groups_planted_copies_only(store):
    originals = [str(p) for p in photos()[:8]]
    store.add_images(originals, workers=1)
    planted = {}
    for path in originals[:3]:
        for name, data in list(copies(path).items())[:2]:
            copy_path = f"{path}.{name}.jpg"
            store.add_image(copy_path, img=data, bytestream=True)
            planted.setdefault(path, {path}).add(copy_path)
    store.refresh()
    groups = store.find_duplicates()
    found = [{member["path"] for member in group} for group in groups]
    assert sorted(map(sorted, found)) == sorted(map(sorted, planted.values()))
    for group in groups:
        assert group[0]["dist"] == 0.0
        assert all(0 <= member["dist"] < store.distance_cutoff for member in group)


# --- the store's parameters ---------------------------------------------------------------------

def test_store_keeps_its_signature_variant(store_url):
    paper = open_database(store_url, variant="paper")
    try:
        paper.add_image(str(PHOTO), refresh_after=True)
        again = open_database(store_url)  # no parameters: adopts the store's
        assert again.gis.variant == "paper" and again.gis.draft  # open_database's draft decode
        expected = ImageSignature(variant="paper", draft=True).generate_signature(PHOTO)
        np.testing.assert_array_equal(again.get(default_id(str(PHOTO)))["signature"], expected)
        assert again.search_image(str(PHOTO))[0]["dist"] < 1e-9
        with pytest.raises(InvalidParameterError) as error:
            open_database(store_url, variant="1.x", n_grid=7)
        assert "variant='paper'" in str(error.value) and "n=9" in str(error.value)
    finally:
        paper.drop()


def test_unreachable_or_bad_urls():
    with pytest.raises(InvalidParameterError):
        open_database("ftp://example.org/images")
    with pytest.raises(InvalidParameterError):
        open_database("sqlite://host/images.db")
    with pytest.raises(DatabaseError):
        open_database("sqlite:////proc/no/such/dir/images.db")


# --- crops, bars and small rotations --------------------------------------------------------------

# Photos whose crops, captioned and turned copies are well beyond the cutoff without the options
# (p152c20d2f38's plain sky stays within reach of its copies).
HARD = [photos()[i] for i in (2, 4, 5, 12)]


def captioned(image, bar=0.18):
    """White bars above and below with black text in them: a meme."""
    pad = round(image.height * bar)
    canvas = Image.new("RGB", (image.width, image.height + 2 * pad), "white")
    canvas.paste(image, (0, pad))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=pad * 3 // 5)
    for line, y in (("WHEN THE TESTS", pad // 2), ("PASS EVERYWHERE", canvas.height - pad // 2)):
        draw.text((canvas.width // 2, y), line, font=font, fill="black", anchor="mm")
    return canvas


def sibling(store_url, name):
    """Another store's URL beside ``store_url`` (a file in the same folder, an index on the same
    engine)."""
    if store_url.startswith("sqlite"):
        return store_url.replace("images.db", f"{name}.db")
    return f"{store_url}-{name}"


@pytest.fixture
def cropping(store_url):
    """A store with crop windows, filled with the photos."""
    db = open_database(sibling(store_url, "crop"), crop_windows=True)
    ids = db.add_images([str(p) for p in photos()], workers=1, refresh_after=True)
    assert all(isinstance(i, str) for i in ids), ids
    yield db
    db.drop()


def test_a_half_crop_is_found_with_crop_windows_and_not_without(filled, cropping):
    for path in HARD:
        half = encoded(central_crop(rgb(path), 0.5))
        # The query alone misses it (the default's central crops find light crops, down to 58%
        # of the area, and a half crop only now and then).
        assert str(path) not in paths_of(filled.search_image(half, central_crops=False)), path.name
        results = cropping.search_image(half)
        assert results and results[0]["path"] == str(path), (path.name, results[:2])
        assert results[0]["dist"] < cropping.distance_cutoff
    # The whole picture is still found at distance 0, through its own signature.
    assert cropping.search_image(str(PHOTO))[0]["dist"] < 1e-9


def test_a_corner_crop_is_found_with_corner_crops_and_not_without(cropping):
    corners = ("top-left", "top-right", "bottom-left", "bottom-right")
    for path, corner in zip(HARD, corners):
        copy = encoded(corner_crop(rgb(path), 0.8, corner))
        assert str(path) not in paths_of(cropping.search_image(copy, central_crops=False)), \
            (path.name, corner)
        for options in ({"corner_crops": True}, {"robust": True}):
            results = cropping.search_image(copy, **options)
            assert results and results[0]["path"] == str(path), (path.name, corner, results[:2])


def test_corner_crops_need_crop_windows(filled):
    with pytest.raises(InvalidParameterError, match="corner_crops needs a store made with crop"):
        filled.search_image(str(PHOTO), corner_crops=True)
    # robust=True asks only for what the store allows.
    assert filled.search_image(str(PHOTO), robust=True)[0]["path"] == str(PHOTO)


def test_crop_windows_are_recorded_and_kept(cropping, store_url):
    assert cropping.crop_windows == (0.5, 0.75)
    again = open_database(sibling(store_url, "crop"))  # no parameters: the store's own
    assert again.crop_windows == (0.5, 0.75)
    half = encoded(central_crop(rgb(), 0.5))
    assert again.search_image(half)[0]["path"] == str(PHOTO)
    with pytest.raises(InvalidParameterError, match="crop_windows"):
        open_database(sibling(store_url, "crop"), crop_windows=False)


def test_a_store_without_crop_windows_refuses_to_be_opened_with_them(store, store_url):
    store.add_image(str(PHOTO), refresh_after=True)
    with pytest.raises(InvalidParameterError, match="crop_windows"):
        open_database(store_url, crop_windows=True)
    assert open_database(store_url).crop_windows == ()


def test_records_with_windows_export_and_import_whole(cropping, store_url):
    record = cropping.get(default_id(str(PHOTO)))
    expected = cropping.gis.record_signatures(str(PHOTO))
    np.testing.assert_array_equal(record["signature"], expected[0])
    np.testing.assert_array_equal(record["windows"], expected[1:])
    exported = list(cropping.iter_records())
    assert all(len(r["windows"]) == 2 for r in exported)

    target = open_database(sibling(store_url, "imported"), crop_windows=True)
    try:
        results = target.add_signatures(exported, refresh_after=True)
        assert all(isinstance(r, str) for r in results), results
        np.testing.assert_array_equal(target.get(record["id"])["windows"], record["windows"])
        half = encoded(central_crop(rgb(), 0.5))
        assert target.search_image(half)[0]["path"] == str(PHOTO)
        # Windows of the wrong shape are refused one by one; a record without them is kept.
        bad = target.add_signatures([dict(exported[0], windows=exported[0]["windows"][:1]),
                                     {"path": "plain.jpg", "signature": exported[1]["signature"]}],
                                    refresh_after=True)
        assert isinstance(bad[0], InvalidParameterError) and "windows" in str(bad[0])
        assert isinstance(bad[1], str) and "windows" not in target.get(bad[1])
    finally:
        target.drop()


def test_replacing_a_record_replaces_its_windows_words(cropping):
    path, other = str(photos()[0]), str(photos()[5])
    cropping.add_image(path, img=other, refresh_after=True)  # same record, another picture
    half = encoded(central_crop(rgb(photos()[0]), 0.5))
    assert path not in paths_of(cropping.search_image(half))
    assert cropping.search_image(encoded(central_crop(rgb(photos()[5]), 0.5)))[0]["path"] in (
        path, other)
    assert cropping.delete(default_id(path))
    cropping.refresh()
    assert path not in paths_of(cropping.search_image(encoded(central_crop(rgb(photos()[5]),
                                                                           0.5))))


def test_find_duplicates_links_a_central_crop_through_the_windows(cropping):
    cropping.add_image("half.jpg", img=encoded(central_crop(rgb(), 0.5)), bytestream=True,
                       refresh_after=True)
    groups = cropping.find_duplicates()
    assert [sorted(m["path"] for m in g) for g in groups] == [sorted([str(PHOTO), "half.jpg"])]
    assert all(m["dist"] < cropping.distance_cutoff for m in groups[0])


def test_a_captioned_copy_is_found_with_frames_and_not_without(filled):
    for path in HARD:
        data = encoded(captioned(rgb(path)))
        assert str(path) not in paths_of(filled.search_image(data)), path.name
        results = filled.search_image(data, frames=True)
        assert results and results[0]["path"] == str(path), (path.name, results[:2])


def test_a_turned_copy_is_found_with_small_rotations_and_not_without(filled):
    for path in HARD:
        data = encoded(rgb(path).rotate(10, resample=Image.Resampling.BICUBIC))
        assert str(path) not in paths_of(filled.search_image(data)), path.name
        results = filled.search_image(data, small_rotations=True)
        assert results and results[0]["path"] == str(path), (path.name, results[:2])


def test_robust_search_many_at_once(filled):
    turned = encoded(rgb().rotate(-12, resample=Image.Resampling.BICUBIC))
    framed = encoded(captioned(rgb(photos()[1])))
    results = filled.search_images([turned, b"junk", framed], robust=True, workers=2)
    assert paths_of(results[0])[0] == str(PHOTO)
    assert isinstance(results[1], ImageLoadError)
    assert paths_of(results[2])[0] == str(photos()[1])
    # A match through a rotation or frame counts with its margin: never closer than 0.05.
    assert results[0][0]["dist"] >= 0.05
    # The whole picture still comes first at distance 0 when searched robustly.
    assert filled.search_image(str(PHOTO), robust=True)[0]["dist"] < 1e-9


def test_an_inset_copy_is_found_with_insets_and_not_without(filled):
    for index, path in enumerate(HARD):
        picture, background = rgb(path), rgb(photos()[(index + 7) % len(photos())])
        canvas = background.resize(picture.size, Image.Resampling.LANCZOS)
        small = picture.resize((round(picture.width * 0.6), round(picture.height * 0.6)),
                               Image.Resampling.LANCZOS)
        canvas.paste(small, (round(0.3 * picture.width), round(0.15 * picture.height)))
        data = encoded(canvas)
        assert str(path) not in paths_of(filled.search_image(data)), path.name
        results = filled.search_image(data, insets=True)
        assert results and results[0]["path"] == str(path), (path.name, results[:2])
