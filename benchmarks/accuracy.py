"""How well each method tells copies of a picture from other pictures: transforms x methods.

    python benchmarks/accuracy.py [--corpus DIR] [--limit N] [--methods a,b] [--transforms a,b]
                                  [--seed 0] [--jobs N] [--search [METHODS]] [--costs]
                                  [--output FILE]

In the manner of thorn's perception benchmarks. Every original of the corpus gets one copy per
transformation of ``benchmarks/transforms.py`` (seeded; cached as files under
``~/.cache/image-match-bench/accuracy/``, keyed by the seed, the corpus and the transforms' code).
Every method signs every original and every copy, from the same files, in the same run. Then:

- positives: the distance between each original and each of its copies (one per original and
  transformation);
- negatives: the distance between every original and every file made from another original: the
  other originals and all their copies, under every transformation (about 2.4 million pairs for
  244 originals and 39 transformations). The copy of A inset on B's photo is not a negative of B.
  A pair is (stored original, query file): the query is signed, the original stored, as a store
  would; for "+o" methods the query counts by the nearest of its 8 orientations. Every option of
  a method applies to the negatives as to the positives (a stored original's windows, a query's
  orientations, central crops, frames and rotations, with the store's margins), so its
  thresholds are calibrated honestly.
- shares: every metric again on the tuning share and on the held-out share of the corpus
  (``common.split_held_out``: 25% by a hash of the file name), each share's originals against
  the files made from its own originals. Defaults, margins and thresholds were chosen on the
  tuning share; the held-out share says how they do on photos they were not chosen on.

Metrics:

- recall at pair FPR 1e-3 and 1e-5: one threshold per method, the distance below which that share
  of all the method's negatives would match (counting ties against the method), and the share of
  each transformation's positives below it. The 1e-5 threshold rests on the 1e-5 x (negatives)
  closest negatives (the summary gives the count); fewer than 1 is printed "n/r" (not resolvable).
- FPR at the cutoffs 0.45 (image-match 1.x's default) and 0.40 (ours): the share of negatives
  below them, per transformation of the query and pooled; with recall at those cutoffs. Goldberg
  methods only: a hash's Hamming fraction has no such cutoff.
- AUC: the probability that a copy is nearer its original than a random negative pair is (ties
  count half), per transformation against all negatives.
- ``--search``: the real search path: 80% of the originals (seeded; the others stay unstored)
  are added to a SQLite store (``image_match.drivers.open_database``, image-match 2's defaults),
  every copy is searched with ``search_image`` at the store's cutoff; top-1 is the share of copies
  of stored originals whose first result is their original, found the share whose original is
  among the results (per share of the corpus), false alarms the share of copies of unstored
  originals that return anything. ``default`` searches with no option at all (the store's
  search defaults); the other methods say every option explicitly.
- the rule for options (``+mirror``, ``+central``, ``+crops``, ``+frames``, ``+rot``,
  ``+insets``, ``+corners``, ``+robust``, ``default...``): against
  the method without it, which transformations lose recall (at 1e-3 and at the cutoff 0.40) and
  whether the FPR at the cutoffs rises. Printed after the tables, with the issue's targets.
- ``--costs`` (on by default for a whole run): what the options cost, measured in the run: bytes
  per record of a SQLite store of every file with and without crop windows, CPU milliseconds
  per ``search_image`` (decode, signing and the store's lookups) with each search option in a
  store of the originals and in a larger one, and CPU seconds of ``find_duplicates`` with and
  without orientations.

Methods (columns):

- ``1.x``, ``paper``: ``ImageSignature(variant=..., draft=True)`` (new stores' draft decode);
  ``-full``: ``draft=False`` (``1.x-full`` is image-match 1.1.2's signature bit for bit);
  ``+o``: all_orientations, the minimum over the query's 8 ``orientation_signatures`` (the
  turned pixels' signatures, as every search signs them; for ``paper`` its
  ``signature_variants``, which are the same arrays: the run checks this on every 8th original
  and prints how many differ), another orientation than its own counting ``ORIENTATION_MARGIN``
  more; ``+mirror``: the query and its mirror image alone (``mirror=True``);
- ``1.x+central``: searched with ``central_crops=True`` (the query's uncropped grids);
  ``1.x+crops``: a store with ``crop_windows=True``: each original also stored as its central
  windows (``record_signatures``); ``+frames``, ``+rot``, ``+insets``: searched with
  ``frames=True``, ``small_rotations=True`` (turned back, and turned back and cut for a grown
  canvas), ``insets=True``; ``+corners`` (with crop windows): ``corner_crops=True``; ``+robust``:
  all of them the store allows, as ``robust=True``; the distance is
  ``signature_database_base.record_distances``', margins included (checked on samples);
- ``default``: image-match 2's search with no option (``drivers.NEW_STORE_DEFAULTS``' search
  defaults: the mirror image and the central crops); ``default+robust``, with ``robust=True``;
  ``default+crops+robust+o``: every option, in a store with crop windows;
- ``im-1.1.2``: image-match 1.1.2 itself, on the same files;
- ``phash``, ``dhash``: imagehash's 64-bit hashes; ``pdq``: pdqhash's 256 bits; ``pdq+o``: the
  nearest of the query's 8 dihedral PDQ hashes. A hash's distance is Hamming / bits.

Reading the tables: rows are the transformation of the query (the summary has a row per method);
"mean" is the unweighted mean over transformations. Recall is in percent, FPR a fraction ("0":
no negative pair passed; the summary's negatives count says how small a fraction could show).
"""

import argparse
import hashlib
import importlib
import io
import multiprocessing
import os
import resource
import statistics
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

from common import (CACHE, HOLDOUT_SHARE, corpus_paths, is_held_out,  # noqa: E402
                    load_image_match_1x, machine_line, optional_import, print_table)
from image_match.goldberg import (CROP_WINDOW_AREAS, DIHEDRAL_NAMES,  # noqa: E402
                                  INSET_WINDOWS, MIRROR_NAME, QUERY_FRAMES, QUERY_MARGIN,
                                  WINDOW_MARGIN, ImageSignature, central_window,
                                  corner_crop_windows, crop_windows, inset_windows, is_featureless,
                                  normalized_distance, query_margins, signature_variants)
from transforms import TRANSFORMS, encode  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FPRS = (1e-3, 1e-5)
CUTOFFS = (0.45, 0.40)
HELD_OUT = 0.2  # share of originals kept out of the store in --search
CHECK_EVERY = 8  # originals whose orientation shortcuts are checked: every 8th
DEFAULT_SEARCH = "1.x,1.x+o,paper,paper+o"


@dataclass(frozen=True)
class Method:
    """A column: the feature it compares and how.

    ``feature`` names what is computed per file (see ``compute_features``); ``orientations``:
    the query counts by its nearest orientation, ``mirror``: by the nearer of itself and its mirror
    image (another orientation counting ``ORIENTATION_MARGIN`` more, for our signatures);
    ``goldberg``: the distance is the normalized distance (else the Hamming fraction of a hash).
    ``windows``: the stored originals keep their crop windows; ``central``, ``frames``,
    ``rotations``, ``insets``, ``corners``: the query also counts by its uncropped grids, its
    frames, its small rotations, the insets found in it, its corner crop windows (the search
    options ``central_crops``, ``frames``, ``small_rotations``, ``insets``, ``corner_crops``).
    """

    name: str
    feature: str
    orientations: bool = False
    goldberg: bool = True
    windows: bool = False
    frames: bool = False
    rotations: bool = False
    insets: bool = False
    corners: bool = False
    mirror: bool = False
    central: bool = False

    @property
    def parts(self):
        """The per-file features of the options, beside ``feature``, in ``query_signatures``'
        order after the record side's windows."""
        return [f"{self.feature} {part}" for part, wanted in
                (("windows", self.windows), ("central", self.central), ("frames", self.frames),
                 ("rotations", self.rotations), ("insets", self.insets),
                 ("corners", self.corners)) if wanted]

    @property
    def query_parts(self):
        """The query-side options' features, in ``query_signatures``' order."""
        return [part for part in self.parts if not part.endswith(" windows")]

    @property
    def turned(self):
        """The orientations the query counts by (indices into ``DIHEDRAL_NAMES``)."""
        if self.orientations:
            return list(range(8))
        return [0, DIHEDRAL_NAMES.index(MIRROR_NAME)] if self.mirror else [0]

    @property
    def base(self):
        """The method without the options, whose results the rule compares with."""
        suffix = "+o" if self.orientations else ""
        return {"1.x draft": "1.x", "1.x full": "1.x-full", "paper draft": "paper",
                "paper full": "paper-full"}.get(self.feature, self.name) + suffix


