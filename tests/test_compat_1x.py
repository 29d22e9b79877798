"""image-match 1.x's own tests, mirrored: each test reads like the 1.x test of the same name.

1.x's tests (``tests/`` of ProvenanceLabs/image-match at v1.1.2 and master) download two Mona Lisa
files; these use two pictures of ours instead, with the same relation: test2.png is a central
crop of test1.jpg at distance 0.434, between image-match 2's cutoff (0.40) and 1.x's (0.45), as
1.x's remix is at 0.4267. The 1.x store tests run here on the stores 1.x's constructors make:
SQLite, and Elasticsearch/OpenSearch indices as 1.1.2's tests create them (empty, no mapping) and
as master's do (its explicit mapping, documents nested under the doc type).
``scripts/run-1x-tests`` runs 1.x's files themselves, given a checkout of image-match 1.x.
"""

import shutil
import uuid
from datetime import datetime
from time import sleep

import numpy as np
import pytest
from numpy import array_equal, ndarray
from PIL import Image

from image_match.drivers import open_database
from image_match.drivers.sqlite import SignatureSQLite
from image_match.elasticsearch_driver import SignatureES
from image_match.errors import InvalidParameterError
from image_match.goldberg import CorruptImageError, ImageSignature
from image_match.signature_database_base import get_words, make_record, max_contrast, words_to_int
from image_match.words import make_words

from conftest import DATA, central_crop, engine_client, rgb

# 1.x's tests create their indices with body= (deprecated by elasticsearch-py 7.17, not gone).
pytestmark = pytest.mark.filterwarnings("ignore:The 'body' parameter is deprecated")

PICTURE = DATA / "pbd86b081f99.jpg"  # 1024x576, large enough for draft decoding to matter
# Its distance to its 70% central crop with 1.1.2's exact signatures, between 0.40 and 0.45 (the
# draft decode of image-match 2's stores makes it 0.4285).
REMIX_DISTANCE = 0.43430872235576157


