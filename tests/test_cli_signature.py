"""image-match signature / compare: output, exit codes, one-line errors."""

import json
import subprocess
import sys

import numpy as np
from click.testing import CliRunner

from image_match.cli import main
from image_match.goldberg import ImageSignature

from conftest import DATA, PHOTO, photos


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_signature_prints_the_signature():
    result = run("signature", "--exact", PHOTO)
    assert result.exit_code == 0, result.output
    path, values = result.output.strip().split("\t")
    assert path == str(PHOTO)
    expected = ImageSignature(draft=False).generate_signature(PHOTO)
    np.testing.assert_array_equal(np.array(values.split(), dtype=int), expected)


def test_signature_json_with_words_and_a_bad_file(tmp_path):
    missing = tmp_path / "missing.jpg"
    result = run("signature", "--json", "--words", PHOTO, missing)
    assert result.exit_code == 1
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[0]["image"] == str(PHOTO) and len(lines[0]["signature"]) == 648
    assert len(lines[0]["words"]) == 63 and lines[0]["featureless"] is False
    assert lines[1] == {"image": str(missing), "error": f"{missing}: no such file"}


def test_compare_same_and_different_pictures():
    first, second = photos()[:2]
    same = run("compare", "--json", first, first)
    assert same.exit_code == 0
    assert json.loads(same.output)["distance"] == 0.0 and json.loads(same.output)["match"] is True
    different = json.loads(run("compare", "--json", first, second).output)
    assert different["distance"] > 0.45 and different["match"] is False


def test_compare_all_orientations_finds_a_flip(tmp_path):
    from PIL import Image

    flipped = tmp_path / "flipped.png"
    with Image.open(PHOTO) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
    plain = json.loads(run("compare", "--json", PHOTO, flipped).output)
    oriented = json.loads(run("compare", "--json", "--all-orientations", PHOTO, flipped).output)
    assert plain["match"] is False
    assert oriented["match"] is True and oriented["orientation"] == "flip left-right"


def test_compare_missing_file_is_one_line_and_exit_1(tmp_path):
    result = run("compare", PHOTO, tmp_path / "nope.jpg")
    assert result.exit_code == 1
    assert result.output.strip() == f"error: {tmp_path / 'nope.jpg'}: no such file"


def test_usage_mistakes_exit_2():
    assert run("compare", PHOTO).exit_code == 2
    assert run("compare", "--cutoff", "7", PHOTO, PHOTO).exit_code == 2
    assert run("signature").exit_code == 2


def test_entry_point_runs_as_a_real_process():
    result = subprocess.run([sys.executable, "-m", "image_match", "compare", str(PHOTO),
                             str(DATA / "nope.jpg")], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: {DATA / 'nope.jpg'}: no such file"
    assert "Traceback" not in result.stderr