METHODS = {m.name: m for m in (
    Method("1.x", "1.x draft"),
    Method("1.x+o", "1.x draft", orientations=True),
    Method("1.x-full", "1.x full"),
    Method("1.x-full+o", "1.x full", orientations=True),
    Method("paper", "paper draft"),
    Method("paper+o", "paper draft", orientations=True),
    Method("paper-full", "paper full"),
    Method("paper-full+o", "paper full", orientations=True),
    Method("im-1.1.2", "im-1.1.2"),
    Method("phash", "phash", goldberg=False),
    Method("dhash", "dhash", goldberg=False),
    Method("pdq", "pdq", goldberg=False),
    Method("pdq+o", "pdq", orientations=True, goldberg=False),
    Method("1.x+mirror", "1.x draft", mirror=True),
    Method("1.x+central", "1.x draft", central=True),
    Method("1.x+crops", "1.x draft", windows=True),
    Method("1.x+frames", "1.x draft", frames=True),
    Method("1.x+rot", "1.x draft", rotations=True),
    Method("1.x+insets", "1.x draft", insets=True),
    Method("1.x+robust", "1.x draft", frames=True, rotations=True, insets=True),
    Method("1.x+crops+corners", "1.x draft", windows=True, corners=True),
    Method("1.x+crops+robust", "1.x draft", windows=True, frames=True, rotations=True,
           insets=True, corners=True),
    # image-match 2's default search (open_database, then search_image with no options): the
    # query, its mirror image and its uncropped grids.
    Method("default", "1.x draft", mirror=True, central=True),
    Method("default+robust", "1.x draft", mirror=True, central=True, frames=True, rotations=True,
           insets=True),
    Method("default+crops+robust+o", "1.x draft", orientations=True, windows=True, central=True,
           frames=True, rotations=True, insets=True, corners=True),
)}
#: Our methods with options, judged by the rule against their ``base``.
OPTION_METHODS = [name for name, m in METHODS.items() if m.parts or m.mirror]


# --- the files: originals and their cached copies --------------------------------------------

def copy_seed(seed, transform, stem):
    """The seed of one copy: independent of which other originals or transforms run."""
    return [seed, zlib.crc32(transform.encode()), zlib.crc32(stem.encode())]


def background_for(path, all_paths, seed):
    """The unrelated corpus photo that ``path``'s inset copy is composed onto."""
    others = [p for p in all_paths if p != path]
    rng = np.random.default_rng([seed, zlib.crc32(path.stem.encode())])
    return others[int(rng.integers(len(others)))]


def cache_folder(folder, seed):
    """Where the copies live: keyed by the corpus, the seed and the transforms' source code."""
    key = hashlib.sha1(str(folder.resolve()).encode())
    key.update(Path(__file__).with_name("transforms.py").read_bytes())
    return CACHE / "accuracy" / f"seed-{seed}-{key.hexdigest()[:10]}"


def _slug(name):
    return "".join(c if c.isalnum() or c in ".+-" else "_" for c in name)


def _open_upright(path):
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def make_copies(task):
    """The copies of one original (``(path, background, names, seed, folder)``), made if not
    cached; returns ``{transform name: file}``."""
    path, background, names, seed, folder = task
    files, image, backdrop = {}, None, None
    for name in names:
        target = folder / _slug(name)
        cached = [f for f in (target / (path.stem + s) for s in (".jpg", ".png")) if f.exists()]
        if cached:
            files[name] = cached[0]
            continue
        if image is None:
            image = _open_upright(path)
        transform = TRANSFORMS[name]
        if transform.needs_background and backdrop is None:
            backdrop = _open_upright(background)
        data, suffix = encode(transform(image, copy_seed(seed, name, path.stem), backdrop))
        target.mkdir(parents=True, exist_ok=True)
        files[name] = target / (path.stem + suffix)
        partial = files[name].with_suffix(suffix + f".{os.getpid()}.part")
        partial.write_bytes(data)
        os.replace(partial, files[name])
    return files


# --- features: what each method computes from a file -------------------------------------------

_feature_state = {}


def _init_features(features):
    """Per worker process: the generators the requested features need."""
    _feature_state["features"] = features
    for draft in (True, False):
        for variant in ("1.x", "paper"):
            _feature_state[(variant, draft)] = ImageSignature(variant=variant, draft=draft)
    if "im-1.1.2" in features:
        _feature_state["im-1.1.2"] = load_image_match_1x().ImageSignature()
    _feature_state["imagehash"] = optional_import("imagehash")
    _feature_state["pdqhash"] = optional_import("pdqhash")


def compute_features(task):
    """``(features, errors, mismatches)`` of one file (``(path, check)``).

    features: {feature: array}; the Goldberg ones and pdq are (8, bits) (orientations, the
    identity first), the others (bits,). errors: {feature: message}.

    Two shortcuts, checked on the files with ``check`` set (a sample of originals): the full-decode
    features of both variants are signed from one decode (the grey array, which signs as the file
    does), and the paper variant's orientations are its ``signature_variants``. mismatches: the
    features where a check found a difference with ``orientation_signatures(path)`` (the turned
    pixels' signatures, as every search of an image makes them).
    """
    path, check = task
    wanted = _feature_state["features"]
    features, errors, mismatches = {}, {}, []
    for draft, mode in ((True, "draft"), (False, "full")):
        variants = [v for v in ("1.x", "paper") if f"{v} {mode}" in wanted]
        if not variants:
            continue
        parts = [f for f in wanted if f.startswith(tuple(f"{v} {mode} " for v in variants))]
        if parts:
            _option_features(path, draft, mode, parts, features, errors)
        try:
            image = path if draft else _feature_state[("1.x", False)].decode(path)[0]
        except Exception as error:  # noqa: BLE001 - a method failing on a file is a result
            errors.update({f"{v} {mode}": f"{type(error).__name__}: {error}" for v in variants})
            continue
        for variant in variants:
            feature, generator = f"{variant} {mode}", _feature_state[(variant, draft)]
            try:
                if variant == "1.x":
                    features[feature] = generator.orientation_signatures(image)
                else:
                    features[feature] = signature_variants(generator.generate_signature(image))
                if check and (variant == "paper" or not draft) and not np.array_equal(
                        features[feature], generator.orientation_signatures(path)):
                    mismatches.append(feature)
            except Exception as error:  # noqa: BLE001
                errors[feature] = f"{type(error).__name__}: {error}"
    if "im-1.1.2" in wanted:
        try:
            features["im-1.1.2"] = _feature_state["im-1.1.2"].generate_signature(str(path))
        except Exception as error:  # noqa: BLE001
            errors["im-1.1.2"] = f"{type(error).__name__}: {error}"
    hashes = [f for f in ("phash", "dhash", "pdq") if f in wanted]
    if hashes:
        try:
            with Image.open(path) as image:
                image.load()
                grey = image.convert("L")  # imagehash's first step, done once for both hashes
                for feature in hashes:
                    features[feature] = _hash(feature, image, grey)
        except Exception as error:  # noqa: BLE001
            for feature in hashes:
                errors.setdefault(feature, f"{type(error).__name__}: {error}")
    return features, errors, mismatches


