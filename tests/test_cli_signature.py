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


def test_compare_finds_a_mirror_image_by_default_and_turns_with_all_orientations(tmp_path):
    from PIL import Image

    flipped, turned = tmp_path / "flipped.png", tmp_path / "turned.png"
    with Image.open(PHOTO) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(flipped)
        image.transpose(Image.Transpose.ROTATE_90).save(turned)
    plain = json.loads(run("compare", "--json", "--no-mirror", PHOTO, flipped).output)
    assert plain["match"] is False and plain["via"] == "identity"
    mirrored = json.loads(run("compare", "--json", PHOTO, flipped).output)
    assert mirrored["match"] is True and mirrored["via"].startswith("flip left-right of ")
    assert json.loads(run("compare", "--json", PHOTO, turned).output)["match"] is False
    oriented = json.loads(run("compare", "--json", "--all-orientations", PHOTO, turned).output)
    assert oriented["match"] is True and oriented["orientation"] in ("rotate 90", "rotate 270")
    # Through an orientation a distance counts ORIENTATION_MARGIN more than the turned pixels'.
    assert oriented["distance"] >= 0.05


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
