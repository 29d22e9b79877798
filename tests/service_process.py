"""A real ``image-match serve`` process on a free loopback port, for tests.

    with ServiceProcess("sqlite:///x.db", env={"IMAGE_MATCH_API_KEYS": "k"}) as service:
        requests.get(service.url + "/ping")

It is started as users start it (``python -m image_match serve --port 0``), its URL read from the
line it prints, and stopped with SIGTERM (``stop`` says how it ended); its stderr (the JSON access
log) is kept in a file.
"""

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

import requests

from redis_server import die_with_parent

_URL = re.compile(rb"on (http://\S+)")


class ServiceProcess:
    def __init__(self, database, env=None, args=(), timeout=90):
        self.database = database
        self.log_file = tempfile.NamedTemporaryFile(prefix="image-match-serve-", suffix=".log",
                                                    delete=False)
        environment = dict(os.environ, **(env or {}))
        environment.pop("IMAGE_MATCH_DATABASE", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "image_match", "serve", "--db", database, "--port", "0",
             *args], stdout=subprocess.PIPE, stderr=self.log_file, env=environment,
            preexec_fn=die_with_parent)
        line = self.process.stdout.readline()
        found = _URL.search(line)
        if not found:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(f"the service did not start: {line!r}\n{self.log()}")
        self.url = found.group(1).decode()
        deadline = time.monotonic() + timeout
        while True:
            try:
                if requests.get(self.url + "/healthz", timeout=5).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass  # not listening yet, or its workers still starting (the socket is open)
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"the service did not answer:\n{self.log()}")
            time.sleep(0.1)

    def log(self):
        with open(self.log_file.name, "rb") as log:
            return log.read().decode("utf-8", "replace")

    def access_log(self):
        """The JSON lines of the access log, as dicts."""
        lines = []
        for line in self.log().splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    pass
        return lines

    def signal(self, number=signal.SIGTERM):
        self.process.send_signal(number)

    def stop(self, timeout=60):
        """SIGTERM, then wait; the exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        return self.process.returncode

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.stop()
        os.unlink(self.log_file.name)