def _option_features(path, draft, mode, parts, features, errors):
    """The signatures the store options add, from one decode of ``path``: ``"<feature> windows"``
    (the crop windows, (W, L)), ``"<feature> central"`` (the uncropped grids, (C, L)),
    ``"<feature> frames"`` (F, L), ``"<feature> rotations"`` (2R, L: turned, then turned and cut)
    ``"<feature> insets"`` (2, L, zeros for rectangles not found) and ``"<feature> corners"`` (4,
    L), in the order ``record_signatures`` and ``query_signatures`` give them."""
    for variant in ("1.x", "paper"):
        wanted = [part.rsplit(" ", 1)[1] for part in parts
                  if part.startswith(f"{variant} {mode} ")]
        if not wanted:
            continue
        generator = _feature_state[(variant, draft)]
        try:
            grey, shape = generator.decode(path)
            if "windows" in wanted:
                features[f"{variant} {mode} windows"] = generator.windows_of_grey(
                    grey, shape, crop_windows(CROP_WINDOW_AREAS))
            if "central" in wanted:
                features[f"{variant} {mode} central"] = generator.uncropped_of_grey(grey, shape)
            if "frames" in wanted:
                features[f"{variant} {mode} frames"] = generator.windows_of_grey(
                    grey, shape, [central_window(*frame) for frame in QUERY_FRAMES])
            if "rotations" in wanted:
                features[f"{variant} {mode} rotations"] = generator.rotations_of_grey(grey, shape)
            if "insets" in wanted:
                found = generator.windows_of_grey(grey, shape, inset_windows(grey))
                features[f"{variant} {mode} insets"] = np.concatenate(
                    [found, np.zeros((INSET_WINDOWS - len(found), found.shape[1]), np.int8)])
            if "corners" in wanted:
                features[f"{variant} {mode} corners"] = generator.windows_of_grey(
                    grey, shape, corner_crop_windows(min(CROP_WINDOW_AREAS)))
        except Exception as error:  # noqa: BLE001 - a method failing on a file is a result
            for part in wanted:
                errors[f"{variant} {mode} {part}"] = f"{type(error).__name__}: {error}"


def _hash(feature, image, grey):
    if feature == "pdq":
        hashes, _ = _feature_state["pdqhash"].compute_dihedral(np.asarray(image.convert("RGB")))
        return np.asarray(hashes, dtype=bool)
    return getattr(_feature_state["imagehash"], feature)(grey).hash.ravel()


# --- distances ---------------------------------------------------------------------------------

