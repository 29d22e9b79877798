"""Real search engines on loopback, one node or a cluster, for tests, benchmarks and local use.

The Maven projects in ``engines/`` (see ``engines/README.md``) assemble an OpenSearch 2.19 or an
Elasticsearch 7.17 node from the artifacts on Maven Central and run it in one JVM with a small
launcher: the real engine, its HTTP API and its Lucene indices, without a distribution tarball or
Docker. This module builds those projects, starts a node as a detached process, waits until it
answers, and records it in a state file so that another process can find and stop it::

    from image_match import local_engine

    with local_engine.start("opensearch", data_dir="/tmp/os") as engine:
        print(engine.url)                      # http://127.0.0.1:PORT

    engine = local_engine.start("opensearch")  # a user's node, in default_data_dir("opensearch")
    local_engine.status(local_engine.default_data_dir("opensearch"))  # -> LocalEngine or None
    local_engine.stop(local_engine.default_data_dir("opensearch"))

A data directory holds one node: ``home/`` and ``data/`` (the engine's own), ``engine.log`` (the
JVM's output), ``engine.json`` (the state file) and ``ready.json`` (written by the launcher once the
node has bound its HTTP port).

A cluster (``start_cluster("opensearch", nodes=3, data_dir=...)``) is a folder of such node folders
(``node-0``, ``node-1``...) and ``cluster.json``, which says how to start each node again: the
nodes find each other on loopback through ``discovery.seed_hosts``, and ``LocalCluster.kill(i)`` /
``restart(i)`` take one away and bring it back, as the failover tests and benchmarks do.

Needs a JDK 17 (``java``, or ``JAVA_HOME``) and Maven 3.6+ (``mvn``) with access to Maven Central
for the first build. POSIX only: the node runs in its own session and is stopped with signals.
Standard library only, so that it works before any optional dependency is installed.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from .errors import ImageMatchError, InvalidParameterError

ENGINES = ("opensearch", "elasticsearch")

#: The launcher class of each Maven project (engines/<kind>/src/main/java/...).
_MAIN_CLASS = {
    "opensearch": "org.imagematch.engines.OpenSearchNode",
    "elasticsearch": "org.imagematch.engines.ElasticsearchNode",
}

#: The setting naming the nodes that elect the first cluster manager when a cluster first forms.
_INITIAL_MANAGERS = {
    "opensearch": "cluster.initial_cluster_manager_nodes",
    "elasticsearch": "cluster.initial_master_nodes",
}

#: Netty must not set its processor count itself: the engine does, from its own settings.
_NETTY_PROCESSORS_PROPERTY = {
    "opensearch": "opensearch.set.netty.runtime.available.processors",
    "elasticsearch": "es.set.netty.runtime.available.processors",
}

STATE_FILE = "engine.json"
CLUSTER_FILE = "cluster.json"
LOG_FILE = "engine.log"
READY_FILE = "ready.json"
KIND_FILE = "engine-kind"
_BUILD_STAMP = ".image-match-built"
#: engines/ as installed with the package (setup.py maps it to image_match/engine_sources).
_PACKAGED_ENGINES = "engine_sources"
#: Seconds ``stop`` waits for a finished node's parent to reap it.
_REAP_GRACE = 5.0

# The node is on loopback: an HTTP(S)_PROXY in the environment must not be asked for it.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def engines_dir():
    """The folder that holds the engines' Maven projects (``opensearch/``, ``elasticsearch/``).

    ``IMAGE_MATCH_ENGINES_DIR`` if set (a relative path is taken from the current directory), else
    ``engines/`` beside the package in a source checkout, else the copy of it that every install
    ships (``image_match/engine_sources``, package data; built in :func:`launcher_dir`).
    Raises ImageMatchError when none holds the projects.
    """
    configured = os.environ.get("IMAGE_MATCH_ENGINES_DIR", "").strip()
    here = Path(__file__).resolve().parent
    # Resolved now: the JVM runs in the node's folder, where a relative classpath finds nothing.
    candidates = ([Path(configured).expanduser().resolve()] if configured
                  else [here.parent / "engines", here / _PACKAGED_ENGINES])
    for candidate in candidates:
        if (candidate / "opensearch" / "pom.xml").is_file():
            return candidate
    where = f"IMAGE_MATCH_ENGINES_DIR={configured}" if configured else " or ".join(map(str, candidates))
    raise ImageMatchError(
        f"engine launchers not found in {where}: set IMAGE_MATCH_ENGINES_DIR to the engines/ folder "
        "of an image-match source checkout, or reinstall image-match from its repository")


def _data_home():
    return Path(os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share"))


def default_data_dir(kind="opensearch"):
    """Where a user's node keeps its data: ``$XDG_DATA_HOME/image-match/engines/<kind>``
    (``~/.local/share`` when XDG_DATA_HOME is not set), like the default SQLite store."""
    _check_kind(kind)
    return _data_home() / "image-match" / "engines" / kind


def launcher_dir(kind="opensearch"):
    """Where an installed package builds the launcher of ``kind``:
    ``$XDG_DATA_HOME/image-match/engine-launchers/<kind>``, a copy of its Maven project (the
    package's own folder may not be writable, and pip would not remove a build left in it)."""
    _check_kind(kind)
    return _data_home() / "image-match" / "engine-launchers" / kind


def _project(kind):
    """The Maven project to build ``kind`` in: the source checkout's (or IMAGE_MATCH_ENGINES_DIR's)
    own folder, or for an installed package its copy in :func:`launcher_dir`, brought up to date."""
    source = engines_dir() / kind
    if source.parent.name != _PACKAGED_ENGINES or source.parent.parent != Path(__file__).resolve().parent:
        return source
    copy = launcher_dir(kind)
    wanted = {path.relative_to(source) for path in [source / "pom.xml", *(source / "src").rglob("*")]
              if path.is_file()}
    # Only files whose bytes changed are written: their new mtime makes the next build run, and
    # an unchanged copy is not built again.
    for relative in wanted:
        data = (source / relative).read_bytes()
        target = copy / relative
        if not target.is_file() or target.read_bytes() != data:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
    for stale in [path for path in (copy / "src").rglob("*") if path.is_file()]:
        if stale.relative_to(copy) not in wanted:  # a source file a newer version dropped
            _remove(stale)
    return copy


def needs_build(kind="opensearch"):
    """True when :func:`build` (and so the next :func:`start`) will run Maven for ``kind``."""
    _check_kind(kind)
    return not _is_built(_project(kind))


def build(kind="opensearch", mvn="mvn"):
    """Build the launcher of ``kind`` with Maven unless it is up to date; return its classpath.

    The build is skipped when its stamp is newer than the POM and every source file. The first
    build downloads the engine's jars (about 50 MB) into ``~/.m2``. Concurrent callers (parallel
    test workers) wait for one another on a lock file instead of building twice.
    """
    _check_kind(kind)
    project = _project(kind)
    target = project / "target"
    classpath = f"{target / 'classes'}{os.pathsep}{target / 'lib' / '*'}"
    if _is_built(project):
        return classpath
    if shutil.which(mvn) is None:
        raise ImageMatchError(
            f"cannot build the {kind} engine: Maven ({mvn}) is not on PATH; install Maven 3.6+ and a JDK 17")

    import fcntl  # POSIX only, like the rest of this module

    target.mkdir(exist_ok=True)
    with open(target / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if _is_built(project):  # another process built it while this one waited
            return classpath
        # copy-dependencies never deletes: drop the old jars, or two versions of a jar would end
        # up on the flat classpath after a version change in the POM.
        for stale in ("lib", "classes"):
            shutil.rmtree(target / stale, ignore_errors=True)
        result = subprocess.run(
            [mvn, "-B", "-q", "package"], cwd=project, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if result.returncode != 0:
            tail = "\n".join(result.stdout.strip().splitlines()[-25:])
            raise ImageMatchError(
                f"building the {kind} engine failed ({mvn} package in {project}, "
                f"exit {result.returncode}):\n{tail}")
        (target / _BUILD_STAMP).touch()
    return classpath


def _is_built(project):
    stamp = project / "target" / _BUILD_STAMP
    if not stamp.is_file() or not any((project / "target" / "lib").glob("*.jar")):
        return False
    inputs = [project / "pom.xml", *(p for p in (project / "src").rglob("*") if p.is_file())]
    return stamp.stat().st_mtime >= max(p.stat().st_mtime for p in inputs)


class LocalEngine:
    """A node started by :func:`start`, or found again by :func:`status`.

    Attributes: ``kind``, ``pid``, ``port``, ``url`` (``http://127.0.0.1:PORT``), ``version``,
    ``data_dir`` and ``log_path``. Use it as a context manager to stop the node on exit.
    """

    def __init__(self, kind, pid, port, data_dir, version=None, process=None):
        self.kind = kind
        self.pid = pid
        self.port = port
        self.version = version
        self.data_dir = Path(data_dir)
        self.log_path = self.data_dir / LOG_FILE
        # Set only in the process that started the node: it must reap its child, or the finished
        # JVM stays a zombie that still looks alive to os.kill(pid, 0).
        self._process = process

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def __repr__(self):
        state = "running" if self.is_running() else "stopped"
        return f"<LocalEngine {self.kind} {self.version or ''} {self.url} pid {self.pid} {state}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def is_running(self):
        """True while the node's JVM is alive (its HTTP API may not be answering yet or any more)."""
        if self._process is not None:
            return self._process.poll() is None
        return _is_our_jvm(self.pid, self.kind)

    def health(self, timeout=2.0):
        """The cluster's health status ("green", "yellow", "red"), or None if the node does not answer."""
        return (_health(self.url, timeout) or {}).get("status")

    def kill(self):
        """SIGKILL the node at once (a lost machine) and wait for it to be gone."""
        _signal(self.pid, signal.SIGKILL)
        if not self._wait_for_exit(10):
            raise ImageMatchError(f"{self.kind} engine (pid {self.pid}) did not die after SIGKILL")

    def stop(self, timeout=30):
        """Stop the node: SIGTERM (the launcher closes the node cleanly), SIGKILL after ``timeout``
        seconds. Removes the state file. Does nothing if the node has already stopped."""
        if self.is_running():
            _signal(self.pid, signal.SIGTERM)
            if not self._wait_for_exit(timeout):
                _signal(self.pid, signal.SIGKILL)
                if not self._wait_for_exit(10):
                    raise ImageMatchError(f"{self.kind} engine (pid {self.pid}) did not die after SIGKILL")
        for name in (STATE_FILE, READY_FILE):
            _remove(self.data_dir / name)

    def _wait_for_exit(self, timeout):
        if self._process is not None:
            try:
                self._process.wait(timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.is_running():
                _wait_until_reaped(self.pid, _REAP_GRACE)
                return True
            time.sleep(0.1)
        return False

    def _state(self):
        return {"kind": self.kind, "pid": self.pid, "port": self.port, "url": self.url,
                "version": self.version, "data_dir": str(self.data_dir), "log": str(self.log_path)}


def start(kind="opensearch", port=None, data_dir=None, heap="512m", timeout=180,
          settings=None, stop_with_caller=False, java=None, mvn="mvn"):
    """Build if needed, start a node, wait until it answers, and return its :class:`LocalEngine`.

    Parameters
    ----------
    kind : {"opensearch", "elasticsearch"}
        OpenSearch 2.19 or Elasticsearch 7.17, from the launchers in ``engines/``.
    port : int or None
        The HTTP port on 127.0.0.1; None lets the node bind a free one itself (no race between
        choosing a port and binding it), which is then read back from the launcher.
    data_dir : path or None
        The node's folder (created if needed); default :func:`default_data_dir`. One node per
        folder: starting a second raises ImageMatchError naming the running one.
    heap : str
        The JVM heap, both -Xms and -Xmx ("512m", "2g"). At 512m an idle node's resident memory
        is 250-350 MB, up to about heap + 200 MB under load; give large benchmarks more.
    timeout : float
        Seconds to wait for the cluster health to be yellow or green. On expiry the node is
        killed and ImageMatchError carries the end of its log.
    settings : dict or None
        Extra engine settings, e.g. ``{"thread_pool.write.queue_size": 2000}``.
    stop_with_caller : bool
        Stop the node when this Python process ends, even if it is killed (for test runs); leave
        False for a node that must outlive the command that started it.
    java : str or None
        The java executable; default ``$JAVA_HOME/bin/java`` or ``java`` on PATH.
    mvn : str
        The Maven executable that builds the launcher.
    """
    if port is not None and not (isinstance(port, int) and 0 <= port <= 65535):
        raise InvalidParameterError(f"port {port!r}: must be an integer 0..65535")
    data_dir = _prepare(kind, data_dir, heap)
    launch = _Launch(kind, build(kind, mvn=mvn), java or _find_java(), heap, stop_with_caller)
    started = time.monotonic()
    engine = launch.spawn(data_dir, port=port, settings=settings)
    try:
        _wait_until_ready(engine, started + timeout, timeout)
    except BaseException:  # including KeyboardInterrupt: never leave a half-started JVM behind
        engine.kill()
        raise
    _write_json(data_dir / STATE_FILE, engine._state())
    return engine


def start_cluster(kind="opensearch", nodes=3, data_dir=None, heap="512m", timeout=300,
                  settings=None, stop_with_caller=False, java=None, mvn="mvn"):
    """Start a cluster of ``nodes`` nodes on loopback, wait until it has formed, and return its
    :class:`LocalCluster`.

    Each node has its folder under ``data_dir`` (``node-0``, ``node-1``...), a free HTTP port and
    a transport port chosen here, and finds the others through ``discovery.seed_hosts``; all are
    cluster-manager-eligible data nodes, the first cluster elects its manager among them. The
    other parameters are :func:`start`'s; ``timeout`` covers the whole cluster.
    """
    if type(nodes) is not int or nodes < 2:
        raise InvalidParameterError(f"nodes={nodes!r}: a cluster has at least 2 nodes")
    data_dir = _prepare(kind, data_dir, heap)
    launch = _Launch(kind, build(kind, mvn=mvn), java or _find_java(), heap, stop_with_caller)
    names = [f"node-{index}" for index in range(nodes)]
    # A name of its own, the same at every start in this folder: a node of another cluster on
    # this machine never joins it through a reused port, and a cluster stopped and started again
    # on its data is the same cluster.
    folder_hash = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:10]
    spec = {"kind": kind, "cluster": f"image-match-{folder_hash}",
            "names": names, "transport_ports": _free_ports(nodes), "heap": heap,
            "settings": dict(settings or {}), "stop_with_caller": stop_with_caller}
    cluster = LocalCluster(data_dir, spec, launch=launch)
    started = time.monotonic()
    try:
        for index in range(nodes):
            cluster.nodes[index] = cluster._spawn(index, bootstrap=True)
        for engine in cluster.nodes:
            _wait_until_ready(engine, started + timeout, timeout, cluster_size=nodes)
    except BaseException:
        for engine in cluster.nodes:
            if engine is not None:
                engine.kill()
        raise
    cluster._save()
    return cluster


def _prepare(kind, data_dir, heap):
    """The folder for a node or a cluster, checked: no engine running there, no other kind's data."""
    _check_kind(kind)
    if not re.fullmatch(r"[1-9][0-9]*[kmgKMG]?", str(heap)):
        raise InvalidParameterError(f"heap {heap!r}: expected a JVM size such as 512m or 2g")
    data_dir = Path(data_dir) if data_dir is not None else default_data_dir(kind)
    data_dir.mkdir(parents=True, exist_ok=True)
    running = status(data_dir)
    if running is not None:
        raise ImageMatchError(
            f"an {running.kind} engine is already running in {data_dir}: {running.url} (pid {running.pid})")
    # The two engines' on-disk formats are not compatible: refuse early and say why, instead of
    # letting the node fail on metadata "from the future".
    previous_kind = _read_text(data_dir / KIND_FILE)
    if previous_kind not in (None, kind):
        raise InvalidParameterError(
            f"{data_dir} holds the data of an {previous_kind} node; use another folder for {kind}")
    (data_dir / KIND_FILE).write_text(kind + "\n")
    return data_dir


class _Launch:
    """How to start a node of one kind: the JVM, its classpath and options."""

    def __init__(self, kind, classpath, java, heap, stop_with_caller):
        self.kind, self.classpath, self.java = kind, classpath, java
        self.heap, self.stop_with_caller = heap, stop_with_caller

    def spawn(self, data_dir, port=None, settings=None, launcher_args=()):
        """Start the node's JVM in ``data_dir`` and return its LocalEngine, without waiting."""
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        command = [
            self.java, f"-Xms{self.heap}", f"-Xmx{self.heap}",
            f"-D{_NETTY_PROCESSORS_PROPERTY[self.kind]}=false",
            # Embedded, the node has no uncaught-exception handler that exits on OutOfMemoryError
            # as a distribution's does; without this a node out of heap hangs instead of failing.
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true", "-Dfile.encoding=UTF-8",
            "-cp", self.classpath, _MAIN_CLASS[self.kind],
            "--data", str(data_dir), "--port", str(0 if port is None else port),
            "--ready-file", str(data_dir / READY_FILE), *launcher_args,
        ]
        if self.stop_with_caller:
            command += ["--watch-pid", str(os.getpid())]
        for key, value in (settings or {}).items():
            value = str(value).lower() if isinstance(value, bool) else value
            command.append(f"-E{key}={value}")
        _remove(data_dir / READY_FILE)
        with open(data_dir / LOG_FILE, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(command)}\n"
                      .encode())
            log.flush()
            # A session of its own: Ctrl-C in the caller's terminal does not reach the node, and
            # the node outlives the caller unless stop_with_caller is set.
            process = subprocess.Popen(command, cwd=data_dir, stdin=subprocess.DEVNULL, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        return LocalEngine(self.kind, process.pid, port, data_dir, process=process)


class LocalCluster:
    """A cluster started by :func:`start_cluster`, or found again by :func:`status`.

    ``nodes`` are the nodes' :class:`LocalEngine` (None for one not running), ``urls`` those that
    run. ``url``, ``pid``, ``version`` and ``log_path`` are the first running node's, so that a
    cluster can stand where a node does. ``kill(i)`` SIGKILLs node i (a lost machine),
    ``restart(i)`` starts it again on its data and waits until it has rejoined.
    """

    def __init__(self, data_dir, spec, nodes=None, launch=None):
        self.data_dir = Path(data_dir)
        self.spec = spec
        self.kind = spec["kind"]
        self.nodes = nodes or [None] * len(spec["names"])
        self._launch = launch

    def _node_dir(self, index):
        return self.data_dir / self.spec["names"][index]

    def _spawn(self, index, bootstrap=False):
        spec = self.spec
        peers = ",".join(f"127.0.0.1:{port}" for port in spec["transport_ports"])
        settings = {"transport.port": spec["transport_ports"][index], "discovery.seed_hosts": peers,
                    **spec["settings"]}
        if bootstrap:  # only when the cluster first forms: a node restarted on its data rejoins
            settings[_INITIAL_MANAGERS[self.kind]] = ",".join(spec["names"])
        if self._launch is None:
            self._launch = _Launch(self.kind, build(self.kind), _find_java(), spec["heap"],
                                   spec["stop_with_caller"])
        return self._launch.spawn(self._node_dir(index), settings=settings, launcher_args=(
            "--name", spec["names"][index], "--cluster", spec["cluster"]))

    def _save(self):
        for engine in self.nodes:
            if engine is not None:
                _write_json(engine.data_dir / STATE_FILE, engine._state())
        _write_json(self.data_dir / CLUSTER_FILE, self.spec)

    def _first(self):
        """The first running node, else the first started (stopped since), else an error."""
        started = [engine for engine in self.nodes if engine is not None]
        running = [engine for engine in started if engine.is_running()]
        if not started:
            raise ImageMatchError(f"no node of the {self.kind} cluster in {self.data_dir} runs")
        return (running or started)[0]

    @property
    def url(self):
        return self._first().url

    @property
    def urls(self):
        return [e.url for e in self.nodes if e is not None and e.is_running()]

    @property
    def pid(self):
        return self._first().pid

    @property
    def version(self):
        return self._first().version

    @property
    def log_path(self):
        return self._first().log_path

    def __repr__(self):
        return (f"<LocalCluster {self.kind} {self.version or ''} {len(self.urls)} of "
                f"{len(self.nodes)} nodes running, {self.url}>")

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def is_running(self):
        return any(engine is not None and engine.is_running() for engine in self.nodes)

    def health(self, timeout=2.0):
        """The cluster's health as the first node that answers says it, or None."""
        for engine in self.nodes:
            if engine is not None and engine.is_running():
                status = engine.health(timeout)
                if status is not None:
                    return status
        return None

    def wait_for(self, status="green", nodes=None, timeout=120):
        """Wait until the cluster reports ``status`` (or better) with ``nodes`` nodes (default:
        all of them); return the seconds it took, or raise ImageMatchError."""
        nodes = len(self.nodes) if nodes is None else nodes
        order = ("red", "yellow", "green")
        started = time.monotonic()
        while True:
            for engine in self.nodes:
                if engine is None or not engine.is_running():
                    continue
                health = _health(engine.url)
                if (health and health.get("number_of_nodes") == nodes
                        and order.index(health.get("status", "red")) >= order.index(status)):
                    return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise ImageMatchError(f"the {self.kind} cluster in {self.data_dir} did not reach "
                                      f"{status} with {nodes} nodes within {timeout} s")
            time.sleep(0.5)

    def kill(self, index):
        """SIGKILL node ``index``, as a machine lost; its data stays for ``restart``."""
        engine = self.nodes[index]
        if engine is not None:
            engine.kill()
            _remove(engine.data_dir / STATE_FILE)
        self.nodes[index] = None

    def restart(self, index, timeout=180):
        """Start node ``index`` again on its data and wait until it has rejoined the cluster."""
        if self.nodes[index] is not None and self.nodes[index].is_running():
            raise ImageMatchError(f"node {index} of {self.data_dir} is running")
        started = time.monotonic()
        engine = self._spawn(index)
        try:
            _wait_until_ready(engine, started + timeout, timeout)
        except BaseException:
            engine.kill()
            raise
        self.nodes[index] = engine
        self._save()
        return engine

    def stop(self, timeout=30):
        """Stop every node (SIGTERM, SIGKILL after ``timeout``); remove the state files."""
        for engine in self.nodes:
            if engine is not None:
                engine.stop(timeout)
        _remove(self.data_dir / CLUSTER_FILE)


def _free_ports(count):
    """``count`` TCP ports free on 127.0.0.1 now (a node binds its transport port itself later: another
    process may take one meanwhile, which the node's start then reports)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _health(url, timeout=2.0):
    """``GET /_cluster/health`` as a dict, or None if the node does not answer."""
    try:
        with _DIRECT.open(url + "/_cluster/health", timeout=timeout) as response:
            return json.load(response)
    except (OSError, ValueError):  # refused, reset, timed out, HTTP error, not JSON
        return None


def _wait_until_ready(engine, deadline, timeout, cluster_size=None):
    """Until the node answers with a yellow or green health (in a cluster of ``cluster_size``
    nodes, once they have all joined)."""
    ready_file = engine.data_dir / READY_FILE
    while True:
        if not engine.is_running():
            raise ImageMatchError(_with_log_tail(
                f"the {engine.kind} engine exited during start-up (exit {engine._process.returncode})",
                engine.log_path))
        # Ask for health only once the launcher says which port it bound: with a fixed port,
        # something else may be answering there while the node is still starting (or failing).
        if engine.version is None:
            ready = _read_json(ready_file)
            if ready is not None:
                engine.port, engine.version = ready["http_port"], ready["version"]
        if engine.version is not None:
            health = _health(engine.url)
            if health and health.get("status") in ("yellow", "green") and (
                    cluster_size is None or health.get("number_of_nodes") == cluster_size):
                return
        if time.monotonic() > deadline:
            raise ImageMatchError(_with_log_tail(
                f"the {engine.kind} engine did not become healthy within {timeout} s", engine.log_path))
        time.sleep(0.2)


def status(data_dir):
    """The engine recorded in ``data_dir``'s state file if it is still running, else None: a
    :class:`LocalEngine`, or a :class:`LocalCluster` for a folder that :func:`start_cluster` made
    (while any of its nodes runs).

    A state file left by a node that died is removed.
    """
    data_dir = Path(data_dir)
    spec = _read_json(data_dir / CLUSTER_FILE)
    if spec is not None:
        cluster = LocalCluster(data_dir, spec, nodes=[_node_status(data_dir / name)
                                                      for name in spec["names"]])
        if not cluster.is_running():
            _remove(data_dir / CLUSTER_FILE)
            return None
        return cluster
    return _node_status(data_dir)


def _node_status(data_dir):
    state = _read_json(data_dir / STATE_FILE)
    if state is None:
        return None
    engine = LocalEngine(state["kind"], state["pid"], state["port"], data_dir, version=state.get("version"))
    if not engine.is_running():
        for name in (STATE_FILE, READY_FILE):
            _remove(data_dir / name)
        return None
    return engine


def stop(data_dir, timeout=30):
    """Stop the engine recorded in ``data_dir``; return it, or None if none was running."""
    engine = status(data_dir)
    if engine is not None:
        engine.stop(timeout)
    return engine


def port_is_open(port, host="127.0.0.1", timeout=1.0):
    """True if something accepts TCP connections on host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _check_kind(kind):
    if kind not in ENGINES:
        raise InvalidParameterError(f"unknown engine {kind!r}: expected one of {', '.join(ENGINES)}")


def _find_java():
    java_home = os.environ.get("JAVA_HOME")
    if java_home and os.access(os.path.join(java_home, "bin", "java"), os.X_OK):
        return os.path.join(java_home, "bin", "java")
    found = shutil.which("java")
    if found is None:
        raise ImageMatchError("cannot start an engine: java is not on PATH and JAVA_HOME is not set; install a JDK 17")
    return found


_PF_KTHREAD = 0x00200000  # in /proc/<pid>/stat's flags (include/linux/sched.h)


def _is_our_jvm(pid, kind):
    """True if pid is alive and, where /proc tells, still runs this kind's launcher (a pid recorded
    in a state file may have been reused by an unrelated process since)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, but another user's: not ours
        return False
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no /proc (macOS): trust the signal
    try:
        if (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            # The JVM's first thread can end before the others while the node is still closing:
            # the process is dead only when no other thread is left (then it is a zombie waiting
            # for its parent to reap it).
            return len(os.listdir(proc / "task")) > 1
        cmdline = (proc / "cmdline").read_bytes()
        if not cmdline:
            # Empty while the process exits (its memory is gone, its sockets not yet closed): still
            # ours until it is a zombie. Kernel threads (flag PF_KTHREAD) have no command line either.
            return not int((proc / "stat").read_text().rsplit(")", 1)[1].split()[6]) & _PF_KTHREAD
        return _MAIN_CLASS[kind].encode() in cmdline
    except (OSError, IndexError, ValueError):
        return False


def _wait_until_reaped(pid, grace):
    """Wait up to ``grace`` seconds for a finished node to leave the process table.

    Its threads are gone and its port closed, but until its parent reaps it, it stays listed (a
    zombie, ``java <defunct>``): ``stop`` returning then looks as if the JVM outlived it. A node
    started by this process, which no longer holds its Popen, is reaped here; another's parent
    (init, once the starting command has ended) reaps it within about a second.
    """
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return  # gone (or no /proc to tell)
        if fields[0] not in ("Z", "X"):
            return  # the pid is already another process's
        if int(fields[1]) == os.getpid():
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass
        time.sleep(0.05)


def _signal(pid, signum):
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _with_log_tail(message, log_path, lines=20):
    """The message with the log's last line on the same line (the launcher prints the reason for a
    failed start last) and the lines before it below, for a traceback or a --verbose output."""
    try:
        tail = [line for line in log_path.read_text(errors="replace").splitlines() if line.strip()][-lines:]
    except OSError:
        tail = []
    if not tail:
        return f"{message} (log: {log_path}, empty)"
    return f"{message}: {tail[-1].strip()}\nlog: {log_path}, last lines:" + "".join("\n    " + line for line in tail)


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _read_text(path):
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _write_json(path, data):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
