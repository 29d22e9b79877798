"""Screenshots of the moderation page for the README, made the way a moderator sees it.

    .venv/bin/python scripts/page_screenshots.py [--out docs/images]

Starts ``image-match serve`` on a free loopback port over a throwaway SQLite store holding the
sample photos of tests/data and a few planted copies (under IMAGE_MATCH_MEDIA_ROOTS), opens each
page in Debian's Chromium (/usr/bin/chromium, driven by Playwright; never ``playwright
install``), searches with a copy on the first, and writes ``page-check.png`` and
``page-review.png``: palette PNGs of a few dozen kilobytes. Prints how long each page took to
become interactive (DOMContentLoaded, on loopback).
"""

import argparse
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
PHOTOS = sorted((REPO / "tests" / "data").glob("p*.jpg"))
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1100, "height": 760}


def plant(folder):
    """The sample photos, and copies of three of them (smaller; smaller still; mirrored)."""
    for photo in PHOTOS:
        shutil.copy(photo, folder / photo.name)
    for photo, scale in ((PHOTOS[6], 0.6), (PHOTOS[6], 0.4), (PHOTOS[1], 0.5), (PHOTOS[12], 0.7)):
        with Image.open(photo) as image:
            copy = image.convert("RGB").resize((round(image.width * scale),
                                                round(image.height * scale)))
        copy.save(folder / f"copy-{round(scale * 100)}-{photo.name}", quality=80)
    with Image.open(PHOTOS[8]) as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / f"mirror-{PHOTOS[8].name}")


def serve(database, media):
    env = dict(os.environ, IMAGE_MATCH_MEDIA_ROOTS=str(media), IMAGE_MATCH_SIGNING_PROCESSES="1")
    env.pop("IMAGE_MATCH_API_KEYS", None)
    process = subprocess.Popen([sys.executable, "-m", "image_match", "serve", "--db", database,
                                "--port", "0"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, env=env)
    url = re.search(rb"on (http://\S+)", process.stdout.readline()).group(1).decode()
    for _ in range(600):
        try:
            urllib.request.urlopen(url + "/readyz", timeout=2)
            return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the service did not become ready")


def save(png, target):
    """A screenshot as a palette PNG (the page's flat colours and small photos keep well)."""
    with Image.open(io.BytesIO(png)) as shot:
        shot.convert("RGB").quantize(colors=96, method=Image.Quantize.MEDIANCUT,
                                     dither=Image.Dither.NONE).save(target, optimize=True)
    print(f"{target}: {target.stat().st_size // 1024} KB")


def interactive_ms(page):
    return page.evaluate("performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs" / "images"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="image-match-screenshots-") as folder:
        folder = Path(folder)
        media = folder / "photos"
        media.mkdir()
        plant(media)
        database = f"sqlite:///{folder / 'images.db'}"
        subprocess.run([sys.executable, "-m", "image_match", "add", "--db", database, str(media)],
                       check=True, stdout=subprocess.DEVNULL)
        query = folder / "upload.jpg"
        with Image.open(PHOTOS[6]) as image:
            image.convert("RGB").resize((image.width // 2, image.height // 2)).save(query,
                                                                                     quality=70)
        process, url = serve(database, media)
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM)
                page = browser.new_page(viewport=VIEWPORT)
                page.goto(url + "/")
                print(f"/ interactive after {interactive_ms(page):.0f} ms")
                page.get_by_label("Image", exact=True).set_input_files(str(query))
                page.get_by_role("button", name="Search").click()
                page.locator("#matches .match img").nth(2).wait_for()
                page.wait_for_load_state("networkidle")
                save(page.screenshot(), out / "page-check.png")
                page.goto(url + "/review")
                print(f"/review interactive after {interactive_ms(page):.0f} ms")
                page.locator(".group img").first.wait_for()
                page.wait_for_load_state("networkidle")
                save(page.screenshot(), out / "page-review.png")
                browser.close()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(60)


if __name__ == "__main__":
    main()
