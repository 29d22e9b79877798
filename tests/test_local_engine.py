"""image_match.local_engine against real nodes built from engines/ (OpenSearch 2.19, Elasticsearch 7.17).

Each node takes a few seconds to start and about 350 MB of memory; the first run builds the Maven
projects (a minute or two with an empty ~/.m2). Select or deselect these tests with ``-m engine``.
"""

import json
import shutil
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from image_match import local_engine
from image_match.cli import main
from image_match.errors import ImageMatchError

EXPECTED_VERSION_PREFIX = {"opensearch": "2.19.", "elasticsearch": "7.17."}
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy


def _require_toolchain():
    missing = [tool for tool in ("mvn",) if shutil.which(tool) is None]
    try:
        local_engine._find_java()
    except ImageMatchError:
        missing.append("java")
    if missing:
        pytest.skip(f"needs a JDK 17 and Maven to build and run the engines; not found: {', '.join(missing)}")


def _request(method, url, body=None):
    """(status, headers, parsed JSON body) of one HTTP request; HTTP errors are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    try:
        with DIRECT.open(request, timeout=30) as response:
            return response.status, response.headers, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.load(error)


@pytest.fixture(scope="module", params=local_engine.ENGINES)
def engine(request, tmp_path_factory):
    _require_toolchain()
    kind = request.param
    node = local_engine.start(kind, data_dir=tmp_path_factory.mktemp(kind), stop_with_caller=True)
    yield node
    node.stop()


@pytest.mark.engine
def test_root_reports_engine_and_version(engine):
    status, headers, info = _request("GET", engine.url + "/")
    assert status == 200
    assert info["version"]["number"] == engine.version
    assert engine.version.startswith(EXPECTED_VERSION_PREFIX[engine.kind])
    if engine.kind == "opensearch":
        assert info["version"]["distribution"] == "opensearch"
    else:
        # elasticsearch-py 7.14+ refuses a server without this header (its "product check").
        assert headers["X-elastic-product"] == "Elasticsearch"
        assert info["tagline"] == "You Know, for Search"


@pytest.mark.engine
def test_index_search_and_delete_by_query(engine):
    index = engine.url + "/local-engine-test"
    status, _, _ = _request("PUT", index, {"settings": {"number_of_shards": 1, "number_of_replicas": 0}})
    assert status == 200
    for doc_id, word in (("a", 1), ("b", 2)):
        status, _, _ = _request("PUT", f"{index}/_doc/{doc_id}?refresh=true", {"word": word})
        assert status == 201
    _, _, found = _request("POST", index + "/_search", {"query": {"term": {"word": 1}}})
    assert [hit["_id"] for hit in found["hits"]["hits"]] == ["a"]

    # _delete_by_query comes from the reindex module: a 400/404 here means it is missing.
    status, _, deleted = _request("POST", index + "/_delete_by_query?refresh=true",
                                  {"query": {"term": {"word": 1}}})
    assert status == 200, deleted
    assert deleted["deleted"] == 1
    _, _, counted = _request("GET", index + "/_count")
    assert counted["count"] == 1
    _, _, health = _request("GET", engine.url + "/_cluster/health")
    assert health["status"] == "green"


@pytest.mark.engine
def test_status_finds_the_running_node_and_a_second_start_is_refused(engine):
    found = local_engine.status(engine.data_dir)
    assert (found.kind, found.pid, found.port, found.url) == (engine.kind, engine.pid, engine.port, engine.url)
    assert found.is_running()
    with pytest.raises(ImageMatchError, match="already running"):
        local_engine.start(engine.kind, data_dir=engine.data_dir)


@pytest.mark.engine
@pytest.mark.parametrize("kind", local_engine.ENGINES)
def test_stop_from_the_state_file_ends_the_process_and_closes_the_port(kind, tmp_path):
    _require_toolchain()
    node = local_engine.start(kind, data_dir=tmp_path, stop_with_caller=True)
    assert local_engine.port_is_open(node.port)

    stopped = local_engine.stop(tmp_path)  # as another process (the CLI) would

    assert stopped.pid == node.pid
    assert not node.is_running()
    assert not local_engine.port_is_open(node.port)
    assert local_engine.status(tmp_path) is None
    assert not (tmp_path / local_engine.STATE_FILE).exists()
    assert "closed" in node.log_path.read_text()  # SIGTERM closed the node cleanly
    assert local_engine.stop(tmp_path) is None


@pytest.mark.engine
def test_a_node_that_cannot_start_raises_with_the_reason_from_its_log(tmp_path):
    _require_toolchain()
    with pytest.raises(ImageMatchError, match="exited during start-up") as raised:
        local_engine.start("opensearch", data_dir=tmp_path, settings={"no.such.setting": 1}, timeout=60)
    first_line = str(raised.value).splitlines()[0]
    assert "unknown setting [no.such.setting]" in first_line  # the engine's own words, from the log
    assert local_engine.status(tmp_path) is None


def test_a_folder_keeps_one_kind_of_engine(tmp_path):
    (tmp_path / local_engine.KIND_FILE).write_text("opensearch\n")
    with pytest.raises(ImageMatchError, match="holds the data of an opensearch node"):
        local_engine.start("elasticsearch", data_dir=tmp_path)


def test_bad_parameters_are_refused_before_anything_starts(tmp_path):
    with pytest.raises(ImageMatchError, match="unknown engine"):
        local_engine.start("solr", data_dir=tmp_path)
    with pytest.raises(ImageMatchError, match="heap"):
        local_engine.start("opensearch", data_dir=tmp_path, heap="lots")
    with pytest.raises(ImageMatchError, match="port"):
        local_engine.start("opensearch", data_dir=tmp_path, port=70000)
    for nodes in (1, 0, "3", 2.0):
        with pytest.raises(ImageMatchError, match="a cluster has at least 2 nodes"):
            local_engine.start_cluster("opensearch", nodes=nodes, data_dir=tmp_path)
    (tmp_path / local_engine.KIND_FILE).write_text("opensearch\n")
    with pytest.raises(ImageMatchError, match="holds the data of an opensearch node"):
        local_engine.start_cluster("elasticsearch", data_dir=tmp_path)
    assert list(tmp_path.iterdir()) == [tmp_path / local_engine.KIND_FILE]  # no node started
    refused = CliRunner().invoke(main, ["engine", "start", "--nodes", "3", "--port", "9200",
                                        "--data-dir", str(tmp_path)])
    assert refused.exit_code == 2 and "--port is for one node" in refused.stderr


def test_engines_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGE_MATCH_ENGINES_DIR", str(tmp_path))
    with pytest.raises(ImageMatchError, match="IMAGE_MATCH_ENGINES_DIR"):
        local_engine.engines_dir()
    (tmp_path / "opensearch").mkdir()
    (tmp_path / "opensearch" / "pom.xml").write_text("<project/>")
    assert local_engine.engines_dir() == tmp_path


def test_default_data_dir_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    assert local_engine.default_data_dir("elasticsearch") == tmp_path / "image-match" / "engines" / "elasticsearch"
