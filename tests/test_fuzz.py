"""Fuzzing that keeps running: a short round of the coverage-guided fuzzer (fuzz/run.py, atheris)
on each target, hypothesis' properties over the same checks (fuzz/targets.py), and the inputs the
fuzzers found, kept as tests.

The long runs are ``python fuzz/run.py all --seconds 3600`` (results in README.rst, "Fuzzing").
"""

import importlib.util
import io
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from image_match.drivers import parse_database_url
from image_match.errors import CorruptImageError
from image_match.goldberg import ImageSignature
from image_match.tasks.submit import absolute_sqlite

from conftest import DATA, photos

FUZZ = Path(__file__).resolve().parent.parent / "fuzz"
sys.path.insert(0, str(FUZZ))
from targets import check_image, check_key_values, check_store_url, split_texts  # noqa: E402

HAVE_ATHERIS = importlib.util.find_spec("atheris") is not None
REQUIRED = bool(os.environ.get("IMAGE_MATCH_TEST_REQUIRE_FUZZER"))


@pytest.mark.skipif(not HAVE_ATHERIS and not REQUIRED,
                    reason="atheris is not installed (pip install 'atheris>=2.3')")
@pytest.mark.parametrize("target, runs", [("image", 3000), ("store_url", 20000),
                                          ("key_value", 20000)])
def test_a_short_round_of_coverage_guided_fuzzing_finds_nothing(target, runs, tmp_path):
    result = subprocess.run([sys.executable, str(FUZZ / "run.py"), target, "--runs", str(runs),
                             "--workdir", str(tmp_path)], capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    row = result.stdout.strip().splitlines()[-1].split()
    assert row[0] == target and int(row[2].replace(",", "")) >= runs and row[-1] == "0", row


# --- hypothesis, over the same checks ------------------------------------------------------------

SEEDS = [path.read_bytes() for path in photos()[:3]] + [(DATA / "rgba.png").read_bytes()]


@st.composite
def mutated_files(draw):
    """A real file with bytes flipped, inserted, removed or cut off."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if action == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[where:where] = draw(st.binary(min_size=1, max_size=16))
        elif action == "delete":
            del data[where:where + draw(st.integers(1, 64))]
        elif where > 0:
            del data[where:]
        if not data:
            break
    return bytes(data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_files())
def test_mutated_real_files_sign_or_fail_with_image_load_error(data):
    check_image(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_sign_or_fail_with_image_load_error(data):
    check_image(data)


URL_PARTS = st.sampled_from(["sqlite:", "//", "/", "http:", "https:", "localhost", "[", "]", "::1",
                             ":", "@", "%", "%00", "%a5", "9200", "99999", "index", "user",
                             "\x00", "\udca5", "é", "?", "#", " "])


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(), st.lists(URL_PARTS, max_size=12).map("".join)))
def test_store_urls_parse_or_are_refused(text):
    check_store_url(text)


KEY_VALUE_PARTS = st.sampled_from(["a", "b", ".", "=", "1", "2.5", "-0", "1e400", "NaN", "true",
                                   "null", '"x"', "[1]", "{}", "\udce9", " ", "é"])


@settings(max_examples=500, deadline=None)
@given(st.lists(st.one_of(st.text(max_size=20),
                          st.lists(KEY_VALUE_PARTS, max_size=8).map("".join)), max_size=6))
def test_key_value_options_parse_into_what_the_store_accepts(texts):
    check_key_values(texts)


@given(st.binary(max_size=64))
def test_fuzzer_bytes_split_into_command_line_texts(data):
    assert all(isinstance(text, str) for text in split_texts(data))


# --- what the fuzzers found ----------------------------------------------------------------------

def test_a_dds_file_of_a_pixel_format_pillow_does_not_know_is_corrupt():
    """fuzz/run.py image: Pillow raised NotImplementedError, which went through the loader."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, "DDS")
    data = bytearray(buffer.getvalue())
    data[80:84] = struct.pack("<I", 0x400000)  # the pixel format's flags
    with pytest.raises(CorruptImageError, match="NotImplementedError: Unknown pixel format"):
        ImageSignature().generate_signature(bytes(data))


def test_a_relative_sqlite_store_whose_name_is_not_utf8_is_made_absolute(tmp_path, monkeypatch):
    """fuzz/run.py store_url: ingestion's absolute_sqlite raised UnicodeEncodeError."""
    monkeypatch.chdir(tmp_path)
    url = absolute_sqlite("sqlite:///caf\udce9.db")
    assert url == f"sqlite:///{tmp_path}/caf%E9.db"
    assert parse_database_url(url) == ("sqlite", f"{tmp_path}/caf\udce9.db")
