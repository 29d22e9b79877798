"""The command line on a real OpenSearch node: migrating a store SQLite -> OpenSearch -> SQLite with
export/import, the store commands against the engine, and `engine start|status|stop`."""

import json
import os
import urllib.request
import uuid
from datetime import datetime

import pytest
from click.testing import CliRunner

from image_match.cli import main
from image_match.drivers import open_database

from conftest import photos

pytestmark = pytest.mark.engine


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def lines(result):
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.fixture
def index_url(opensearch_url):
    pytest.importorskip("opensearchpy")
    url = f"{opensearch_url}/cli-{uuid.uuid4().hex[:12]}"
    yield url
    run("drop", "--yes", "--db", url)


def _same_records(a, b):
    assert a.keys() == b.keys()
    for record_id, record in a.items():
        other = b[record_id]
        assert {k: record[k] for k in ("id", "path", "signature", "metadata")} == \
            {k: other[k] for k in ("id", "path", "signature", "metadata")}
        # The engine keeps timestamps to the millisecond.
        delta = datetime.fromisoformat(record["timestamp"]) - datetime.fromisoformat(other["timestamp"])
        assert abs(delta.total_seconds()) < 0.001


def test_migrate_sqlite_to_opensearch_and_back(index_url, tmp_path):
    sqlite_url = f"sqlite:///{tmp_path / 'store.db'}"
    assert run("add", "--db", sqlite_url, "-m", "source=tests", *photos()).exit_code == 0
    dump = tmp_path / "dump.jsonl"
    assert run("export", "--db", sqlite_url, "-o", dump).exit_code == 0

    imported = run("import", "--db", index_url, dump)
    assert imported.exit_code == 0, imported.output
    assert imported.stdout.strip() == f"imported {len(photos())}, failed 0 ({index_url})"
    assert run("count", "--db", index_url).stdout.strip() == str(len(photos()))
    source = {r["id"]: r for r in open_database(sqlite_url).iter_records()}
    _same_records(source, {r["id"]: r for r in open_database(index_url).iter_records()})

    # The engine answers searches as the SQLite store does.
    query = photos()[3]
    for url in (sqlite_url, index_url):
        matches = lines(run("search", "--json", "--db", url, "--filter", "source=tests", query))
        assert [m["path"] for m in matches[0]["matches"]] == [str(query)]

    # and back: OpenSearch -> SQLite
    back = tmp_path / "back.jsonl"
    assert run("export", "--db", index_url, "-o", back).exit_code == 0
    copy_url = f"sqlite:///{tmp_path / 'copy.db'}"
    assert run("import", "--db", copy_url, back).exit_code == 0
    _same_records(source, {r["id"]: r for r in open_database(copy_url).iter_records()})


def test_store_commands_on_the_engine(index_url, tmp_path):
    from PIL import Image

    photo = photos()[0]
    copy = tmp_path / "copy.jpg"
    with Image.open(photo) as image:
        image.convert("RGB").transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copy, quality=80)
    created = run("init", "--json", "--db", index_url, "--shards", "2", "--replicas", "0")
    assert created.exit_code == 0 and lines(created)[0]["engine"].startswith("OpenSearch")
    base, index = index_url.rsplit("/", 1)
    settings = json.loads(urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
        f"{base}/{index}/_settings").read())[index]["settings"]["index"]
    assert (settings["number_of_shards"], settings["number_of_replicas"]) == ("2", "0")
    added = run("add", "--json", "--db", index_url, photo, copy, photos()[1])
    assert lines(added)[-1] == {"added": 3, "replaced": 0, "failed": 0}
    again = run("add", "--json", "--db", index_url, photo)
    assert lines(again)[-1] == {"added": 0, "replaced": 1, "failed": 0}
    stats = lines(run("stats", "--json", "--db", index_url))[0]
    assert stats["records"] == 3 and stats["location"].endswith(index_url.rsplit("/", 1)[1])

    groups = lines(run("dedupe", "--json", "--db", index_url))  # mirror images by default
    assert [sorted(m["path"] for m in g["members"]) for g in groups] == [sorted([str(photo), str(copy)])]
    assert lines(run("dedupe", "--json", "--no-orientations", "--db", index_url)) == []

    record_id = groups[0]["members"][1]["id"]
    assert lines(run("get", "--json", "--db", index_url, record_id))[0]["id"] == record_id
    assert run("delete", "--db", index_url, "--id", record_id).stdout.strip() == "deleted 1 record"
    missing = run("get", "--db", index_url, record_id)
    assert missing.exit_code == 1 and missing.stderr.startswith("error: ")
    dropped = run("drop", "--yes", "--db", index_url)
    assert dropped.exit_code == 0 and dropped.stdout.startswith("dropped ")


