"""image-match dedupe: a folder of real photographs with planted copies (resized, recompressed,
flipped, slightly cropped, watermarked, in another format) must come back as exactly the planted
groups; then the report formats, --keep, --move, --delete and the store modes."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from image_match import cli_dedupe
from image_match.cli import main
from image_match.drivers import open_database

from conftest import SHARED_CORPUS, photos


def run(*args, input=None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def lines(result):
    return [json.loads(line) for line in result.stdout.splitlines()]


# --- the planted folder ---------------------------------------------------------------------------

def _resize(image, scale):
    return image.resize((round(image.width * scale), round(image.height * scale)),
                        Image.Resampling.LANCZOS)


def _crop(image, fraction):
    dx, dy = round(image.width * fraction), round(image.height * fraction)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _watermark(image):
    marked = image.convert("RGBA")
    layer = Image.new("RGBA", marked.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    box = (marked.width - marked.width // 3, marked.height - marked.height // 8,
           marked.width - 4, marked.height - 4)
    draw.rectangle(box, fill=(255, 255, 255, 110))
    draw.text((box[0] + 6, box[1] + 2), "(c) image-match stock", fill=(0, 0, 0, 200))
    return Image.alpha_composite(marked, layer).convert("RGB")


# name -> (how the copy is made, file extension, save options)
TRANSFORMS = {
    "resize": (lambda im: _resize(im, 0.5), ".jpg", {"quality": 90}),
    "recompress": (lambda im: im, ".jpg", {"quality": 20}),
    "flip": (lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT), ".jpg", {"quality": 90}),
    "crop": (lambda im: _crop(im, 0.02), ".jpg", {"quality": 90}),
    "watermark": (_watermark, ".jpg", {"quality": 90}),
    "png": (lambda im: im, ".png", {}),
    "webp": (lambda im: _resize(im, 0.7), ".webp", {"quality": 80}),
}

# Which photo gets which copies; the other photos are alone (distractors).
PLANTED = [
    ["resize"], ["recompress"], ["flip"], ["crop"], ["watermark"], ["png"],
    ["resize", "webp", "recompress", "watermark"], ["crop", "flip"],
]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """``(folder, groups)``: the originals in folder/, their copies in folder/copies/, and the
    planted groups as sets of paths relative to the folder."""
    folder = tmp_path_factory.mktemp("planted")
    (folder / "copies").mkdir()
    groups = []
    for index, photo in enumerate(photos()):
        shutil.copy(photo, folder / photo.name)
        if index >= len(PLANTED):
            continue
        group = {photo.name}
        with Image.open(photo) as image:
            image = image.convert("RGB")
            for name in PLANTED[index]:
                make, extension, options = TRANSFORMS[name]
                relative = f"copies/{photo.stem}-{name}{extension}"
                make(image).save(folder / relative, **options)
                group.add(relative)
        groups.append(frozenset(group))
    return folder, groups


def found_groups(result, folder):
    return [frozenset(os.path.relpath(m["path"], folder) for m in group["members"])
            for group in lines(result)]


def precision_recall(found, planted):
    correct = len(set(found) & set(planted))
    return correct / max(len(found), 1), correct / len(planted)


def test_dedupe_finds_exactly_the_planted_groups(planted, monkeypatch, tmp_path):
    folder, groups = planted
    monkeypatch.delenv("IMAGE_MATCH_DATABASE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))

    result = run("dedupe", "--json", folder)  # mirror images and turns are grouped by default
    assert result.exit_code == 0, result.output
    found = found_groups(result, folder)
    assert found == found_groups(run("dedupe", "--json", "--all-orientations", folder), folder)
    precision, recall = precision_recall(found, groups)
    print(f"\ndedupe: {len(found)} groups found, {len(groups)} planted, "
          f"{sum(map(len, groups))} planted images among {len(list(folder.rglob('*.*')))}: "
          f"precision {precision:.3f}, recall {recall:.3f}")
    assert sorted(map(sorted, found)) == sorted(map(sorted, groups))
    assert precision == recall == 1.0

    # With --no-orientations the flipped copies are not grouped, and nothing else is lost.
    plain = found_groups(run("dedupe", "--json", "--no-orientations", folder), folder)
    precision, recall = precision_recall(plain, groups)
    print(f"dedupe --no-orientations: precision {precision:.3f}, recall {recall:.3f}")
    without_flips = {frozenset(p for p in group if not p.endswith("-flip.jpg")) for group in groups}
    assert set(plain) == {group for group in without_flips if len(group) > 1}

    # A folder is compared in a temporary store: the user's store is not created.
    assert not (tmp_path / "data").exists()


def test_members_carry_size_resolution_and_distance_to_the_kept_one(planted):
    folder, _ = planted
    for group in lines(run("dedupe", "--json", "--all-orientations", folder)):
        members = group["members"]
        assert group["keep"] == members[0]["path"] and members[0]["keep"] is True
        assert members[0]["dist"] == 0.0 and members[0]["action"] == "keep"
        assert all(m["action"] == "duplicate" and not m["keep"] for m in members[1:])
        assert [m["dist"] for m in members[1:]] == sorted(m["dist"] for m in members[1:])
        for member in members:
            with Image.open(member["path"]) as image:
                assert (member["width"], member["height"]) == image.size
            assert member["bytes"] == os.path.getsize(member["path"])
            assert member["id"] is None and 0 <= member["dist"] < 0.45
        # --keep largest (the default): the most pixels, then EXIF, a camera format, the most bytes
        rank = [(m["width"] * m["height"], m["exif"], m["format"] in cli_dedupe.CAMERA_FORMATS,
                 m["bytes"]) for m in members]
        assert rank[0] == max(rank)


def test_table_and_csv(planted):
    folder, groups = planted
    table = run("dedupe", "--all-orientations", folder)
    assert table.exit_code == 0
    assert table.stdout.splitlines()[0] == "group 1: 5 images"
    images, copies = len(photos()) + sum(map(len, PLANTED)), sum(map(len, PLANTED))
    assert f"{len(groups)} groups of near-duplicates among {images} images: {copies} copies besides " \
           "the kept ones; nothing moved or deleted" in table.stderr
    rows = list(csv.DictReader(io.StringIO(run("dedupe", "--format", "csv", "--all-orientations",
                                               folder).stdout)))
    assert list(rows[0]) == list(cli_dedupe.CSV_COLUMNS)
    assert len(rows) == sum(map(len, groups))
    assert {row["action"] for row in rows} == {"keep", "duplicate"}


@pytest.mark.parametrize("policy", ["largest", "smallest", "oldest", "newest", "first"])
def test_keep_policies(policy, tmp_path):
    photo = photos()[0]
    with Image.open(photo) as image:
        image = image.convert("RGB")
        image.save(tmp_path / "b-full.jpg", quality=95)
        _resize(image, 0.5).save(tmp_path / "a-half.jpg", quality=95)
        _resize(image, 0.75).save(tmp_path / "c-three-quarters.jpg", quality=95)
    os.utime(tmp_path / "c-three-quarters.jpg", (1_000_000, 1_000_000))
    os.utime(tmp_path / "a-half.jpg", (2_000_000_000, 2_000_000_000))
    expected = {"largest": "b-full.jpg", "smallest": "a-half.jpg", "oldest": "c-three-quarters.jpg",
                "newest": "a-half.jpg", "first": "a-half.jpg"}[policy]
    group = lines(run("dedupe", "--json", "--keep", policy, tmp_path))[0]
    assert Path(group["keep"]).name == expected


def test_keep_largest_breaks_ties_in_favour_of_the_original_looking_file(tmp_path):
    """Of files with the same pixels, --keep largest keeps the one with EXIF, then the one in a
    camera format over a lossless re-encode (more bytes, no more detail), then the most bytes."""
    with Image.open(photos()[0]) as image:
        image = image.convert("RGB")
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon", "Canon EOS 5D"  # Make, Model
    image.save(tmp_path / "c-camera.jpg", quality=85, exif=exif)
    image.save(tmp_path / "a-converted.png")                 # 7-8 times the bytes of the JPEG
    image.save(tmp_path / "b-resaved.jpg", quality=98)       # more bytes than the original
    image.save(tmp_path / "d-recompressed.jpg", quality=60)

    def kept(*names):
        folder = tmp_path / "-".join(names)
        folder.mkdir()
        for name in names:
            shutil.copy(tmp_path / name, folder / name)
        groups = lines(run("dedupe", "--json", folder))
        assert len(groups) == 1 and len(groups[0]["members"]) == len(names), groups
        return Path(groups[0]["keep"]).name

    assert kept("c-camera.jpg", "a-converted.png", "b-resaved.jpg", "d-recompressed.jpg") == "c-camera.jpg"
    assert kept("a-converted.png", "b-resaved.jpg", "d-recompressed.jpg") == "b-resaved.jpg"
    assert kept("a-converted.png", "d-recompressed.jpg") == "d-recompressed.jpg"
    # More pixels still come first: a larger PNG is kept over a smaller camera JPEG.
    _resize(image, 0.5).save(tmp_path / "e-half.jpg", quality=95, exif=exif)
    assert kept("a-converted.png", "e-half.jpg") == "a-converted.png"
    table = run("dedupe", tmp_path / "c-camera.jpg-a-converted.png-b-resaved.jpg-d-recompressed.jpg")
    assert table.stdout.splitlines()[1].split()[:4] == ["keep", "0.0000", f"{image.width}x{image.height}",
                                                       "JPEG"]
    assert table.stdout.splitlines()[1].split()[4] == "EXIF"


# --- acting ----------------------------------------------------------------------------------------

@pytest.fixture
def copies(planted, tmp_path):
    """A writable copy of the planted folder."""
    folder, groups = planted
    shutil.copytree(folder, tmp_path / "pics")
    return tmp_path / "pics", groups


def test_move_keeps_relative_paths_and_never_overwrites(copies, tmp_path):
    folder, groups = copies
    dest = tmp_path / "dupes"
    (dest / "copies").mkdir(parents=True)
    taken = sorted((folder / "copies").iterdir())[0]
    (dest / "copies" / taken.name).write_bytes(b"already here")
    result = run("dedupe", "--json", "--all-orientations", "--move", dest, folder)
    assert result.exit_code == 0, result.output
    moved = [m for group in lines(result) for m in group["members"] if not m["keep"]]
    assert len(moved) == sum(len(g) - 1 for g in groups)
    for member in moved:
        assert member["action"] == "moved" and not os.path.exists(member["path"])
        assert os.path.isfile(member["to"])
        assert os.path.dirname(os.path.relpath(member["to"], dest)) == \
            os.path.dirname(os.path.relpath(member["path"], folder))
    assert (dest / "copies" / taken.name).read_bytes() == b"already here"
    stem, extension = os.path.splitext(taken.name)
    assert any(m["path"] == str(taken) for m in moved)  # a resized copy: never the kept one
    assert (dest / "copies" / f"{stem}-1{extension}").is_file()
    for group in lines(result):
        assert os.path.isfile(group["keep"])
    assert run("dedupe", "--json", "--all-orientations", folder).stdout == ""


def test_move_report_lines_in_the_table(copies, tmp_path):
    folder, groups = copies
    result = run("dedupe", "--move", tmp_path / "dupes", folder)
    moved = [line for line in result.stdout.splitlines() if line.strip().startswith("moved")]
    assert moved and all(" -> " in line for line in moved)
    assert len(moved) == sum(1 for p in (tmp_path / "dupes").rglob("*") if p.is_file())
    assert f"{len(moved)} moved (into {tmp_path / 'dupes'})" in result.stderr


def test_delete_asks_or_needs_yes(copies, monkeypatch):
    folder, groups = copies
    before = sorted(folder.rglob("*"))
    refused = run("dedupe", "--delete", folder)  # no terminal
    assert refused.exit_code == 2
    assert refused.stderr.strip() == "error: dedupe --delete needs --yes when it cannot ask (no terminal)"
    monkeypatch.setattr(cli_dedupe, "can_ask", lambda: True)
    declined = run("dedupe", "--delete", folder, input="n\n")
    assert declined.exit_code == 1 and "nothing deleted" in declined.stderr
    assert "would delete" in declined.stderr
    assert sorted(folder.rglob("*")) == before
    accepted = run("dedupe", "--delete", "--all-orientations", folder, input="y\n")
    assert accepted.exit_code == 0
    deleted = [line.split()[-1] for line in accepted.stdout.splitlines()
               if line.strip().startswith("deleted")]
    assert len(deleted) == sum(len(g) - 1 for g in groups)
    assert all(not os.path.exists(path) for path in deleted)
    assert len(list(folder.rglob("*.*"))) == len(photos())


def test_delete_yes_without_a_terminal(copies):
    folder, groups = copies
    result = run("dedupe", "--json", "--delete", "--yes", "--all-orientations", folder)
    assert result.exit_code == 0
    actions = [m["action"] for group in lines(result) for m in group["members"]]
    assert actions.count("deleted") == sum(len(g) - 1 for g in groups)
    assert actions.count("keep") == len(groups)


def test_delete_never_removes_the_file_a_kept_link_points_to(tmp_path):
    shutil.copy(photos()[0], tmp_path / "real.jpg")
    os.symlink(tmp_path / "real.jpg", tmp_path / "0-link.jpg")
    result = run("dedupe", "--json", "--delete", "--yes", "--keep", "first", tmp_path)
    group = lines(result)[0]
    assert group["keep"] == str(tmp_path / "0-link.jpg")
    assert group["members"][1]["action"] == "skipped"
    assert "links to this file" in group["members"][1]["error"]
    assert (tmp_path / "real.jpg").is_file()


# --- stores ---------------------------------------------------------------------------------------

def test_dedupe_the_store_deletes_files_and_records(copies, tmp_path):
    folder, groups = copies
    url = f"sqlite:///{tmp_path / 'store.db'}"
    assert run("add", "--db", url, folder).exit_code == 0
    report = lines(run("dedupe", "--json", "--no-orientations", "--db", url))
    assert len(report) == len(groups) - 1  # without orientations the store's words miss flips
    assert all(m["id"] for group in report for m in group["members"])
    oriented = lines(run("dedupe", "--json", "--db", url))
    assert {frozenset(os.path.relpath(m["path"], folder) for m in g["members"]) for g in oriented} == \
        set(groups)
    result = run("dedupe", "--json", "--all-orientations", "--delete", "--yes", "--db", url)
    assert result.exit_code == 0
    gone = [m for group in lines(result) for m in group["members"] if m["action"] == "deleted"]
    assert all(not os.path.exists(m["path"]) for m in gone)
    assert open_database(url).count() == len(photos())
    assert run("dedupe", "--json", "--all-orientations", "--db", url).stdout == ""


def test_in_store_adds_the_folder_and_reports_its_groups(copies, tmp_path, monkeypatch):
    folder, groups = copies
    url = f"sqlite:///{tmp_path / 'store.db'}"
    monkeypatch.setenv("IMAGE_MATCH_DATABASE", url)
    # The environment's store is not used for a folder without --in-store ...
    run("dedupe", folder)
    assert not (tmp_path / "store.db").exists()
    # ... and is with it: groups among the folder's images and what the store held before.
    other = tmp_path / "elsewhere"
    other.mkdir()
    shutil.copy(folder / "copies" / sorted(os.listdir(folder / "copies"))[0], other / "x.jpg")
    run("add", other)
    result = run("dedupe", "--json", "--in-store", folder / "copies")
    assert result.exit_code == 0
    report = lines(result)
    assert report and all(m["id"] for g in report for m in g["members"])
    assert any(m["path"] == str(other / "x.jpg") for g in report for m in g["members"])
    assert open_database(url).count() == 1 + len(list((folder / "copies").iterdir()))


def test_missing_dir_and_unreadable_files(copies, tmp_path):
    folder, _ = copies
    missing = run("dedupe", folder, tmp_path / "nope")
    assert missing.exit_code == 1 and missing.stdout == ""
    assert missing.stderr.strip() == f"error: {tmp_path / 'nope'}: no such file"
    (folder / "broken.jpg").write_bytes(b"garbage")
    result = run("dedupe", "--json", folder)
    assert result.exit_code == 1
    assert lines(result)  # the groups are still reported
    assert f"skipped: {folder / 'broken.jpg'}: " in result.stderr


# --- the real entry point ---------------------------------------------------------------------------

def _entry_point():
    script = Path(sys.executable).with_name("image-match")
    return [str(script)] if script.exists() else [sys.executable, "-m", "image_match"]


def test_entry_point_dedupe_and_errors(planted, tmp_path):
    folder, groups = planted
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))
    env.pop("IMAGE_MATCH_DATABASE", None)
    result = subprocess.run(_entry_point() + ["dedupe", "--json", "--all-orientations", str(folder)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == len(groups)
    assert result.stderr == ""  # --json, a pipe: no progress bar, no summary
    for args, status, message in [
        (["dedupe", str(tmp_path / "nope")], 1, f"error: {tmp_path / 'nope'}: no such file"),
        (["dedupe", "--keep", "biggest", str(folder)], 2, "error: Invalid value for '--keep'"),
        (["count", "--db", "http://127.0.0.1:9/x"], 1, "error: http://127.0.0.1:9/x: cannot reach"),
        (["search", "--db", "ftp://x", str(folder)], 2, "error: ftp://x: unsupported store"),
    ]:
        failed = subprocess.run([sys.executable, "-m", "image_match"] + args, capture_output=True,
                                text=True, env=env)
        assert failed.returncode == status, (args, failed.stderr)
        assert failed.stderr.startswith(message) and failed.stderr.count("\n") == 1, failed.stderr
        assert "Traceback" not in failed.stderr


def test_progress_bar_on_a_terminal_only(planted, tmp_path):
    import pty

    folder, _ = planted
    env = dict(os.environ, IMAGE_MATCH_DATABASE=f"sqlite:///{tmp_path / 'store.db'}")
    primary, secondary = pty.openpty()
    try:
        process = subprocess.Popen(_entry_point() + ["add", str(folder)], stdout=subprocess.PIPE,
                                   stderr=secondary, env=env)
        os.close(secondary)
        output = b""
        while True:
            try:
                chunk = os.read(primary, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        stdout, _ = process.communicate(timeout=120)
    finally:
        os.close(primary)
    assert process.returncode == 0
    assert b"adding" in output and b"100%" in output
    total = len(photos()) + sum(map(len, PLANTED))
    assert stdout.decode().startswith(f"added {total}, replaced 0, failed 0")
    piped = subprocess.run(_entry_point() + ["add", str(folder)], capture_output=True, text=True,
                           env=env)
    assert piped.stderr == "" and piped.stdout.startswith(f"added 0, replaced {total}, failed 0")


@pytest.mark.skipif(not SHARED_CORPUS.is_dir(), reason="the dev corpus (../shared/corpus/dev) is not here")
def test_dedupe_the_dev_corpus_with_planted_copies(tmp_path):
    """244 photos of the dev corpus, one planted copy each for 70 of them (each transformation 10
    times): no false group, and nearly every copy joins its original (a 320x213 photo halved to
    160x107 is at 0.46 from it: too small to keep its signature)."""
    originals = sorted(SHARED_CORPUS.glob("*.jpg"))
    names = sorted(TRANSFORMS)
    planted = set()
    for index, photo in enumerate(originals[:10 * len(names)]):
        name = names[index % len(names)]
        make, extension, options = TRANSFORMS[name]
        copy = tmp_path / f"{photo.stem}-{name}{extension}"
        with Image.open(photo) as image:
            make(image.convert("RGB")).save(copy, **options)
        planted.add(frozenset({str(photo), str(copy)}))
    result = run("dedupe", "--json", SHARED_CORPUS, tmp_path)  # orientations, central crops
    assert result.exit_code == 0, result.output
    found = [frozenset(m["path"] for m in group["members"]) for group in lines(result)]
    precision, recall = precision_recall(found, planted)
    print(f"\ndev corpus: {len(originals)} photos + {len(planted)} planted copies: {len(found)} groups "
          f"found, precision {precision:.3f}, recall {recall:.3f}; missed: "
          f"{sorted(min(g, key=len) for g in planted - set(found))}")
    assert precision == 1.0 and recall >= 0.95


def test_store_records_that_are_not_local_files(tmp_path):
    """URL records: no size, never moved, deleted from the store only; a kept record whose file is
    gone protects the others."""
    local = f"sqlite:///{tmp_path / 'local.db'}"
    photo = photos()[0]
    shutil.copy(photo, tmp_path / "a.jpg")
    shutil.copy(photo, tmp_path / "b.jpg")
    run("add", "--db", local, tmp_path / "a.jpg", tmp_path / "b.jpg")
    records = [json.loads(line) for line in run("export", "--db", local).stdout.splitlines()]
    urls = f"sqlite:///{tmp_path / 'urls.db'}"
    dump = "".join(json.dumps(dict(r, id=f"u{n}", path=f"https://example.org/{n}.jpg")) + "\n"
                   for n, r in enumerate(records))
    assert run("import", "--db", urls, input=dump).exit_code == 0

    moved = lines(run("dedupe", "--json", "--move", tmp_path / "dupes", "--db", urls))[0]
    other = moved["members"][1]
    assert other["width"] is other["height"] is other["bytes"] is None
    assert other["action"] == "skipped" and other["error"] == "not a local file"
    deleted = lines(run("dedupe", "--json", "--delete", "--yes", "--db", urls))[0]
    assert deleted["members"][1]["action"] == "deleted"
    assert run("count", "--db", urls).stdout.strip() == "1"

    (tmp_path / "a.jpg").unlink()  # the record sorting first now points at nothing
    kept_gone = lines(run("dedupe", "--json", "--keep", "first", "--delete", "--yes", "--db", local))[0]
    assert kept_gone["keep"] == str(tmp_path / "a.jpg")
    assert kept_gone["members"][1]["action"] == "skipped"
    assert "is missing" in kept_gone["members"][1]["error"]
    assert (tmp_path / "b.jpg").is_file() and run("count", "--db", local).stdout.strip() == "2"
    # --keep largest prefers a member whose file exists
    largest = lines(run("dedupe", "--json", "--delete", "--yes", "--db", local))[0]
    assert largest["keep"] == str(tmp_path / "b.jpg") and largest["members"][1]["action"] == "deleted"
    assert run("count", "--db", local).stdout.strip() == "1"