def goldberg_distances(stored, queries, margins=None):
    """``normalized_distance`` between every stored signature and every query, by one matrix
    product per orientation.

    Parameters
    ----------
    stored : (S, L) int array
    queries : (Q, L) or (Q, O, L) int array
        With O orientations per query, the distance is the nearest orientation's.
    margins : (O,) array, optional
        What a match through each orientation adds (``goldberg.query_margins``' for them).

    Returns
    -------
    (S, Q) float64 ndarray: exactly ``normalized_distance`` (integer sums are exact in float64),
    1.0 where either signature is featureless, plus the orientation's margin.
    """
    stored = stored.astype(np.float64)
    queries = queries.astype(np.float64)
    if queries.ndim == 2:
        queries = queries[:, None]
    margins = np.zeros(queries.shape[1]) if margins is None else margins
    stored_squares = np.einsum("ij,ij->i", stored, stored)
    stored_norms = np.sqrt(stored_squares)
    best = np.full((stored.shape[0], queries.shape[0]), np.inf)
    for orientation in range(queries.shape[1]):
        query = queries[:, orientation]
        query_squares = np.einsum("ij,ij->i", query, query)
        squares = stored_squares[:, None] + query_squares[None, :] - 2.0 * (stored @ query.T)
        norms = stored_norms[:, None] + np.sqrt(query_squares)[None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            distances = np.sqrt(np.maximum(squares, 0.0)) / norms
        featureless = (stored_squares[:, None] == 0) | (query_squares[None, :] == 0)
        np.minimum(best, np.where(featureless, 1.0, distances) + margins[orientation], out=best)
    return best


def hamming_distances(stored, queries):
    """Hamming distance / bits between every stored hash and every query (nearest orientation
    when ``queries`` is (Q, O, bits)); shapes as ``goldberg_distances``."""
    stored = np.where(stored, 1.0, -1.0)
    queries = np.where(queries, 1.0, -1.0)
    if queries.ndim == 2:
        queries = queries[:, None]
    bits = stored.shape[1]
    best = np.full((stored.shape[0], queries.shape[0]), np.inf)
    for orientation in range(queries.shape[1]):
        agreement = stored @ queries[:, orientation].T
        np.minimum(best, (bits - agreement) / (2.0 * bits), out=best)
    return best


def method_distances(method, table, originals, failed):
    """(originals, files) distances of ``method`` from the per-file features ``table``
    (``failed`` files, which the method could not read, are at distance 1.0 from everything)."""
    values = table[method.feature]
    stored = values[originals]
    if stored.ndim == 3:
        stored = stored[:, 0]
    if method.goldberg:
        queries, margins = _oriented(method, values)
        distances = goldberg_distances(stored, queries, margins)
    else:
        queries = values if method.orientations or values.ndim == 2 else values[:, 0]
        distances = hamming_distances(stored, queries)
    if method.parts:
        distances = _with_options(method, table, originals, stored, distances)
    distances[:, failed] = 1.0
    distances[failed[originals], :] = 1.0
    return np.minimum(distances, 1.0)


def _oriented(method, values):
    """The query's orientations a Goldberg method counts by, ((F, O, L)), and their margins
    (image-match 1.1.2's signatures have no orientations: (F, L) and none)."""
    if values.ndim == 2:
        return values, None
    margins = query_margins(orientations=method.orientations, mirror=method.mirror)
    return values[:, method.turned], margins


def _with_options(method, table, originals, stored, distances):
    """``record_distances`` as a matrix: the smallest over the stored original's signatures (its
    own, its windows plus ``WINDOW_MARGIN``) and the query's (its own or its orientations plus
    ``ORIENTATION_MARGIN``, its central crops, frames and rotations plus ``QUERY_MARGIN``), at
    most 1.0."""
    stored_rows = [(stored, 0.0)]
    if method.windows:
        windows = table[f"{method.feature} windows"][originals]
        stored_rows += [(windows[:, w], WINDOW_MARGIN) for w in range(windows.shape[1])]
    queries, margins = _oriented(method, table[method.feature])
    query_rows = [(queries, margins, True)]
    for part in method.query_parts:
        signatures = table[part]
        query_rows.append((signatures, np.full(signatures.shape[1], QUERY_MARGIN), False))
    best = distances
    for stored_signatures, stored_margin in stored_rows:
        for query_signatures, query_margin, whole in query_rows:
            if stored_margin == 0.0 and whole:
                continue  # the plain distances, computed already
            found = goldberg_distances(stored_signatures, query_signatures, query_margin)
            best = np.minimum(best, found + stored_margin)
    return np.minimum(best, 1.0)


def check_distances(method, table, distances, originals, rng):
    """Spot-check the matrix against ``image_match.goldberg.normalized_distance``, and for methods
    with options against the store's own ``record_distances``."""
    values = table[method.feature]
    for _ in range(50):
        i, q = int(rng.integers(len(originals))), int(rng.integers(values.shape[0]))
        stored = values[originals[i]]
        stored = stored[0] if stored.ndim == 2 else stored
        query = values[q][method.turned] if values.ndim == 3 else values[q][None]
        if method.parts or len(method.turned) > 1:
            expected = _store_distance(method, table, originals[i], q, stored, query)
        else:
            expected = np.min(normalized_distance(query, stored))
        if distances[i, q] != 1.0 and abs(distances[i, q] - expected) > 1e-12:
            raise AssertionError(f"{method.name}: distance {distances[i, q]} != {expected}")


def _store_distance(method, table, original, file, stored, query):
    """The distance a store with the method's options gives (``record_distances``, with
    ``query_margins``' margins)."""
    from image_match.records import Record
    from image_match.signature_database_base import record_distances

    windows = table[f"{method.feature} windows"][original] if method.windows else None
    record = Record(id="x", path="x", signature=stored, windows=windows)
    query = np.concatenate([query] + [table[part][file] for part in method.query_parts])
    margins = query_margins(orientations=method.orientations, mirror=method.mirror,
                            central_crops=method.central, frames=method.frames,
                            small_rotations=method.rotations, insets=method.insets,
                            corner_crops=method.corners)
    kept = ~is_featureless(query)  # as a store, which does not search those
    return record_distances(query[kept], [record], margins[kept])[0] if kept.any() else 1.0


# --- metrics -----------------------------------------------------------------------------------

def threshold_at(sorted_negatives, fpr):
    """The distance below which at most ``fpr`` of the negatives lie, or None when the
    negatives are too few to resolve ``fpr``."""
    count = sorted_negatives.size
    if count * fpr < 1:
        return None
    return float(sorted_negatives[int(np.floor(fpr * count))])


def auc(positives, sorted_negatives):
    """P(negative distance > positive distance) + P(equal) / 2."""
    below = np.searchsorted(sorted_negatives, positives, side="left")
    not_above = np.searchsorted(sorted_negatives, positives, side="right")
    greater = sorted_negatives.size - not_above
    return float(np.mean((greater + 0.5 * (not_above - below)) / sorted_negatives.size))


def original_pairs_below(distances, negative, owner, limit):
    """How many pairs of different originals some negative below ``limit`` comes from: the
    negatives of one pair of look-alike pictures (and their copies) are not independent."""
    if limit is None:
        return None
    stored, query = np.nonzero(negative & (distances < limit))
    pairs = np.sort(np.stack([stored, owner[query]]), axis=0)
    return int(np.unique(pairs, axis=1).shape[1])


def negative_pairs(count, owner, excluded):
    """(S, F) bool: the pairs (stored original, query file) of different pictures: the file was
    made neither from that original nor on its photo (an inset's background)."""
    rows = np.arange(count)[:, None]
    return (owner[None, :] != rows) & (excluded[None, :] != rows)


def saved_distances(distances, files, held_out):
    """What ``--distances`` keeps of a method: each copy's distance to its original, its
    transformation and share, and the distance of every pair of different pictures, whole corpus
    and held-out share (both members held out)."""
    copies = np.flatnonzero(files.kind >= 0)
    negative = negative_pairs(distances.shape[0], files.owner, files.excluded)
    held_out_pairs = held_out[:, None] & held_out[files.owner][None, :]
    return {"positives": distances[files.owner[copies], copies].astype(np.float32),
            "kinds": files.kind[copies],
            "positives_held_out": held_out[files.owner[copies]],
            "negatives": distances[negative].astype(np.float32),
            "negatives_held_out": held_out_pairs[negative]}


def evaluate(distances, owner, kind, excluded, names):
    """The metrics of one method.

    Parameters
    ----------
    distances : (S, F) ndarray
        Stored original x query file.
    owner : (F,) int
        The original each file was made from.
    kind : (F,) int
        The transformation of each file (index into ``names``), -1 for the originals.
    excluded : (F,) int
        An original each file must not count as a negative of (the inset's background), or -1.

    Returns
    -------
    dict
        "negatives" (count), "thresholds" {fpr: distance or None}, "pairs" {fpr or cutoff:
        ``original_pairs_below`` the threshold or cutoff}, and per transformation name
        "recall_fpr" {fpr}, "recall_cutoff" {cutoff}, "fpr_cutoff" {cutoff}, "auc"; "fpr_cutoff"
        also for "originals" (original x original) and "all".
    """
    negative = negative_pairs(distances.shape[0], owner, excluded)
    negatives = np.sort(distances[negative])
    thresholds = {fpr: threshold_at(negatives, fpr) for fpr in FPRS}
    result = {"originals": distances.shape[0], "negatives": negatives.size,
              "thresholds": thresholds,
              "pairs": {key: original_pairs_below(distances, negative, owner,
                                                  thresholds[key] if key in FPRS else key)
                        for key in (*FPRS, *CUTOFFS)},
              "recall_fpr": {}, "recall_cutoff": {}, "fpr_cutoff": {}, "auc": {}}
    for index, name in enumerate(names):
        columns = np.flatnonzero(kind == index)
        positives = distances[owner[columns], columns]
        result["recall_fpr"][name] = {
            fpr: None if threshold is None else float(np.mean(positives < threshold))
            for fpr, threshold in result["thresholds"].items()}
        result["recall_cutoff"][name] = {c: float(np.mean(positives < c)) for c in CUTOFFS}
        own = distances[:, columns][negative[:, columns]]
        result["fpr_cutoff"][name] = {c: float(np.mean(own < c)) for c in CUTOFFS}
        result["auc"][name] = auc(positives, negatives)
    columns = np.flatnonzero(kind == -1)
    own = distances[:, columns][negative[:, columns]]
    result["fpr_cutoff"]["originals"] = {c: float(np.mean(own < c)) for c in CUTOFFS}
    result["fpr_cutoff"]["all"] = {c: float(np.mean(negatives < c)) for c in CUTOFFS}
    return result


#: The two shares of the corpus (``common.split_held_out``): defaults, margins and thresholds
#: were chosen on the first; the second tells how they do on photos they were not tuned on.
SHARES = ("tuning", "held-out")


def evaluate_share(distances, files, names, kept):
    """``evaluate`` on the originals ``kept`` (a bool per original) and the files made from them:
    positives and negatives both within the share."""
    rows = np.flatnonzero(kept)
    position = np.full(kept.size, -1)
    position[rows] = np.arange(rows.size)
    columns = np.flatnonzero(kept[files.owner])
    excluded = files.excluded[columns]
    excluded = np.where(excluded >= 0, position[np.maximum(excluded, 0)], -1)
    return evaluate(distances[np.ix_(rows, columns)], position[files.owner[columns]],
                    files.kind[columns], excluded, names)


def share_tables(shares, names, methods, out):
    """For each share: the summary, and recall at pair FPR 1e-3 and at the cutoff 0.40, of our
    methods (the peers' columns are in the tables over the whole corpus)."""
    ours = [m for m in methods if m.goldberg]
    for share, results in shares.items():
        emit(out, f"{share.capitalize()} share ({len(ours) and _originals(results, ours[0])} "
             f"originals; {HOLDOUT_SHARE:.0%} of the corpus by a hash of the file name is "
             "held out, the rest is the tuning share): summary", *_summary(results, ours, names))
        columns = {m.name: results[m.name] for m in ours}
        grid(out, f"{share.capitalize()} share: recall (%) at pair FPR 1e-03", columns,
             lambda r, n: r["recall_fpr"][n][1e-3], percent, names)
        grid(out, f"{share.capitalize()} share: recall (%) at the cutoff 0.40", columns,
             lambda r, n: r["recall_cutoff"][n][0.40], percent, names)


def _originals(results, method):
    return results[method.name]["originals"]


# --- tables ------------------------------------------------------------------------------------

def percent(value):
    if value is None:
        return "n/r"
    text = f"{100 * value:.1f}"
    return "100" if text == "100.0" else text


def rate(value):
    return "0" if value == 0 else f"{value:.1e}"


def four_places(value):
    return f"{value:.4f}"


def mean_over(values):
    """The mean, or None when some value is (not resolvable)."""
    values = list(values)
    return None if any(v is None for v in values) else float(np.mean(values))


def emit(out, title, headers, rows):
    """Print a titled table and keep its text in ``out``."""
    text = f"{title}\n\n" + print_table(headers, rows, file=io.StringIO()) + "\n\n"
    print(text)
    out.append(text)


def grid(out, title, columns, value, style, rows=(), mean=True):
    """A transforms x methods table of ``style(value(result, row))``, with a mean row."""
    body = [[row] + [style(value(columns[m], row)) for m in columns] for row in rows]
    if mean:
        body.append(["mean"] + [style(mean_over(value(columns[m], row) for row in rows))
                                for m in columns])
    emit(out, title, ["transform"] + list(columns), body)


def tables(results, names, methods, out):
    """Print the summary and the per-transformation tables; their text goes to ``out``."""
    every = {m.name: results[m.name] for m in methods}
    goldberg = {m.name: results[m.name] for m in methods if m.goldberg}
    emit(out, "Summary: the distance thresholds at pair FPR 1e-3 and 1e-5, mean recall over "
         "transformations at them, FPR at the cutoffs over all negatives. (n): how many pairs of "
         "different originals the negatives below that distance come from",
         *_summary(results, methods, names))
    for fpr in FPRS:
        grid(out, f"Recall (%) at pair FPR {fpr:.0e}", every,
             lambda r, n, fpr=fpr: r["recall_fpr"][n][fpr], percent, names)
    for cutoff in CUTOFFS:
        grid(out, f"Recall (%) at the cutoff {cutoff:.2f}", goldberg,
             lambda r, n, c=cutoff: r["recall_cutoff"][n][c], percent, names)
    for cutoff in CUTOFFS:
        grid(out, f"FPR at the cutoff {cutoff:.2f}: queries of each transformation (and the "
             "originals themselves) against the other originals", goldberg,
             lambda r, n, c=cutoff: r["fpr_cutoff"][n][c], rate, list(names) + ["originals", "all"],
             mean=False)
    grid(out, "ROC AUC: each transformation's positives against all negatives", every,
         lambda r, n: r["auc"][n], four_places, names)


def _summary(results, methods, names):
    """The summary table's headers and rows."""
    rows = []
    for m in methods:
        r = results[m.name]
        pairs = r["pairs"]
        rows.append([
            m.name, r["negatives"],
            _with_pairs(_distance(r["thresholds"][1e-3]), pairs[1e-3]),
            _with_pairs(_distance(r["thresholds"][1e-5]), pairs[1e-5]),
            percent(mean_over(r["recall_fpr"][n][1e-3] for n in names)),
            percent(mean_over(r["recall_fpr"][n][1e-5] for n in names)),
            _with_pairs(rate(r["fpr_cutoff"]["all"][0.45]), pairs[0.45]) if m.goldberg else "-",
            _with_pairs(rate(r["fpr_cutoff"]["all"][0.40]), pairs[0.40]) if m.goldberg else "-",
            four_places(mean_over(r["auc"][n] for n in names)),
        ])
    return (["method", "negatives", "d@1e-3", "d@1e-5", "recall@1e-3", "recall@1e-5", "FPR@0.45",
             "FPR@0.40", "mean AUC"], rows)


def rule_check(results, names, methods, out):
    """The rule for options: against its base, no transformation may lose recall and the FPR at
    the cutoffs may not rise. Returns the rows (for the summary of the report)."""
    rows = []
    for method in methods:
        if not (method.parts or method.mirror) or method.base not in results:
            continue
        result, base = results[method.name], results[method.base]

        def lower(key, level):
            return ", ".join(
                f"{n} {percent(base[key][n][level])}->{percent(result[key][n][level])}"
                for n in names if result[key][n][level] is not None
                and base[key][n][level] is not None and result[key][n][level] < base[key][n][level]
            ) or "none"

        def higher_fpr(cutoff):
            before, after = base["fpr_cutoff"]["all"][cutoff], result["fpr_cutoff"]["all"][cutoff]
            return f"{rate(before)} -> {rate(after)}" + (" (higher)" if after > before else "")

        rows.append([method.name, method.base, lower("recall_fpr", 1e-3),
                     lower("recall_cutoff", 0.40), higher_fpr(0.40), higher_fpr(0.45)])
    if rows:
        text = ["The rule for options: against the method without it, the transformations whose "
                "recall is lower (at pair FPR 1e-3; at the cutoff 0.40), and the FPR over all "
                "negatives at the cutoffs\n\n"]
        for name, base, at_fpr, at_cutoff, fpr40, fpr45 in rows:
            text.append(f"{name} (against {base}):\n  lower recall@1e-3: {at_fpr}\n"
                        f"  lower recall@0.40: {at_cutoff}\n  FPR@0.40: {fpr40}; "
                        f"FPR@0.45: {fpr45}\n")
        text.append("\n")
        print("".join(text))
        out.extend(text)
    return rows


#: The issues' targets: (what, transformations, methods, at least this recall in %, at what:
#: a pair FPR (``recall_fpr``) or a cutoff (``recall_cutoff``)). Each transformation of a target
#: must meet it, on the whole corpus and on each share.
TARGETS = (
    ("central crop 50% with the crop-robust option", ["crop 50%"],
     ["1.x+crops", "1.x+crops+robust"], 80, ("recall_fpr", 1e-3)),
    ("insets with the crop-robust option", ["inset 60%"],
     ["1.x+insets", "1.x+robust", "1.x+crops+robust"], 80, ("recall_fpr", 1e-3)),
    ("rotation by 10 degrees", ["rotate 10"], ["1.x+rot", "1.x+robust", "1.x+crops+robust"], 80,
     ("recall_fpr", 1e-3)),
    ("central crop 75%", ["crop 75%"], ["1.x+crops", "1.x+crops+robust"], 97,
     ("recall_fpr", 1e-3)),
    ("rotation by 10 degrees, size kept or canvas grown, robust", ["rotate 10", "rotate 10 expand",
     "rotate 10 expand white"], ["1.x+robust", "default+robust", "1.x+crops+robust",
                                 "default+crops+robust+o"], 90, ("recall_fpr", 1e-3)),
    ("central crop 81%, default search", ["crop 81%"], ["default"], 97, ("recall_cutoff", 0.40)),
    ("central crop 64%, default search", ["crop 64%"], ["default"], 95, ("recall_cutoff", 0.40)),
)


def target_table(results, names, out, shares=None):
    """The targets met or not, by transformation, on the whole corpus and on each share
    (``shares``: {share name: results})."""
    columns = {"all": results, **(shares or {})}
    rows = []
    for what, transforms, candidates, goal, (metric, level) in TARGETS:
        for name in candidates:
            for transform in transforms:
                if name not in results or transform not in names:
                    continue
                values = [columns[share][name][metric][transform][level] for share in columns]
                met = all(value is not None and 100 * value >= goal for value in values)
                at = f"FPR {level:.0e}" if metric == "recall_fpr" else f"cutoff {level:.2f}"
                rows.append([what, transform, name, f">= {goal} at {at}",
                             *(percent(value) for value in values), "met" if met else "NOT met"])
    if rows:
        emit(out, "Targets (recall %)", ["target", "transform", "method", "goal", *columns, ""],
             rows)


# --- costs --------------------------------------------------------------------------------------

_ALONE = {"mirror": False, "central_crops": False}
_DEFAULT = {"mirror": True, "central_crops": True}
COST_SEARCHES = (  # (label, crop windows in the store, search_image options)
    ("the query alone (1.x's search)", False, _ALONE),
    ("default: mirror image, central crops", False, _DEFAULT),
    ("mirror image", False, {"mirror": True, "central_crops": False}),
    ("central crops", False, {"mirror": False, "central_crops": True}),
    ("all_orientations", False, {**_ALONE, "all_orientations": True}),
    ("frames", False, {**_ALONE, "frames": True}),
    ("small_rotations", False, {**_ALONE, "small_rotations": True}),
    ("insets", False, {**_ALONE, "insets": True}),
    ("robust", False, {**_ALONE, "robust": True}),
    ("default, robust", False, {**_DEFAULT, "robust": True}),
    ("crop windows store, the query alone", True, _ALONE),
    ("crop windows store, default", True, _DEFAULT),
    ("crop windows store, default, robust, all_orientations", True,
     {**_DEFAULT, "robust": True, "all_orientations": True}),
)
COST_QUERIES = 100
COST_RUNS = 5  # passes over the sample, the median kept: the machine is shared
#: The transformations whose copies join the originals in the store ``find_duplicates`` is timed
#: on (with and without orientations).
COST_DEDUPE = ("resize 0.5", "jpeg q30", "crop 81%", "flip h", "rotate 90", "text watermark")


def measure_costs(files, table, names, seed, out):
    """Index bytes per record with and without crop windows (a SQLite store of every file of the
    run); CPU time per ``search_image`` with each option (a seeded sample of copies) in two
    stores: the originals, and the originals with the copies of the originals not sampled; CPU
    time of ``find_duplicates`` with and without orientations. In this process."""
    from common import time_interleaved, time_per_item
    from image_match.drivers import NEW_STORE_DEFAULTS
    from image_match.drivers.sqlite import SignatureSQLite

    signatures = table["1.x draft"][:, 0]
    windows = table.get("1.x draft windows")
    if windows is None:
        print("--costs needs a method with crop windows (1.x+crops); skipped", file=sys.stderr)
        return

    def fill(store, indices, crops):
        for start in range(0, len(indices), 500):
            store.add_signatures([
                {"path": str(files.paths[f]), "id": str(f), "signature": signatures[f],
                 **({"windows": windows[f]} if crops else {})} for f in indices[start:start + 500]])

    every = np.arange(len(files.paths))
    with tempfile.TemporaryDirectory(prefix="image-match-costs-") as folder:
        sizes = {}
        for crops in (False, True):
            store = SignatureSQLite(Path(folder) / f"index-{crops}.db", crop_windows=crops,
                                    new_store_defaults=NEW_STORE_DEFAULTS)
            empty = _file_bytes(store)
            fill(store, every, crops)
            words = store._connect().execute("SELECT COUNT(*) FROM words").fetchone()[0]
            sizes[crops] = (_file_bytes(store) - empty) / len(files.paths), words / len(files.paths)
            store.close()
        emit(out, f"Index size: a SQLite store of the run's {len(files.paths)} files (originals "
             "and copies), after VACUUM, less the empty store", ["store", "bytes per record",
                                                                  "word rows per record", "x"],
             [[label, f"{sizes[c][0]:.0f}", f"{sizes[c][1]:.1f}", f"{sizes[c][0] / sizes[False][0]:.2f}"]
              for label, c in (("1.x (no crop windows)", False), ("1.x, crop windows", True))])

        copies = np.flatnonzero(files.kind >= 0)
        sampled = np.random.default_rng(seed).choice(copies, min(COST_QUERIES, copies.size),
                                                     replace=False)
        sample = [files.paths[f] for f in sampled]
        others = np.flatnonzero((files.kind < 0) | ~np.isin(files.owner, files.owner[sampled]))
        stores = {}
        for crops in (False, True):
            for label, indices in (("originals", np.arange(files.count_originals)),
                                   ("larger", others)):
                store = SignatureSQLite(Path(folder) / f"search-{crops}-{label}.db",
                                        crop_windows=crops, new_store_defaults=NEW_STORE_DEFAULTS)
                fill(store, indices, crops)
                stores[crops, label] = store
        generator = stores[False, "originals"].gis
        decode_only = time_per_item(lambda path: generator.decode(path), sample, COST_RUNS)

        def signing(signer, options):
            return lambda path: signer.gis.query_signatures(path, **signer.query_options(**options))

        def searching(store, options):
            return lambda path: store.search_image(str(path), **options)

        # Every row of a column is timed in the same runs, interleaved (common.time_interleaved):
        # a row's ratio to the first is taken run by run, and the median of those kept.
        columns = [time_interleaved([signing(stores[crops, "originals"], options)
                                     for _, crops, options in COST_SEARCHES], sample, COST_RUNS)]
        columns += [time_interleaved([searching(stores[crops, size], options)
                                      for _, crops, options in COST_SEARCHES], sample, COST_RUNS)
                    for size in ("originals", "larger")]
        rows = []
        for index, (label, _, _) in enumerate(COST_SEARCHES):
            row = [label, f"{1000 * statistics.median(columns[0][index]):.1f}"]
            for runs in columns[1:]:
                ratios = [value / first for value, first in zip(runs[index], runs[0])]
                row += [f"{1000 * statistics.median(runs[index]):.1f}",
                        f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"]
            rows.append(row)
        emit(out, f"Search time: CPU milliseconds per search_image (median of {COST_RUNS} runs over "
             f"{len(sample)} copies, every row timed in each run in turn; decoding alone "
             f"{1000 * decode_only:.1f} ms), in one process, in a SQLite store of the "
             f"{files.count_originals} originals and in one of {len(others)} records (the "
             "originals and the copies of those not sampled); x: against the first row (the query "
             "alone, 1.x's search) in the same run, the median over the runs (and their range); "
             f"load average {os.getloadavg()[0]:.1f} at the end on {os.cpu_count()} cores",
             ["search", "signing", "ms, originals", "x", f"ms, {len(others)} records", "x"], rows)
        for store in stores.values():
            store.close()

        kinds = [names.index(name) for name in COST_DEDUPE if name in names]
        members = np.flatnonzero((files.kind < 0) | np.isin(files.kind, kinds))
        store = SignatureSQLite(Path(folder) / "dedupe.db", new_store_defaults=NEW_STORE_DEFAULTS)
        fill(store, members, False)
        rows = []
        for label, oriented in (("without orientations", False), ("all orientations", True)):
            start = time.process_time()
            groups = store.find_duplicates(all_orientations=oriented)
            rows.append([label, f"{time.process_time() - start:.1f}", len(groups),
                         sum(len(group) for group in groups)])
        store.close()
        emit(out, f"Dedupe time: CPU seconds of find_duplicates over a SQLite store of the "
             f"{files.count_originals} originals and their copies {', '.join(COST_DEDUPE)} "
             f"({len(members)} records), in one process",
             ["find_duplicates", "CPU s", "groups", "members"], rows)


def _file_bytes(store):
    """The store file's size once its log is folded in and free pages dropped."""
    connection = store._connect()
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.execute("VACUUM")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return os.path.getsize(store.path)


def _with_pairs(text, pairs):
    return text if pairs is None else f"{text} ({pairs})"


def _distance(value):
    return "n/r" if value is None else f"{value:.3f}"


# --- the real search path ----------------------------------------------------------------------

_search_state = {}


def search_options(method):
    """``search_image``'s options for a method (all explicit: a store's defaults play no part)."""
    if method.name == "default":
        return {}  # image-match 2's search as a user makes it: the store's search defaults
    return {"all_orientations": method.orientations, "mirror": method.mirror,
            "central_crops": method.central, "frames": method.frames,
            "small_rotations": method.rotations, "insets": method.insets,
            "corner_crops": method.corners}


def _init_search(url, variant, draft, options):
    from image_match.drivers import open_database

    _search_state["store"] = open_database(url, variant=variant, draft=draft)
    _search_state["options"] = options
    if not options:  # the "default" method: the store's defaults are those its column measures
        default = METHODS["default"]
        assert _search_state["store"].search_defaults == {"mirror": default.mirror,
                                                          "central_crops": default.central}


def _search_one(path):
    """The ids of one query file's results, nearest first, or an "error: ..." string."""
    try:
        matches = _search_state["store"].search_image(str(path), **_search_state["options"])
    except Exception as error:  # noqa: BLE001
        return f"error: {type(error).__name__}: {error}"
    return [match["id"] for match in matches]


def search_accuracy(methods, originals, copies, names, jobs, seed):
    """Top-1 and false alarms through ``image_match.drivers.open_database('sqlite:///...')``.

    Parameters
    ----------
    methods : list of Method
        Ours; one store per signature (variant, decode) and crop windows, searched with the
        options each method says.
    originals : list of Path
    copies : list of (path, owner index, transformation index)

    Returns
    -------
    dict or None
        {method name: {"top1": {name: share}, "false_alarms": {name: share}, "seconds"}}, with
        the "stored" and "held_out" counts and the store's "cutoff"; None when the SQLite store
        is not available.
    """
    try:
        from image_match.drivers import open_database
        importlib.import_module("image_match.drivers.sqlite")
    except ImportError as error:
        print(f"--search: the SQLite store is not available yet ({error}); skipped",
              file=sys.stderr)
        return None
    held = np.zeros(len(originals), dtype=bool)
    shuffled = np.random.default_rng(seed).permutation(len(originals))
    held[shuffled[:round(HELD_OUT * len(originals))]] = True
    stored = np.flatnonzero(~held)
    results = {"held_out": int(held.sum()), "stored": int(stored.size)}
    with tempfile.TemporaryDirectory(prefix="image-match-accuracy-") as folder:
        record_ids = {}
        for method in methods:
            variant, mode = method.feature.split()
            crops = "-crops" if method.windows else ""
            url = f"sqlite:///{folder}/{variant}-{mode}{crops}.db"
            if url not in record_ids:
                store = open_database(url, variant=variant, draft=mode == "draft",
                                      crop_windows=method.windows)
                ids = store.add_images([str(originals[i]) for i in stored], workers=jobs)
                refused = [i for i in ids if not isinstance(i, str)]
                if refused:
                    print(f"--search {method.name}: {len(refused)} originals not stored, e.g. "
                          f"{refused[0]}", file=sys.stderr)
                record_ids[url] = dict(zip(stored, ids))
                results["cutoff"] = store.distance_cutoff
                getattr(store, "close", lambda: None)()
            start = time.perf_counter()
            arguments = (url, variant, mode == "draft", search_options(method))
            with multiprocessing.get_context().Pool(jobs, _init_search, arguments) as pool:
                queries = pool.imap(_search_one, [path for path, _, _ in copies], chunksize=16)
                found = list(progress(queries, len(copies), f"search {method.name}"))
            errors = [ids for ids in found if isinstance(ids, str)]
            if errors:
                print(f"--search {method.name}: {len(errors)} queries failed, e.g. {errors[0]}",
                      file=sys.stderr)
            found = [[] if isinstance(ids, str) else ids for ids in found]
            owners = np.array([owner for _, owner, _ in copies])
            kinds = np.array([kind for _, _, kind in copies])
            wanted = [record_ids[url].get(owner) for owner in owners]
            hit = np.array([ids[:1] == [want] for ids, want in zip(found, wanted)])
            among = np.array([want in ids for ids, want in zip(found, wanted)])
            answered = np.array([len(ids) > 0 for ids in found])
            share_of = np.array([is_held_out(originals[owner]) for owner in owners])
            results[method.name] = {
                "top1": {name: _share(hit, (kinds == k) & ~held[owners])
                         for k, name in enumerate(names)},
                "found": {share: {name: _share(among, (kinds == k) & ~held[owners]
                                               & (share_of == (share == "held-out")))
                                  for k, name in enumerate(names)} for share in SHARES},
                "false_alarms": {name: _share(answered, (kinds == k) & held[owners])
                                 for k, name in enumerate(names)},
                "seconds": time.perf_counter() - start}
    return results


def _share(flags, among):
    return float(flags[among].mean()) if among.any() else None


def search_tables(results, names, methods, out):
    """Print the search-path tables; their text goes to ``out``."""
    columns = {m.name: results[m.name] for m in methods}
    grid(out, "Search top-1 (%): copies of stored originals whose first result is their original",
         columns, lambda r, n: r["top1"][n], percent, names)
    for share in SHARES:
        grid(out, f"Search found (%), {share} share: copies of stored originals of the {share} "
             "share whose original is among the results", columns,
             lambda r, n, share=share: r["found"][share][n], percent, names)
    grid(out, "Search false alarms (%): copies of unstored originals that return any result",
         columns, lambda r, n: r["false_alarms"][n], percent, names)
    emit(out, "Search time (s, all copies, on --jobs processes)", ["method", "seconds"],
         [[name, f"{r['seconds']:.0f}"] for name, r in columns.items()])


# --- the run -----------------------------------------------------------------------------------

def progress(iterable, total, label):
    """Yield from ``iterable``, counting on stderr (every 5% on a terminal, else every 25%)."""
    terminal = sys.stderr.isatty()
    step = max(1, total // (20 if terminal else 4))
    start = time.perf_counter()
    for done, item in enumerate(iterable, 1):
        if done % step == 0 or done == total:
            end = "\n" if done == total or not terminal else ""
            print(f"\r{label}: {done}/{total} ({time.perf_counter() - start:.0f} s)", end=end,
                  file=sys.stderr, flush=True)
        yield item


def cpu_seconds():
    """CPU time of this process and of its finished workers."""
    return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
               for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))


def select(names, wanted, what):
    """The names ``wanted`` (comma-separated; an item matches the names it starts with)."""
    if not wanted:
        return list(names)
    chosen = []
    for item in (w.strip() for w in wanted.split(",") if w.strip()):
        matches = [n for n in names if n == item] or [n for n in names if n.startswith(item)]
        if not matches:
            raise SystemExit(f"unknown {what} {item!r}; choose from: {', '.join(names)}")
        chosen += [m for m in matches if m not in chosen]
    return [n for n in names if n in chosen]


def available_methods(names):
    """Drop the peers whose library is missing, saying so."""
    needs = {"im-1.1.2": lambda: load_image_match_1x() is not None,
             "phash": lambda: optional_import("imagehash") is not None,
             "dhash": lambda: optional_import("imagehash") is not None,
             "pdq": lambda: optional_import("pdqhash") is not None,
             "pdq+o": lambda: optional_import("pdqhash") is not None}
    kept = []
    for name in names:
        if name in needs and not needs[name]():
            print(f"{name}: not installed, skipped", file=sys.stderr)
            continue
        kept.append(name)
    return kept


@dataclass
class Files:
    """The files every method signs: the originals first, then their copies.

    ``owner[f]``: the original file ``f`` was made from; ``kind[f]``: its transformation (index
    into the run's names), -1 for an original; ``excluded[f]``: an original ``f`` is not a
    negative of (the inset's background), -1 for none.
    """

    paths: list
    owner: np.ndarray
    kind: np.ndarray
    excluded: np.ndarray
    count_originals: int

    @property
    def copies(self):
        """``(path, owner, kind)`` of every copy."""
        return [(p, int(o), int(k)) for p, o, k in zip(self.paths, self.owner, self.kind) if k >= 0]


def prepare_files(originals, all_paths, names, seed, cache, pool):
    """Make (or find cached) every copy; return the run's ``Files``."""
    tasks = [(p, background_for(p, all_paths, seed), names, seed, cache) for p in originals]
    made = list(progress(pool.imap(make_copies, tasks), len(tasks), "copies"))
    index_of = {p: i for i, p in enumerate(originals)}
    paths, owner = list(originals), list(range(len(originals)))
    kind, excluded = [-1] * len(originals), [-1] * len(originals)
    for i, ((_, background, *_), copy_files) in enumerate(zip(tasks, made)):
        for t, name in enumerate(names):
            paths.append(copy_files[name])
            owner.append(i)
            kind.append(t)
            excluded.append(index_of.get(background, -1) if TRANSFORMS[name].needs_background
                            else -1)
    return Files(paths, np.array(owner), np.array(kind), np.array(excluded), len(originals))


def sign_files(files, features, jobs):
    """Every feature of every file, one pass per file on ``jobs`` processes.

    Returns
    -------
    (table, failed, notes)
        table: {feature: (files, ...) array}; failed: {feature: (files,) bool}, the files the
        method could not read; notes: lines for the report (failures, shortcut checks).
    """
    tasks = [(path, f < files.count_originals and f % CHECK_EVERY == 0)
             for f, path in enumerate(files.paths)]
    checked = len(range(0, files.count_originals, CHECK_EVERY))
    with multiprocessing.get_context().Pool(jobs, _init_features, (features,)) as pool:
        computed = list(progress(pool.imap(compute_features, tasks, chunksize=8), len(tasks),
                                 "signatures and hashes"))
    table, failed, notes = {}, {}, []
    for feature in features:
        present = [values[feature] for values, _, _ in computed if feature in values]
        if not present:
            raise SystemExit(f"{feature}: failed on every file, e.g. "
                             f"{computed[0][1].get(feature)}")
        blank = np.zeros_like(present[0])
        table[feature] = np.stack([values.get(feature, blank) for values, _, _ in computed])
        failed[feature] = np.array([feature in errors for _, errors, _ in computed])
        if failed[feature].any():
            first = int(np.argmax(failed[feature]))
            notes.append(f"{feature}: {int(failed[feature].sum())} files failed (distance 1.0), "
                         f"e.g. {files.paths[first]}: {computed[first][1][feature]}")
        if feature in ("1.x full", "paper draft", "paper full"):
            differ = sum(feature in mismatches for _, _, mismatches in computed)
            notes.append(f"{feature}: the shortcut equals orientation_signatures(path) on "
                         f"{checked - differ}/{checked} originals checked")
    return table, failed, notes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="folder of originals (default: the dev corpus)")
    parser.add_argument("--limit", type=int, help="use the first N originals")
    parser.add_argument("--methods", help=f"comma-separated, of: {', '.join(METHODS)}")
    parser.add_argument("--transforms", help="comma-separated (a prefix matches every name it "
                        "starts), of: " + ", ".join(TRANSFORMS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--search", nargs="?", const=DEFAULT_SEARCH, metavar="METHODS",
                        help="also measure the search path through a SQLite store, for these of "
                        f"our methods (default: {DEFAULT_SEARCH})")
    parser.add_argument("--costs", action=argparse.BooleanOptionalAction, default=None,
                        help="measure index size and search time per option (default: on for "
                        "a run over the whole corpus)")
    parser.add_argument("--output", type=Path, help="save the tables here, and the search "
                        "tables beside it (default: benchmarks/results/accuracy.txt and "
                        "accuracy-search.txt for runs over the whole corpus and every "
                        "transformation; the first only with every method)")
    parser.add_argument("--distances", type=Path, metavar="FILE.npz",
                        help="also save every positive and negative pair's distance of each "
                        "Goldberg method (for benchmarks/plot_distances.py)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    jobs = max(1, args.jobs)

    if args.corpus:
        os.environ["IMAGE_MATCH_CORPUS"] = args.corpus
    folder, all_paths = corpus_paths()
    originals = all_paths[:args.limit] if args.limit else all_paths
    names = select(list(TRANSFORMS), args.transforms, "transform")
    methods = [METHODS[n] for n in available_methods(select(list(METHODS), args.methods, "method"))]
    whole = not (args.limit or args.corpus or args.transforms)
    output = args.output or (RESULTS / "accuracy.txt" if whole and not args.methods else None)
    search_output = (output or RESULTS / "accuracy.txt") if (args.output or whole) else None
    if search_output is not None:
        search_output = search_output.with_name(search_output.stem + "-search.txt")

    with multiprocessing.get_context().Pool(jobs) as pool:
        files = prepare_files(originals, all_paths, names, args.seed,
                              cache_folder(folder, args.seed), pool)
    features = sorted({f for m in methods for f in (m.feature, *m.parts)})
    table, failed, notes = sign_files(files, features, jobs)

    results, shares = {}, {share: {} for share in SHARES}
    held_out = np.array([is_held_out(path) for path in originals])
    check_rng = np.random.default_rng(args.seed)
    rows = np.arange(len(originals))
    saved = {}
    for method in methods:
        distances = method_distances(method, table, rows, failed[method.feature])
        if method.goldberg:
            check_distances(method, table, distances, rows, check_rng)
            if args.distances is not None:
                saved.update({f"{method.name}/{key}": value for key, value
                              in saved_distances(distances, files, held_out).items()})
        results[method.name] = evaluate(distances, files.owner, files.kind, files.excluded, names)
        for share, kept in zip(SHARES, (~held_out, held_out)):
            if kept.any():
                shares[share][method.name] = evaluate_share(distances, files, names, kept)
        del distances

    command = " ".join(["python benchmarks/accuracy.py"]
                       + (argv if argv is not None else sys.argv[1:]))
    if args.distances is not None:
        np.savez_compressed(args.distances, names=np.array(names), command=np.array(command),
                            **saved)
        print(f"saved {args.distances}", file=sys.stderr)
    header = [
        f"{command}\n",
        f"{machine_line()}; corpus {folder}: {len(originals)} originals x {len(names)} "
        f"transformations = {len(files.paths) - len(originals)} copies; seed {args.seed}\n",
    ]
    out = header + [f"{note}\n" for note in notes] + ["\n"]
    print("".join(out))
    tables(results, names, methods, out)
    rule_check(results, names, methods, out)
    shares = {share: found for share, found in shares.items() if found}
    target_table(results, names, out, shares)
    share_tables(shares, names, methods, out)
    if args.costs or (args.costs is None and whole):
        measure_costs(files, table, names, args.seed, out)
    elapsed = (f"elapsed {time.perf_counter() - started:.0f} s on {jobs} processes, "
               f"{cpu_seconds():.0f} CPU-seconds\n")
    out.append(elapsed)
    print(elapsed)

    if args.search:
        search_methods = [METHODS[n] for n in select(list(METHODS), args.search, "method")
                          if METHODS[n].goldberg and n != "im-1.1.2"]
        found = search_accuracy(search_methods, originals, files.copies, names, jobs, args.seed)
        if found is not None:
            search_out = header + [f"store: SQLite at its default cutoff {found['cutoff']:.2f}; "
                                   f"{found['stored']} originals stored, {found['held_out']} "
                                   "not (their copies measure false alarms)\n\n"]
            search_tables(found, names, search_methods, search_out)
            if search_output is not None:
                search_output.write_text("".join(search_out))
                print(f"saved {search_output}", file=sys.stderr)

    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text("".join(out))
        print(f"saved {output}", file=sys.stderr)
    else:
        print("tables not saved (a partial run); --output FILE saves them", file=sys.stderr)


if __name__ == "__main__":
    main()
