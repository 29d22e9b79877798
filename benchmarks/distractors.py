"""Distractors for search benchmarks: distinct pictures made from the corpus's photos.

A store of a million records needs a million pictures that are not copies of each other nor of
the queries, with the statistics of real photographs. ``collage`` makes one from a seeded
generator: the canvas (a random size and aspect) is cut into 3 to 6 rectangles by random
guillotine cuts, and each is filled with a piece of a random photo, taken at a random place and
scale, flipped or not, with its own colour change (a gain and an offset per channel and a gamma).
No piece is a near-duplicate of its photo (a piece is at most half the canvas and never the
whole photo), and the seams between pieces are edges no photo has in the same place.

``check_distances`` compares the distances a set of distractors has to the queries and to each
other with the distances between the corpus's photos themselves (unrelated pictures); the
benchmarks print it, so that a distractor set that is easier or harder than real photos shows.
"""

import os

import numpy as np
from PIL import Image

#: The long side photos are reduced to before pieces are cut from them.
PHOTO_SIDE = 512


def load_photos(paths, side=PHOTO_SIDE):
    """The photos as RGB PIL images no larger than ``side`` (the pieces' source)."""
    photos = []
    for path in paths:
        with Image.open(path) as image:
            rgb = image.convert("RGB")
        rgb.thumbnail((side, side), Image.Resampling.BILINEAR)
        photos.append(rgb)
    return photos


def _cells(rng, height, width, count):
    """``count`` rectangles (top, bottom, left, right) tiling the canvas: the largest is cut in
    two, across its longer side (mostly), at 30-70% of it, until there are enough."""
    cells = [(0, height, 0, width)]
    while len(cells) < count:
        largest = int(np.argmax([(b - t) * (r - l) for t, b, l, r in cells]))
        top, bottom, left, right = cells.pop(largest)
        if (bottom - top) > (right - left) * rng.uniform(0.6, 1.6):
            cut = top + int((bottom - top) * rng.uniform(0.3, 0.7))
            cells += [(top, cut, left, right), (cut, bottom, left, right)]
        else:
            cut = left + int((right - left) * rng.uniform(0.3, 0.7))
            cells += [(top, bottom, left, cut), (top, bottom, cut, right)]
    return cells


def _colour_table(rng):
    """A lookup table (768 entries, R then G then B) applying a gain (0.6-1.4) and an offset
    (-15%..15%) per channel and one gamma (0.6-1.6): a colour change."""
    levels = np.arange(256) / 255.0
    tables = []
    gamma = rng.uniform(0.6, 1.6)
    for _ in range(3):
        changed = np.clip(levels * rng.uniform(0.6, 1.4) + rng.uniform(-0.15, 0.15), 0, 1) ** gamma
        tables.append(np.round(changed * 255).astype(int))
    return np.concatenate(tables).tolist()


def collage(photos, rng):
    """One distractor: an RGB PIL image of 200-400 pixels in height, 0.6-1.7 times as wide, made
    of 3-6 pieces of ``photos`` (see the module's docstring). Deterministic for ``rng``'s state."""
    height = int(rng.integers(200, 401))
    width = int(height * rng.uniform(0.6, 1.7))
    canvas = Image.new("RGB", (width, height))
    for top, bottom, left, right in _cells(rng, height, width, int(rng.integers(3, 7))):
        photo = photos[int(rng.integers(len(photos)))]
        cell_height, cell_width = bottom - top, right - left
        scale = rng.uniform(0.5, 2.0)  # photo pixels per canvas pixel
        piece_height = min(photo.height - 1, max(4, int(cell_height * scale)))
        piece_width = min(photo.width - 1, max(4, int(cell_width * scale)))
        y = int(rng.integers(0, photo.height - piece_height + 1))
        x = int(rng.integers(0, photo.width - piece_width + 1))
        piece = photo.crop((x, y, x + piece_width, y + piece_height))
        if rng.random() < 0.5:
            piece = piece.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        piece = piece.resize((cell_width, cell_height), Image.Resampling.BILINEAR)
        canvas.paste(piece.point(_colour_table(rng)), (left, top))
    return canvas


# --- signatures of many distractors, generated in parallel and cached --------------------------

CHUNK = 10_000

_PHOTOS = None


def _chunk_path(cache, seed, chunk, areas):
    tag = "-".join(f"{area:g}" for area in areas) or "none"
    return cache / f"collages-{seed}-{chunk}-{CHUNK}-w{tag}.npy"


def _signed_chunk(job):
    """The record signatures (own, then crop windows') of ``CHUNK`` collages from the random
    stream (seed, chunk), saved to the cache: (CHUNK, 1 + len(areas), L) int8."""
    from image_match.goldberg import ImageSignature

    cache, seed, chunk, areas = job
    path = _chunk_path(cache, seed, chunk, areas)
    if path.exists():
        return chunk
    rng = np.random.default_rng([seed, chunk])
    generator = ImageSignature()
    signed = np.stack([generator.record_signatures(np.asarray(collage(_PHOTOS, rng)), areas=areas)
                       for _ in range(CHUNK)])
    temporary = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(temporary, signed)
    os.replace(temporary, path)
    return chunk


def collage_signatures(paths, count, cache, seed=0, areas=(0.5, 0.75), workers=2, log=print):
    """``(count, 1 + len(areas), L)`` int8: per collage, its signature and those of its central
    windows keeping ``areas`` (what a store with crop windows keeps). Chunk c of ``CHUNK``
    collages comes from ``numpy.random.default_rng([seed, c])``, so a count's set is always the
    same and a smaller count is a prefix of a larger one; chunks are cached in ``cache``."""
    global _PHOTOS
    import multiprocessing
    import time

    chunks = -(-count // CHUNK)
    missing = [(cache, seed, c, tuple(areas)) for c in range(chunks)
               if not _chunk_path(cache, seed, c, areas).exists()]
    if missing:
        cache.mkdir(parents=True, exist_ok=True)
        _PHOTOS = load_photos(paths)
        started = time.perf_counter()
        # fork: the workers inherit the decoded photos.
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            for done, _ in enumerate(pool.imap_unordered(_signed_chunk, missing), 1):
                seconds = time.perf_counter() - started
                log(f"collages: chunk {done}/{len(missing)} ({seconds:.0f} s)")
    return np.concatenate([np.load(_chunk_path(cache, seed, c, areas), mmap_mode="r")
                           for c in range(chunks)])[:count]