@pytest.fixture
def images(tmp_path, monkeypatch):
    """test1.jpg and test2.png (the "remix") in the working directory, as 1.x's tests have them."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(PICTURE, "test1.jpg")
    central_crop(rgb(PICTURE), 0.70).save("test2.png")
    return tmp_path


@pytest.fixture
def urls(images, http_server, monkeypatch):
    """The two pictures at http URLs (1.x's tests fetch theirs from the internet)."""
    monkeypatch.setenv("IMAGE_MATCH_FETCH_ALLOWLIST", "127.0.0.1")
    return [http_server.serve_bytes(f"/{name}", (images / name).read_bytes())
            for name in ("test1.jpg", "test2.png")]


# --- tests/test_goldberg.py --------------------------------------------------------------------

def test_load_from_url(urls):
    gis = ImageSignature()
    sig = gis.generate_signature(urls[0])
    assert type(sig) is ndarray
    assert sig.shape == (648,)


def test_load_from_file(images):
    gis = ImageSignature()
    sig = gis.generate_signature('test1.jpg')
    assert type(sig) is ndarray
    assert sig.shape == (648,)


def test_load_from_unicode_path(images):
    shutil.copy("test1.jpg", "tést_图.jpg")
    gis = ImageSignature()
    sig = gis.generate_signature('tést_图.jpg')
    assert type(sig) is ndarray
    assert sig.shape == (648,)


def test_load_from_stream(images):
    gis = ImageSignature()
    with open('test1.jpg', 'rb') as f:
        sig = gis.generate_signature(f.read(), bytestream=True)
        assert type(sig) is ndarray
        assert sig.shape == (648,)


def test_load_from_corrupt_stream():
    gis = ImageSignature()
    with pytest.raises(CorruptImageError):
        gis.generate_signature(b'corrupt', bytestream=True)
    with pytest.raises(RuntimeError):  # 1.x's CorruptImageError was one
        gis.generate_signature(b'\xff\xd8\xff\xe0 truncated JPEG', bytestream=True)


def test_all_inputs_same_sig(urls):
    gis = ImageSignature()
    sig1 = gis.generate_signature(urls[0])
    sig2 = gis.generate_signature('test1.jpg')
    with open('test1.jpg', 'rb') as f:
        sig3 = gis.generate_signature(f.read(), bytestream=True)

    assert array_equal(sig1, sig2)
    assert array_equal(sig2, sig3)


def test_identity(images):
    gis = ImageSignature()
    sig = gis.generate_signature('test1.jpg')
    dist = gis.normalized_distance(sig, sig)
    assert dist == 0.0


def test_difference(urls):
    gis = ImageSignature()
    sig1 = gis.generate_signature('test1.jpg')
    sig2 = gis.generate_signature(urls[1])
    dist = gis.normalized_distance(sig1, sig2)
    assert dist == REMIX_DISTANCE


def test_difference_is_1_1_2s_to_the_last_bit():
    """What 1.x's constant stands for: ``ImageSignature()`` gives image-match 1.1.2's signatures
    (tests/data/reference_1x.npz, made by 1.1.2), hence its distances exactly."""
    reference = np.load(DATA / "reference_1x.npz")
    (first, second), expected = reference["ids"][:2], reference["signatures"][:2]
    gis = ImageSignature()
    sig1 = gis.generate_signature(DATA / f"{first}.jpg")
    sig2 = gis.generate_signature(DATA / f"{second}.jpg")
    assert gis.normalized_distance(sig1, sig2) == gis.normalized_distance(*expected)
    # The draft decode of image-match 2's stores would not: it is not the default.
    draft = ImageSignature(draft=True)
    assert draft.normalized_distance(draft.generate_signature(PICTURE),
                                     gis.generate_signature(PICTURE)) > 0


def test_1xs_word_helpers_make_the_stores_words():
    """signature_database_base's module functions, which 1.x code called to make records."""
    signature = ImageSignature().generate_signature(PICTURE)
    words = get_words(signature, 16, 63)
    assert words.shape == (63, 16) and words.dtype == np.int8
    max_contrast(words)
    assert array_equal(words_to_int(words), make_words(signature))
    assert make_record('test1.jpg', ImageSignature(), 16, 63, img=PICTURE)['simple_word_5'] == \
        make_words(signature)[5]


# --- tests/test_elasticsearch_driver.py, on the stores 1.x's constructors make -------------------

# 1.x master's test index: documents nested under the doc type, path and tenant ids keywords.
DOC_TYPE = 'image'
MAPPINGS = {
    "mappings": {
        "properties": {
            DOC_TYPE: {
                "properties": {
                    "path": {"type": "keyword"},
                    "metadata": {
                        "properties": {
                            "tenant_id": {"type": "keyword"},
                            "project_id": {"type": "keyword"},
                        }
                    }
                }
            }
        }
    }
}
ENGINE_STORES = [pytest.param((engine, ref), marks=pytest.mark.engine, id=f"{engine}-{ref}")
                 for engine in ("opensearch", "elasticsearch") for ref in ("v1.1.2", "master")]


def _engine_store(request, engine, ref):
    """An index as the 1.x test at ``ref`` creates it, and 1.x's constructor on it."""
    es = engine_client(request.getfixturevalue(f"{engine}_url"))
    index_name = f"test_environment_{uuid.uuid4().hex[:12]}"
    if ref == "v1.1.2":
        es.indices.create(index=index_name)
        store = SignatureES(es=es, index=index_name)
    else:
        es.indices.create(index=index_name, body=MAPPINGS)
        store = SignatureES(es=es, index=index_name, doc_type=DOC_TYPE)
    request.addfinalizer(lambda: es.indices.delete(index=index_name, ignore=[404]))
    return store


@pytest.fixture(params=["sqlite", *ENGINE_STORES])
def ses(request, images):
    """The store as 1.x's test fixture makes it: its constructor, no other argument."""
    if request.param == "sqlite":
        return SignatureSQLite(images / "images.db")
    return _engine_store(request, *request.param)


@pytest.fixture(params=ENGINE_STORES)
def es_ses(request, images):
    """``ses`` on the engines only: raw query DSL filters."""
    return _engine_store(request, *request.param)


def test_add_image_by_url(ses, urls):
    ses.add_image(urls[0])
    ses.add_image(urls[1])
    ses.refresh()
    assert ses.count() == 2


def test_add_image_by_path(ses):
    ses.add_image('test1.jpg')
    ses.refresh()
    assert ses.count() == 1


def test_index_refresh(ses):
    ses.add_image('test1.jpg', refresh_after=True)
    r = ses.search_image('test1.jpg')
    assert len(r) == 1


def test_add_image_as_bytestream(ses):
    with open('test1.jpg', 'rb') as f:
        ses.add_image('bytestream_test', img=f.read(), bytestream=True, refresh_after=True)
    assert ses.search_image('test1.jpg')[0]['path'] == 'bytestream_test'


def test_add_image_with_different_name(ses):
    ses.add_image('custom_name_test', img='test1.jpg', bytestream=False, refresh_after=True)
    assert ses.search_image('test1.jpg')[0]['path'] == 'custom_name_test'


def test_lookup_from_url(ses, urls):
    ses.add_image('test1.jpg', refresh_after=True)
    r = ses.search_image(urls[0])
    assert len(r) == 1
    assert r[0]['path'] == 'test1.jpg'
    assert 'score' in r[0]
    assert 'dist' in r[0]
    assert 'id' in r[0]


def test_lookup_from_file(ses):
    ses.add_image('test1.jpg', refresh_after=True)
    r = ses.search_image('test1.jpg')
    assert len(r) == 1
    assert r[0]['path'] == 'test1.jpg'
    assert 'score' in r[0]
    assert 'dist' in r[0]
    assert 'id' in r[0]


def test_lookup_from_bytestream(ses):
    ses.add_image('test1.jpg', refresh_after=True)
    with open('test1.jpg', 'rb') as f:
        r = ses.search_image(f.read(), bytestream=True)
    assert len(r) == 1
    assert r[0]['path'] == 'test1.jpg'
    assert 'score' in r[0]
    assert 'dist' in r[0]
    assert 'id' in r[0]


def test_lookup_with_cutoff(ses):
    ses.add_image('test2.png', refresh_after=True)
    ses.distance_cutoff = 0.01
    r = ses.search_image('test1.jpg')
    assert len(r) == 0


def test_distance_consistency(ses):
    """1.x's ``check_distance_consistency`` (which its pytest never collected), with 1.x's 0.45
    cutoff: the remix at 0.434 is a match."""
    assert ses.distance_cutoff == 0.45
    ses.add_image('test1.jpg')
    ses.add_image('test2.png', refresh_after=True)
    r = ses.search_image('test1.jpg')
    assert r[0]['dist'] == 0.0
    assert r[-1]['dist'] == REMIX_DISTANCE


def test_add_image_with_metadata(ses):
    metadata = {'some_info':
                {'test':
                 'ok!'
                 }
                }
    ses.add_image('test1.jpg', metadata=metadata, refresh_after=True)
    r = ses.search_image('test1.jpg')
    assert r[0]['metadata'] == metadata
    assert 'path' in r[0]
    assert 'score' in r[0]
    assert 'dist' in r[0]
    assert 'id' in r[0]


def test_lookup_with_filter_by_metadata(es_ses):
    ses = es_ses
    metadata = dict(
        tenant_id='foo'
    )
    ses.add_image('test1.jpg', metadata=metadata, refresh_after=True)

    metadata2 = dict(
        tenant_id='bar-2'
    )
    ses.add_image('test2.png', metadata=metadata2, refresh_after=True)

    r = ses.search_image('test1.jpg', pre_filter={"term": {'{}.metadata.tenant_id'.format(DOC_TYPE): "foo"}})
    assert len(r) == 1
    assert r[0]['metadata'] == metadata

    r = ses.search_image('test1.jpg', pre_filter={"term": {'{}.metadata.tenant_id'.format(DOC_TYPE): "bar-2"}})
    assert len(r) == 1
    assert r[0]['metadata'] == metadata2

    r = ses.search_image('test1.jpg', pre_filter={"term": {'{}.metadata.tenant_id'.format(DOC_TYPE): "bar-3"}})
    assert len(r) == 0


def test_lookup_with_filter_by_metadata_as_nested(es_ses):
    """tests/test_elasticsearch_driver_metadata_as_nested.py (master): a list of clauses."""
    ses = es_ses
    ses.add_image('test1.jpg', metadata=_metadata('foo', 'project-x'), refresh_after=True)
    ses.add_image('test2.png', metadata=_metadata('foo', 'project-x'), refresh_after=True)
    ses.add_image('test3.jpg', img='test1.jpg', metadata=_metadata('foo', 'project-y'), refresh_after=True)

    ses.add_image('test2.png', metadata=_metadata('bar', 'project-x'), refresh_after=True)

    r = ses.search_image('test1.jpg', pre_filter=_nested_filter('foo', 'project-x'))
    assert len(r) == 2

    r = ses.search_image('test1.jpg', pre_filter=_nested_filter('foo', 'project-z'))
    assert len(r) == 0

    r = ses.search_image('test1.jpg', pre_filter=_nested_filter('bar', 'project-x'))
    assert len(r) == 1

    r = ses.search_image('test1.jpg', pre_filter=_nested_filter('bar-2', 'project-x'))
    assert len(r) == 0

    r = ses.search_image('test1.jpg', pre_filter=_nested_filter('bar', 'project-z'))
    assert len(r) == 0


def _metadata(tenant_id, project_id):
    return dict(
        tenant_id=tenant_id,
        project_id=project_id
    )


def _nested_filter(tenant_id, project_id):
    return [
        {"term": {"image.metadata.tenant_id": tenant_id}},
        {"term": {"image.metadata.project_id": project_id}}
    ]


def test_all_orientations(ses):
    im = Image.open('test1.jpg')
    im.rotate(90, expand=True).save('rotated_test1.jpg')

    ses.add_image('test1.jpg', refresh_after=True)
    r = ses.search_image('rotated_test1.jpg', all_orientations=True)
    assert len(r) == 1
    assert r[0]['path'] == 'test1.jpg'
    assert r[0]['dist'] < 0.05  # some error from rotation

    with open('rotated_test1.jpg', 'rb') as f:
        r = ses.search_image(f.read(), bytestream=True, all_orientations=True)
        assert len(r) == 1
        assert r[0]['dist'] < 0.05  # some error from rotation


def test_duplicate(ses):
    ses.add_image('test1.jpg', refresh_after=True)
    ses.add_image('test1.jpg', refresh_after=True)
    r = ses.search_image('test1.jpg')
    assert len(r) == 2
    assert r[0]['path'] == 'test1.jpg'
    assert 'score' in r[0]
    assert 'dist' in r[0]
    assert 'id' in r[0]


def test_duplicate_removal(ses):
    for i in range(10):
        ses.add_image('test1.jpg')
    ses.refresh()
    r = ses.search_image('test1.jpg')
    assert len(r) == 10
    ses.delete_duplicates('test1.jpg')
    sleep(0.1)
    r = ses.search_image('test1.jpg')
    assert len(r) == 1


# --- indices image-match 1.x wrote, read, searched, filtered and written in place ----------------

LAYOUTS_1X = [pytest.param((engine, layout), marks=pytest.mark.engine, id=f"{engine}-{layout}")
              for engine in ("opensearch", "elasticsearch")
              for layout in ("v1.1.2", "master", "master-mapped")]


@pytest.fixture(params=LAYOUTS_1X)
def written_by_1x(request, images):
    """An index holding test1.jpg (twice), test2.png and test3.jpg as image-match 1.x wrote them:
    1.1.2's flat documents, or master's nested under the doc type (with its tests' explicit
    mapping: "master-mapped"); dynamic mapping for the rest. Returns (index URL, raw client)."""
    engine, layout = request.param
    url = request.getfixturevalue(f"{engine}_url")
    es = engine_client(url)
    index_name = f"test_environment_{uuid.uuid4().hex[:12]}"
    request.addfinalizer(lambda: es.indices.delete(index=index_name, ignore=[404]))
    if layout == "master-mapped":
        es.indices.create(index=index_name, body=MAPPINGS)
    gis = ImageSignature()
    spelled = "body" if type(es).__module__.startswith("opensearchpy") else "document"
    for n, (path, image, tenant) in enumerate([("test1.jpg", "test1.jpg", "foo"),
                                               ("test1.jpg", "test1.jpg", "foo"),
                                               ("test2.png", "test2.png", "bar-2"),
                                               ("test3.jpg", "test1.jpg", "bar")]):
        record = make_record(path, gis, 16, 63, img=image,
                             metadata={"tenant_id": tenant, "n": n})
        record["timestamp"] = datetime(2019, 1, 1, 12, n).isoformat()  # 1.x's naive local time
        document = record if layout == "v1.1.2" else {DOC_TYPE: record}
        es.index(index=index_name, **{spelled: document})
    es.indices.refresh(index=index_name)
    return f"{url}/{index_name}", es, layout


@pytest.mark.parametrize("entry", ["open_database", "SignatureES"])
def test_an_index_1x_wrote_is_searched_as_1x_signed_it(written_by_1x, entry):
    url, es, layout = written_by_1x
    store = (open_database(url) if entry == "open_database" else
             SignatureES(es, url.rsplit("/", 1)[1], doc_type=DOC_TYPE))
    assert store.legacy and store.root == (None if layout == "v1.1.2" else DOC_TYPE)
    # 1.x's parameters, whoever opens it: full-scale decoding, 0.45, a new record per add.
    assert (store.gis.draft, store.distance_cutoff, store.ids) == (False, 0.45, "new")
    assert store.count() == 4
    r = store.search_image('test1.jpg')
    assert [m['dist'] for m in r] == [0.0, 0.0, 0.0, REMIX_DISTANCE]  # exactly, as 1.x
    assert {m['metadata']['tenant_id'] for m in r} == {'foo', 'bar', 'bar-2'}
    assert store.get(r[0]['id'])['timestamp'].startswith('2019-01-01T12:')


def test_an_index_1x_wrote_is_filtered_in_every_spelling(written_by_1x):
    url, es, layout = written_by_1x
    store = open_database(url)

    def tenants(pre_filter):
        return sorted(m['metadata']['tenant_id']
                      for m in store.search_image('test1.jpg', pre_filter=pre_filter))

    assert tenants({'tenant_id': 'foo'}) == ['foo', 'foo']  # the portable form
    assert tenants({'n': [2, 3]}) == ['bar', 'bar-2']
    assert tenants({"term": {"image.metadata.tenant_id": "bar-2"}}) == ['bar-2']  # master's
    assert tenants({"term": {"metadata.tenant_id": "bar-2"}}) == ['bar-2']  # 1.1.2's
    assert tenants({"term": {"metadata.tenant_id.keyword": "bar"}}) == ['bar']
    assert tenants([{"term": {"image.metadata.tenant_id": "foo"}},
                    {"range": {"image.metadata.n": {"gte": 1}}}]) == ['foo']
    assert tenants({"term": {"metadata.no_such_key": "x"}}) == []  # no record has it
    with pytest.raises(InvalidParameterError):
        store.search_image('test1.jpg', pre_filter={"term": {"tenant_id": "foo"}})


def test_an_index_1x_wrote_is_written_in_its_own_shape(written_by_1x):
    url, es, layout = written_by_1x
    store = open_database(url)
    new_id = store.add_image('test4.jpg', img='test2.png', metadata={'tenant_id': 'baz'},
                             refresh_after=True)
    source = es.get(index=url.rsplit("/", 1)[1], id=new_id)["_source"]
    document = source if layout == "v1.1.2" else source[DOC_TYPE]
    assert set(document) == {"path", "signature", "metadata", "timestamp",
                             *(f"simple_word_{i}" for i in range(63))}
    assert document["signature"] == ImageSignature().generate_signature('test2.png').tolist()
    assert store.search_image('test2.png', pre_filter={'tenant_id': 'baz'})[0]['id'] == new_id
    assert store.delete_duplicates('test1.jpg') == 1
    assert len(store.search_image('test1.jpg', pre_filter={'tenant_id': 'foo'})) == 1
    assert len(list(store.iter_records())) == store.count() == 4
    assert store.delete_path('test4.jpg') == 1
    assert "1.x documents" in store.describe()["layout"]
