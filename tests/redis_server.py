"""A real redis-server for tests, on a free loopback port, in a temporary folder.

    def test_something(redis_url): ...              # redis://127.0.0.1:PORT/0, one server per session
    def test_restart(redis_server):
        redis_server.restart()                        # stop, then start again on the same port and data

The server keeps an append-only file synced at every write, so a restart (or a kill) loses
nothing, as a production broker for image-match should be configured. It is Debian's
``redis-server``; tests that need it are skipped when it is not installed, unless
``IMAGE_MATCH_TEST_REQUIRE_ENGINES`` is set.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

import pytest


def die_with_parent():
    """For ``Popen(preexec_fn=...)``: the child gets SIGTERM when the process that started it dies,
    even by SIGKILL, so that an interrupted test run leaves no server behind (Linux; elsewhere
    nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """One redis-server process in ``directory``; ``url(db)`` for its databases."""

    def __init__(self, directory, executable="redis-server", databases=64):
        self.directory = str(directory)
        self.executable = executable
        self.databases = databases
        self.port = None
        self.process = None

    def url(self, db=0):
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self, timeout=10.0):
        for _ in range(3):  # another process may take a free port before we bind it
            self.port = self.port or free_port()
            log = open(os.path.join(self.directory, "redis.log"), "ab")
            self.process = subprocess.Popen(
                [self.executable, "--bind", "127.0.0.1", "--port", str(self.port),
                 "--dir", self.directory, "--appendonly", "yes", "--appendfsync", "always",
                 "--save", "", "--databases", str(self.databases), "--daemonize", "no"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=die_with_parent)
            log.close()
            if self._wait_ready(timeout):
                return self
            self.stop(kill=True)
            self.port = None
        raise RuntimeError(f"redis-server did not start; see {self.directory}/redis.log")

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            if self.ping():
                return True
            time.sleep(0.05)
        return False

    def ping(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, kill=False):
        """Stop the server: SIGTERM (it syncs its data and exits) or, with ``kill``, SIGKILL."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self, down_for=0.0, kill=False):
        """Stop the server, wait ``down_for`` seconds, start it again on the same port and data."""
        self.stop(kill=kill)
        time.sleep(down_for)
        return self.start()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A running :class:`RedisServer`, shared by the session (stopped at its end)."""
    executable = shutil.which("redis-server")
    if executable is None:
        if os.environ.get("IMAGE_MATCH_TEST_REQUIRE_ENGINES"):
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path_factory.mktemp("redis"), executable).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_url(redis_server):
    """``redis://127.0.0.1:PORT/0`` of the session's real redis-server."""
    return redis_server.url(0)