def test_engine_start_status_stop(tmp_path, opensearch_url):
    data = tmp_path / "node"
    started = run("engine", "start", "--json", "--data-dir", data)
    if started.exit_code != 0 and not os.environ.get("IMAGE_MATCH_TEST_REQUIRE_ENGINES"):
        pytest.skip(f"cannot start a second node here: {started.stderr.strip()}")
    assert started.exit_code == 0, started.output
    try:
        state = lines(started)[0]
        assert state["running"] and state["kind"] == "opensearch"
        assert state["url"].startswith("http://127.0.0.1:")
        status = lines(run("engine", "status", "--json", "--data-dir", data))[0]
        assert status["running"] and status["engines"][0]["health"] in ("green", "yellow")
        index_url = state["url"] + "/images"
        missing = run("count", "--db", index_url)  # reading never creates a store
        assert missing.exit_code == 1 and "no such store" in missing.stderr, missing.output
        assert run("init", "--db", index_url).exit_code == 0
        assert run("count", "--db", index_url).stdout.strip() == "0"
        again = run("engine", "start", "--data-dir", data)
        assert again.exit_code == 1 and "already running" in again.stderr
    finally:
        stopped = run("engine", "stop", "--data-dir", data)
    assert stopped.exit_code == 0 and stopped.stdout.startswith("stopped opensearch")
    assert run("engine", "status", "--data-dir", data).stdout.strip() == "no engine running"


# --- engine start/stop as a user runs them: separate processes ------------------------------------

def _command(*args, env=None, cwd=None):
    """``image-match ARGS`` in a process of its own (as a user runs it: the node outlives it)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "image_match", *map(str, args)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _start_or_skip(data, *options, env=None, cwd=None):
    started = _command("engine", "start", "--heap", "256m", "--data-dir", data, *options, env=env,
                       cwd=cwd)
    if started.returncode != 0 and not os.environ.get("IMAGE_MATCH_TEST_REQUIRE_ENGINES"):
        pytest.skip(f"cannot start a second node here: {started.stderr.strip()}")
    assert started.returncode == 0, started.stderr
    return started


def _gone(pid):
    """True once no process has this pid (a zombie waiting for its parent still has it)."""
    return not os.path.exists(f"/proc/{pid}")


def test_engine_start_q_prints_the_url_and_stop_returns_once_the_jvm_is_gone(tmp_path,
                                                                             opensearch_url):
    from image_match import local_engine

    local_engine.build("opensearch")  # built before: no start may then speak of building it
    data = tmp_path / "node"
    started = _start_or_skip(data, "-q")
    try:
        url = started.stdout.strip()
        assert started.stdout == url + "\n" and url.startswith("http://127.0.0.1:"), started.stdout
        assert started.stderr == ""
        assert _command("engine", "status", "-q", "--data-dir", data).stdout == url + "\n"
        pid = local_engine.status(data).pid
    finally:
        stopped = _command("engine", "stop", "--data-dir", data)
    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped opensearch")
    assert _gone(pid), "engine stop returned while the JVM's process was still there"
    assert not local_engine.port_is_open(int(url.rsplit(":", 1)[1]))
    none = _command("engine", "status", "-q", "--data-dir", data)
    assert none.returncode == 1 and none.stdout == ""

    again = _start_or_skip(data)  # without -q: a sentence, and nothing about Maven
    try:
        assert again.stdout.startswith("opensearch 2.19.") and "running at http://127.0.0.1:" in again.stdout
        assert "Maven" not in again.stderr and again.stderr.startswith("starting opensearch...")
    finally:
        assert _command("engine", "stop", "--data-dir", data).returncode == 0


def test_a_relative_engines_dir_is_taken_from_the_current_directory(tmp_path, opensearch_url):
    from pathlib import Path

    from image_match import local_engine

    engines = Path(local_engine.__file__).resolve().parent.parent / "engines"
    if not (engines / "opensearch" / "pom.xml").is_file():
        pytest.skip("not a source checkout")
    # IMAGE_MATCH_ENGINES_DIR=engines in the checkout, as a user sets it (a path of many ".."
    # would still reach it from the node's folder, "/.." being "/").
    env = dict(os.environ, IMAGE_MATCH_ENGINES_DIR="engines")
    data = tmp_path / "node"
    started = _command("engine", "start", "--heap", "256m", "--data-dir", data, "--json", env=env,
                       cwd=engines.parent)  # the JVM runs in data, where engines/ is not
    assert started.returncode == 0, started.stderr
    try:
        assert json.loads(started.stdout)["version"].startswith("2.19.")
    finally:
        assert _command("engine", "stop", "--data-dir", data).returncode == 0
