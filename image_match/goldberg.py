"""The Goldberg image signature (Wong, Bern, Goldberg, "An image signature for any kind of image",
ICIP 2002), vectorized, with image-match 1.x's exact semantics by default.

A signature is computed from a 2-D grey image in five steps, each a function here from arrays to
arrays:

1. ``crop_window``: drop featureless borders, by the cumulative sums of absolute grey differences.
2. ``grid_points``: an ``n`` x ``n`` grid of points inside that window.
3. ``block_means``: the mean grey level of a ``P`` x ``P`` square around each grid point.
4. ``neighbour_differences``: each point's mean minus each of its 8 (or 4) neighbours' means.
5. ``quantize_differences``: differences below ``identical_tolerance`` become 0, the others
   ``+-1 .. +-n_levels`` by percentiles of the positive and of the negative differences.

The flattened result, ``n * n * 8`` int8 values (648 for the defaults), is the signature.
``normalized_distance(a, b) = ||a - b|| / (||a|| + ||b||)`` compares them; two pictures are the
same picture when it is below the cutoff (0.40 by default, see ``image_match.signature_database_base``).

Variants
--------
``variant="1.x"`` (the default) reproduces image-match 1.1.2 bit for bit, quirks included:

- the crop lands where the cumulative-difference array reaches its own 5th/95th *percentile value*,
  which is about 5% of the width or height whatever the content;
- single-channel inputs keep their 0-255 scale (and the crop differences of 8-bit input wrap
  around modulo 256), while colour inputs are scaled to 0-1;
- ``P`` comes from the whole image, not the cropped window;
- the binning runs in place, so when some difference is exactly +-1.0 every +-1 code becomes +-2.

``variant="paper"`` follows the paper instead: the crop keeps the central 90% of the variation mass,
grey levels are always 0-1, ``P`` comes from the cropped window, and differences are binned against
the original values. Signatures of different variants must not be compared with each other.

Orientations
------------
A search, a comparison or a dedupe of images signs their 8 flips and rotations by 90 degrees from
the pixels of one decode (``ImageSignature.orientations_of_grey``): each is the signature the
turned file would have. ``signature_variants`` does it by index arithmetic on a signature alone,
which is exact for the paper variant but not for 1.x's (its crop and integer grid are not
symmetric: a median 0.07 from the turned pixels' signature, against 0.02 for a mirrored copy
signed from its pixels), so it serves only where there are no pixels: records already stored,
deduplicated without their images. In a store with image-match 2's defaults a match through
another orientation than the image's own counts ``ORIENTATION_MARGIN`` more.

Windows, central crops, small rotations and corner crops
--------------------------------------------------------
Crops, bars added around a picture and small rotations move every grid point, so the signature of
such a copy is far from the original's. Signing *parts* of an image finds them again: ``window_of``
cuts a fractional window out of a decoded grey array (keeping the original-size semantics of a
draft decode) and ``rotate_grey`` turns it by a few degrees. A store with ``crop_windows`` keeps
the signatures of each image's central windows (``CROP_WINDOW_AREAS``) beside its own, so that a
copy cropped to its centre compares with the window of the same extent; a search with
``central_crops`` does the same from the query's side, signing the query on the grid its original
would have had were the query its central crop keeping ``CENTRAL_CROP_SIDES`` of each side
(``uncropped_signature``); with ``frames`` it also signs the query's central frames
(``QUERY_FRAMES``: its middle without caption bars, letterbox bars or a border), with
``small_rotations`` the query turned back by ``SMALL_ROTATIONS`` degrees (and cut to where the
original lies when the turn grew the canvas, ``expanded_rotation_box``), and with ``insets`` the
rectangles bounded by long straight edges that ``inset_windows`` finds (a picture pasted into a
larger one), and with ``corner_crops`` the windows where the query, were it cropped at a corner,
would show the original's stored central window (``corner_crop_windows``).
``ImageSignature.record_signatures`` and ``query_signatures`` make those sets from one decode,
``query_margins`` says what each of a query's signatures adds to a distance (``WINDOW_MARGIN``,
``QUERY_MARGIN``, ``ORIENTATION_MARGIN``) and ``query_part_names`` what each is. The windows,
sides, frames, angles and margins were chosen on the tuning share of the dev corpus by
``benchmarks/accuracy.py`` (README.rst, "Crops, bars, rotations and insets").

A signature with every value 0 comes from a featureless image (blank, or uniform enough that no
neighbour difference passes ``identical_tolerance``). ``is_featureless`` tells; such a signature is
at distance 1.0 from everything, itself included, so blank images never match anything.
"""

import itertools
import math
import os
from collections import deque
from functools import lru_cache
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np

# CorruptImageError is imported from here by image-match 1.x code.
from . import kernel
from .errors import CorruptImageError, ImageMatchError, InvalidParameterError  # noqa: F401
from .loading import GreySource, decode_grey, decode_grey_source, load_grey

VARIANTS = ("1.x", "paper")

#: The central windows a store with ``crop_windows=True`` signs beside each image, by the share of
#: the area they keep (the side shrinks by its square root, as a crop keeping the aspect ratio).
CROP_WINDOW_AREAS = (0.5, 0.75)
#: The share of each side a copy cropped around its centre kept, for which a search with
#: ``central_crops=True`` signs the query on the grid its original had (``uncropped_signature``):
#: each finds copies keeping about 5% more or less of each side, so 0.9 finds those keeping 72-90%
#: of the area (5% cut off each side: 81%), 0.8 those keeping 58-72% (64%); the whole signature
#: finds those keeping more.
CENTRAL_CROP_SIDES = (0.9, 0.8)
#: The central frames a search with ``frames=True`` signs beside the query, as (share of the
#: height, share of the width): without bars above and below (caption bars, letterbox) of two
#: heights, and without a border all round.
QUERY_FRAMES = ((0.74, 1.0), (0.80, 1.0), (0.86, 0.86))
#: The angles (degrees, counter-clockwise) a search with ``small_rotations=True`` turns the query
#: by: a copy turned by about as much either way is turned back.
SMALL_ROTATIONS = (-5.0, 5.0, -10.0, 10.0, -15.0, 15.0)
#: At most this many rectangles ``inset_windows`` finds, which a search with ``insets=True`` signs.
INSET_WINDOWS = 2
#: The share of each side a copy cropped at a corner keeps, for which a search with
#: ``corner_crops`` signs the query's windows showing the original's smallest central window
#: (``corner_crop_windows``): 0.894, 80% of the area; copies keeping 85-95% come within reach.
CORNER_CROP_SIDE = 0.894
#: What a match through a stored window adds to its distance, and what one through a query's
#: frame, rotation or inset adds: they compare part of a picture, and parts of different pictures
#: look alike more often than wholes, so such a match must be closer to count. With these, the
#: share of unrelated pairs below the cutoffs stays about that of whole signatures
#: (benchmarks/accuracy.py), while the copies they are for are still found (a central crop is
#: about 0.1 from its window).
WINDOW_MARGIN = 0.10
QUERY_MARGIN = 0.07
#: What a match through another orientation of the query (a flip or a turn by 90, 180 or 270
#: degrees) adds to its distance in a store with image-match 2's defaults (its
#: ``orientation_margin``; 1.x's stores add nothing, as 1.x): a mirrored copy is a median 0.02
#: from its original (at most 0.21 on the dev corpus), and without a margin the 8 orientations
#: let 8 times as many unrelated pairs below the cutoff as the query alone, the mirror image 3
#: times; with it, as many.
ORIENTATION_MARGIN = 0.07

# Neighbour offsets (row, column) in the order 1.x stores them: upper left, up, upper right, left,
# right, lower left, down, lower right. The 4-neighbour layout keeps up, left, right, down.
NEIGHBOUR_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))
AXIAL_OFFSETS = ((-1, 0), (0, -1), (0, 1), (1, 0))


def _check_variant(variant):
    if variant not in VARIANTS:
        raise InvalidParameterError(f"variant={variant!r}: must be one of {', '.join(VARIANTS)}")


def crop_window(grey, lower_percentile=5, upper_percentile=95, fix_ratio=False, variant="1.x"):
    """The rows and columns that hold the image's content.

    Parameters
    ----------
    grey : (H, W) ndarray
        Grey levels, as ``load_grey`` returns them.
    lower_percentile, upper_percentile : float
        How much variation to cut on each side, in percent.
    fix_ratio : bool
        Use the larger of the two ranges for both axes (1.x's option for square renderings), cut
        to each axis's size (1.x read past the shorter side of an image that is not square).
    variant : {"1.x", "paper"}
        "1.x": integer limits where the cumulative-difference array reaches its own percentile
        *values* (about 5% of the size, whatever the content, unless borders are flat).
        "paper": limits in continuous pixel-edge coordinates where the cumulative variation
        reaches the given share of its total, interpolated within a row or column, so that the
        window of a flipped image is the flipped window.

    Returns
    -------
    ((top, bottom), (left, right))
        ints for "1.x", floats for "paper"; an axis without any variation keeps the band between
        the two percentages of its size.
    """
    # Variation of each row (its horizontal differences) and of each column (its vertical ones).
    # For 8-bit input the subtraction wraps around modulo 256 exactly as in 1.x, which signed
    # such input as is.
    row_variation, column_variation = _variations(grey)

    limits = []
    for variation, size in ((row_variation, grey.shape[0]), (column_variation, grey.shape[1])):
        if variant == "1.x":
            limits.append(_crop_limits_1x(variation.cumsum(), size, lower_percentile,
                                          upper_percentile))
        else:
            limits.append(_crop_limits_paper(variation, size, lower_percentile, upper_percentile))

    if fix_ratio:
        (top, bottom), (left, right) = limits
        low, high = limits[0] if bottom - top > right - left else limits[1]
        return tuple((min(low, size), min(high, size)) for size in grey.shape)
    return tuple(limits)


def _variations(grey):
    """``(row_variation, column_variation)``: the sums of the absolute differences between
    neighbours along each row and down each column.

    Differences are taken in the array's own dtype; float ones are summed in float64 (in numpy's
    order, which the compiled kernel does not repeat: ``image_match.kernel``). The order cannot
    move a crop limit: the limits depend on these sums only through which are zero (a sum of
    non-negative terms is zero in any order) and through comparisons of running totals with a
    percentile interpolated between two of them, which a rounding of the last bit changes only
    when a row's variation is as small as that rounding. The float32 grey of 8-bit values sums
    exactly in float64, in any order.
    """
    floating = grey.dtype.kind == "f"
    total = np.float64 if floating else None
    columns = _absolute(np.subtract(grey[1:], grey[:-1])).sum(axis=0, dtype=total)
    if not floating or not grey.flags.c_contiguous:
        return _absolute(np.subtract(grey[:, 1:], grey[:, :-1])).sum(axis=1, dtype=total), columns
    # The differences of the flattened array are one contiguous pass, about twice as fast as
    # those of two offset column slices; the one across each row's end is then zeroed.
    height, width = grey.shape
    flat = grey.reshape(-1)
    differences = np.empty(height * width, dtype=grey.dtype)
    np.subtract(flat[1:], flat[:-1], out=differences[:-1])
    differences = _absolute(differences).reshape(height, width)
    differences[:, -1] = 0
    return np.einsum("ij->i", differences, dtype=np.float64, casting="safe"), columns


def _absolute(differences):
    # In place: on a large image one more temporary of its size is hundreds of megabytes.
    return np.abs(differences, out=differences)


def _crop_limits_1x(cumulative, size, lower_percentile, upper_percentile):
    # Cumulative sums are sorted already, so their percentiles need no sort.
    low_value, high_value = percentiles_of_sorted(cumulative, (lower_percentile, upper_percentile))
    low = int(np.searchsorted(cumulative, low_value, side="right"))
    high = int(np.searchsorted(cumulative, high_value, side="left"))
    if low > high:  # featureless along this axis
        return int(lower_percentile / 100.0 * size), int(upper_percentile / 100.0 * size)
    return low, high


def _crop_limits_paper(variation, size, lower_percentile, upper_percentile):
    variation = variation.astype(np.float64)
    total = variation.sum()
    if not total > 0:
        return lower_percentile / 100.0 * size, upper_percentile / 100.0 * size
    # Row/column i spans [i, i + 1) and carries its variation evenly: the cumulative mass at
    # each edge, inverted by linear interpolation. Cutting the same share from the far end (on
    # the reversed mass) keeps the result symmetric under flips.
    edges = np.arange(variation.size + 1, dtype=np.float64)
    # Sizes of the differences' axis can be one short (a 1-pixel image): spread over the size.
    edges *= size / variation.size
    cumulative = np.concatenate(([0.0], np.cumsum(variation)))
    reverse = np.concatenate(([0.0], np.cumsum(variation[::-1])))
    low = float(np.interp(total * lower_percentile / 100.0, cumulative, edges))
    high = size - float(np.interp(total * (100 - upper_percentile) / 100.0, reverse, edges))
    return low, max(low, high)


def percentiles_of_sorted(values, percentiles):
    """``np.percentile(values, percentiles)`` for ``values`` sorted ascending, without sorting.

    The same floats as numpy's default ("linear") method, at a fraction of its overhead, which
    matters on a path that takes a few hundred microseconds in all: the few percentiles asked
    for are interpolated one by one on Python floats (IEEE doubles, as numpy's float64).
    """
    last = values.shape[0] - 1
    result = []
    for percentile in percentiles:
        virtual = last * (float(percentile) / 100)
        below = min(max(math.floor(virtual), 0), last)
        weight = virtual - below
        low, high = float(values[below]), float(values[min(below + 1, last)])
        # numpy's _lerp: interpolate from the nearer end, for the same rounding.
        step = high - low
        result.append(high - step * (1 - weight) if weight >= 0.5 else low + step * weight)
    return np.array(result)


def grid_points(window, n=9, variant="1.x"):
    """Row and column coordinates of an ``n`` x ``n`` grid inside ``window``.

    The ``n + 2`` evenly spaced positions from edge to edge, without the two edges. "1.x" rounds
    them down to integers: ``np.linspace(low, high, n + 2, dtype=int)[1:-1]`` (the same floats;
    the arithmetic is spelled out because linspace's overhead shows on this path). "paper" keeps
    them as floats, in pixel-edge coordinates.
    """
    axes = []
    for low, high in window:
        low = float(low)
        step = (float(high) - low) / (n + 1)
        positions = [index * step + low for index in range(1, n + 1)]
        axes.append(np.array([math.floor(position) for position in positions])
                    if variant == "1.x" else np.array(positions))
    return tuple(axes)


def sample_size(shape, P=None):
    """The side ``P`` of the square averaged around each grid point, for an image of ``shape``.

    The paper's ``max(2, floor(0.5 + min(H, W) / 20))`` unless ``P`` is given.
    """
    if P is not None:
        return int(P)
    return max(2, int(0.5 + min(shape) / 20.0))


def square_spans(centres, P, size, variant="1.x"):
    """``(starts, stops)`` of the squares' sides around ``centres`` along an axis of ``size``.

    "1.x": ``[floor(x - P/2), floor(x - P/2) + P)``, moved inside at the start, cut at the end,
    in integer pixels. "paper": ``[x - P/2, x + P/2)`` cut to ``[0, size]``, in continuous
    coordinates, symmetric under flips.
    """
    if variant == "1.x":
        starts = np.maximum(np.floor(centres - P / 2.0), 0).astype(np.intp)
        return starts, np.minimum(starts + P, size)
    return np.clip(centres - P / 2.0, 0, size), np.clip(centres + P / 2.0, 0, size)


def block_means(grey, row_spans, column_spans, original_shape=None):
    """Mean grey level of each rectangle ``row_spans[i] x column_spans[j]``.

    Parameters
    ----------
    grey : (h, w) ndarray
    row_spans, column_spans : pairs of (n,) arrays
        ``(starts, stops)`` along each axis, as ``square_spans`` gives them, in the coordinates of
        ``original_shape``.
    original_shape : (H, W) or None
        The size of the image ``grey`` was decoded from at a reduced scale (a draft decode); each
        pixel of ``grey`` then stands for a rectangle of the original. None: ``grey`` is the
        original.

    Returns
    -------
    (n, n) float64 ndarray
        Integer spans on the original pixels are summed exactly as 1.x's ``np.mean`` does; other
        spans weigh each pixel by the area it shares with the rectangle.
    """
    shape = grey.shape if original_shape is None else tuple(original_shape)
    (row_starts, row_stops), (column_starts, column_stops) = row_spans, column_spans
    integral = all(np.asarray(bound).dtype.kind in "iu"
                   for bound in (row_starts, row_stops, column_starts, column_stops))
    if shape == grey.shape and integral:
        return _pixel_block_means(grey, row_starts, row_stops, column_starts, column_stops)

    # Area-weighted sums: each pixel weighs the area it shares with a square. Each band of
    # squares adds the pixel rows it touches, then each square the columns it touches, one
    # after another from the top and from the left: an order written down here (numpy's own
    # sums, einsums and matrix products add in orders of their own), which the compiled kernel
    # follows (image_match.kernel), so that a tie between squares' means (uniform squares)
    # falls the same way in both. A loop runs over the few rows or columns a square touches,
    # each step on all squares at once.
    row_scale, column_scale = grey.shape[0] / shape[0], grey.shape[1] / shape[1]
    top, bottom = row_starts * row_scale, row_stops * row_scale
    left, right = column_starts * column_scale, column_stops * column_scale
    band_sums = np.zeros((len(top), grey.shape[1]))
    first = np.floor(top).astype(np.intp)
    for offset in range(max(int(np.max(np.ceil(bottom) - first)), 1)):
        row = first + offset
        band_sums += _coverage(row, top, bottom)[:, None] * grey[np.minimum(row, grey.shape[0] - 1)]
    sums = np.zeros((len(top), len(left)))
    first = np.floor(left).astype(np.intp)
    for offset in range(max(int(np.max(np.ceil(right) - first)), 1)):
        column = first + offset
        weights = np.where(column < grey.shape[1], _coverage(column, left, right), 0)
        sums += band_sums[:, np.minimum(column, grey.shape[1] - 1)] * weights
    areas = np.outer(bottom - top, right - left)
    return sums / np.where(areas > 0, areas, 1)


def _coverage(pixels, low, high):
    """How much of pixel ``[pixels[i], pixels[i] + 1)`` span ``[low[i], high[i])`` covers, 0 to 1."""
    # np.maximum, not np.clip: the same values, without clip's checks (a call per pixel row of
    # every square, many per signature).
    return np.maximum(np.minimum(pixels + 1, high) - np.maximum(pixels, low), 0)


def _pixel_block_means(grey, row_starts, row_stops, column_starts, column_stops):
    # Each band of squares adds its rows one after another from the top (a loop over the rows of
    # a square, each step on all bands at once), in the order the compiled kernel follows; the
    # squares' sums are differences of the bands' cumulative sums along the columns.
    height, width = grey.shape
    band_sums = np.zeros((len(row_starts), width))
    for offset in range(int(np.max(row_stops - row_starts))):
        rows = row_starts + offset
        np.add(band_sums, grey[np.minimum(rows, height - 1)], out=band_sums,
               where=(rows < row_stops)[:, None])  # a band cut by the bottom edge has fewer rows
    cumulative = np.zeros((band_sums.shape[0], width + 1))
    np.cumsum(band_sums, axis=1, out=cumulative[:, 1:])
    square_sums = cumulative[:, column_stops] - cumulative[:, column_starts]
    return square_sums / np.outer(row_stops - row_starts, column_stops - column_starts)


def neighbour_differences(means, diagonal_neighbors=True):
    """Each grid point's mean minus each neighbour's, 0 where the neighbour is off the grid.

    Returns
    -------
    (n, n, 8) ndarray, or (n, n, 4) without diagonal neighbours, in ``NEIGHBOUR_OFFSETS`` order.
    """
    rows, columns = means.shape
    neighbours, off_grid = _neighbour_indices(rows, columns, diagonal_neighbors)
    flat = means.ravel()
    differences = flat[:, None] - flat[neighbours]
    differences[off_grid] = 0.0
    return differences.reshape(rows, columns, -1)


@lru_cache(maxsize=8)
def _neighbour_indices(rows, columns, diagonal_neighbors):
    """(rows * columns, k) flat indices of each point's neighbours, and where they are off the grid."""
    offsets = NEIGHBOUR_OFFSETS if diagonal_neighbors else AXIAL_OFFSETS
    r, c = np.divmod(np.arange(rows * columns), columns)
    neighbour_rows = r[:, None] + np.array([dr for dr, _ in offsets])
    neighbour_columns = c[:, None] + np.array([dc for _, dc in offsets])
    off_grid = ((neighbour_rows < 0) | (neighbour_rows >= rows)
                | (neighbour_columns < 0) | (neighbour_columns >= columns))
    neighbours = np.where(off_grid, 0, neighbour_rows * columns + neighbour_columns)
    return neighbours, off_grid


def quantize_differences(differences, identical_tolerance=2 / 255.0, n_levels=2, variant="1.x"):
    """Bin differences into the integers ``-n_levels .. n_levels``.

    Differences smaller in size than ``identical_tolerance`` become 0. The positive ones are split
    into ``n_levels`` groups of equal count by their percentiles, 1 for the smallest; the negative
    ones likewise with negative codes. "1.x" assigns the groups one after another in place, so a
    value already coded may be coded again (its ``+-1 -> +-2`` quirk); "paper" bins the original
    values. All zero when nothing passes the tolerance (a featureless image).

    Returns
    -------
    int8 ndarray of the same shape
    """
    values = np.array(differences, dtype=np.float64)
    values[np.abs(values) < identical_tolerance] = 0.0
    # One sort gives both signs' sorted values (each numpy call counts on arrays this small).
    ordered = np.sort(values, axis=None)
    negative = ordered[:np.searchsorted(ordered, 0.0, side="left")]
    positive = ordered[np.searchsorted(ordered, 0.0, side="right"):]
    if positive.size == 0 and negative.size == 0:
        return np.zeros(values.shape, dtype=np.int8)

    levels = _percentile_levels(n_levels)
    if variant == "1.x":
        # Literal 1.x: each group is assigned over the partly coded array.
        if positive.size:
            cutoffs = percentiles_of_sorted(positive, levels)
            for level in range(n_levels):
                values[(values >= cutoffs[level]) & (values <= cutoffs[level + 1])] = level + 1
        if negative.size:
            cutoffs = percentiles_of_sorted(negative, levels[::-1])
            for level in range(n_levels):
                values[(values <= cutoffs[level]) & (values >= cutoffs[level + 1])] = -(level + 1)
        return values.astype(np.int8)

    codes = np.zeros(values.shape, dtype=np.int8)
    if positive.size:
        inner = percentiles_of_sorted(positive, levels[1:-1])
        where = values > 0
        codes[where] = 1 + np.searchsorted(inner, values[where], side="left")
    if negative.size:
        inner = percentiles_of_sorted(-negative[::-1], levels[1:-1])  # magnitudes, ascending
        where = values < 0
        codes[where] = -1 - np.searchsorted(inner, -values[where], side="left")
    return codes


@lru_cache(maxsize=8)
def _percentile_levels(n_levels):
    """The percentiles splitting values into ``n_levels`` groups: ``np.linspace(0, 100, ...)``."""
    return tuple(float(level) for level in np.linspace(0, 100, n_levels + 1))


@lru_cache(maxsize=8)
def _percentile_array(n_levels):
    return np.array(_percentile_levels(n_levels))


def signature_from_grey(grey, n=9, crop_percentiles=(5, 95), P=None, diagonal_neighbors=True,
                        identical_tolerance=2 / 255.0, n_levels=2, fix_ratio=False, variant="1.x",
                        original_shape=None):
    """The signature of a 2-D grey array: steps 1-5 above, flattened.

    Parameters are those of ``ImageSignature``, and:

    original_shape : (H, W) or None
        When ``grey`` is a reduced-scale decode of a larger image, that image's size: the grid,
        ``P`` and the squares are then placed as on the original, so that the signature stays
        close to the one of a full decode. See ``block_means``.

    Returns
    -------
    (n * n * 8,) int8 ndarray (``n * n * 4`` without diagonal neighbours)
    """
    grey = np.asarray(grey)
    if grey.ndim != 2 or grey.size == 0:
        raise InvalidParameterError(f"grey must be a non-empty 2-D array, not shape {grey.shape}")
    shape = grey.shape if original_shape is None else original_shape
    return signature_from_source(GreySource(grey, "grey"), shape, n, crop_percentiles, P,
                                 diagonal_neighbors, identical_tolerance, n_levels, fix_ratio,
                                 variant)


def signature_from_source(source, original_shape, n=9, crop_percentiles=(5, 95), P=None,
                          diagonal_neighbors=True, identical_tolerance=2 / 255.0, n_levels=2,
                          fix_ratio=False, variant="1.x"):
    """The signature of a ``loading.GreySource`` (``loading.decode_grey_source``): by the compiled
    kernel where it is in use (``image_match.kernel``), which reads 8-bit pixels without making
    a float grey array, else by the numpy steps on ``source.grey()``; the same signature either
    way. Parameters: as ``signature_from_grey``, with ``original_shape`` required.
    """
    _check_variant(variant)
    if variant == "1.x" and kernel.in_use():
        signature = kernel.signature(source, original_shape, n, crop_percentiles, P,
                                     diagonal_neighbors, identical_tolerance, n_levels, fix_ratio,
                                     _percentile_array(n_levels))
        if signature is not None:
            return signature
    grey = source.grey()
    shape = tuple(original_shape)
    if variant == "paper" and grey.dtype == np.uint8:
        grey = grey * (1.0 / 255)

    if crop_percentiles is None:
        window = ((0, shape[0]), (0, shape[1]))
    else:
        window = crop_window(grey, crop_percentiles[0], crop_percentiles[1], fix_ratio, variant)
        if shape != grey.shape:
            window = _scale_window(window, shape, grey.shape, variant)
    rows, columns = grid_points(window, n, variant)
    if variant == "1.x":
        size = sample_size(shape, P)
    else:
        size = sample_size((window[0][1] - window[0][0], window[1][1] - window[1][0]), P)
    means = block_means(grey, square_spans(rows, size, shape[0], variant),
                        square_spans(columns, size, shape[1], variant), shape)
    differences = neighbour_differences(means, diagonal_neighbors)
    return quantize_differences(differences, identical_tolerance, n_levels, variant).ravel()


def _scale_window(window, shape, reduced_shape, variant):
    """A window found on a reduced decode, in the original's coordinates."""
    scaled = tuple((low * full / reduced, high * full / reduced)
                   for (low, high), full, reduced in zip(window, shape, reduced_shape))
    if variant == "1.x":
        return tuple((int(round(low)), int(round(high))) for low, high in scaled)
    return scaled


def uncropped_signature(grey, kept_side, n=9, crop_percentiles=(5, 95), P=None,
                        diagonal_neighbors=True, identical_tolerance=2 / 255.0, n_levels=2,
                        fix_ratio=False, variant="1.x", original_shape=None):
    """The signature ``grey``'s original would have, were ``grey`` its central crop keeping
    ``kept_side`` of each side: the grid and squares are placed where the original's were.

    The original's crop is taken at ``crop_percentiles`` percent of its size, where 1.x's lands
    whatever the content (the paper variant's moves with the content: an approximation there).
    For a copy cropped so, the signature is as close to its original's as a resized copy's is
    (median 0.07 on the dev corpus), where the copy's own signature is 0.38 away (81% of the area
    kept) or 0.54 (64%). Grid points the original had outside the copy are moved to its edge:
    down to a ``kept_side`` of about 0.78 with the defaults, none are.

    Parameters are those of ``signature_from_grey``, and:

    kept_side : float
        In (0, 1]: the share of its original's height and width the image is assumed to show.

    Returns
    -------
    (n * n * 8,) int8 ndarray (``n * n * 4`` without diagonal neighbours)
    """
    return uncropped_signatures(grey, (kept_side,), n, crop_percentiles, P, diagonal_neighbors,
                                identical_tolerance, n_levels, fix_ratio, variant,
                                original_shape)[0]


def uncropped_signatures(grey, kept_sides, n=9, crop_percentiles=(5, 95), P=None,
                         diagonal_neighbors=True, identical_tolerance=2 / 255.0, n_levels=2,
                         fix_ratio=False, variant="1.x", original_shape=None):
    """``uncropped_signature`` for each of ``kept_sides``: (len(kept_sides), sig_length) int8.

    The squares of every side are averaged in one ``block_means`` call (the grids side by side,
    the blocks off the diagonal thrown away): its cost is in numpy's calls, not in the squares,
    and each square's sum is made of the same additions as alone, so the signatures are the same.
    """
    grey = np.asarray(grey)
    if grey.ndim != 2 or grey.size == 0:
        raise InvalidParameterError(f"grey must be a non-empty 2-D array, not shape {grey.shape}")
    for kept_side in kept_sides:
        if not isinstance(kept_side, (int, float)) or not 0 < kept_side <= 1:
            raise InvalidParameterError(f"kept_side={kept_side!r}: must be a number in (0, 1]")
    _check_variant(variant)
    if not len(kept_sides):
        return np.zeros((0, n * n * (8 if diagonal_neighbors else 4)), np.int8)
    shape = grey.shape if original_shape is None else tuple(original_shape)
    if variant == "paper" and grey.dtype == np.uint8:
        grey = grey * (1.0 / 255)
    lower, upper = (0, 100) if crop_percentiles is None else crop_percentiles
    row_spans, column_spans = [], []
    for kept_side in kept_sides:
        # The original's window, in this image's pixels: the image is the original's middle.
        window = tuple((size * (0.5 - (0.5 - lower / 100) / kept_side),
                        size * (0.5 + (upper / 100 - 0.5) / kept_side)) for size in shape)
        if fix_ratio:  # 1.x's option: the larger range for both axes
            window = (max(window, key=lambda limits: limits[1] - limits[0]),) * 2
        rows, columns = (np.clip(points, 0, size - 1)
                         for points, size in zip(grid_points(window, n, variant), shape))
        if variant == "1.x":
            size = sample_size((shape[0] / kept_side, shape[1] / kept_side), P)
        else:
            size = sample_size((window[0][1] - window[0][0], window[1][1] - window[1][0]), P)
        row_spans.append(square_spans(rows, size, shape[0], variant))
        column_spans.append(square_spans(columns, size, shape[1], variant))
    means = block_means(grey, [np.concatenate(bounds) for bounds in zip(*row_spans)],
                        [np.concatenate(bounds) for bounds in zip(*column_spans)], shape)
    return np.stack([quantize_differences(neighbour_differences(
        means[index * n:(index + 1) * n, index * n:(index + 1) * n], diagonal_neighbors),
        identical_tolerance, n_levels, variant).ravel() for index in range(len(kept_sides))])


def central_window(height_share, width_share=None):
    """The centred window keeping ``height_share`` of the height and ``width_share`` (by default
    the same) of the width, as fractions ``(top, bottom, left, right)`` for ``window_of``."""
    width_share = height_share if width_share is None else width_share
    for share in (height_share, width_share):
        if not 0 < share <= 1:
            raise InvalidParameterError(f"window share {share!r}: must be in (0, 1]")
    return ((1 - height_share) / 2, (1 + height_share) / 2,
            (1 - width_share) / 2, (1 + width_share) / 2)


def crop_windows(areas=CROP_WINDOW_AREAS):
    """The centred windows keeping each of ``areas`` (0-1) of the image, with its aspect ratio."""
    return [central_window(float(np.sqrt(area))) for area in areas]


def window_of(grey, window, original_shape=None):
    """A fractional window of a grey array, and the size it has in the original image.

    Parameters
    ----------
    grey : (h, w) ndarray
    window : (top, bottom, left, right)
        Fractions of the height and width, 0 <= top < bottom <= 1, 0 <= left < right <= 1.
    original_shape : (H, W) or None
        The image's size when ``grey`` is a reduced-scale decode of it (see ``block_means``).

    Returns
    -------
    (grey window, (H', W'))
        The rows and columns nearest to the fractions (at least one of each), and the window's
        size in the original's pixels, to sign it as the crop of the original would be signed.
    """
    grey = np.asarray(grey)
    top, bottom, left, right = window
    if not (0 <= top < bottom <= 1 and 0 <= left < right <= 1):
        raise InvalidParameterError(f"window {window!r}: need 0 <= top < bottom <= 1 and "
                                    "0 <= left < right <= 1")
    height, width = grey.shape
    full_height, full_width = grey.shape if original_shape is None else original_shape
    rows = _window_span(top, bottom, height)
    columns = _window_span(left, right, width)
    shape = (max(1, round((rows[1] - rows[0]) * full_height / height)),
             max(1, round((columns[1] - columns[0]) * full_width / width)))
    return grey[rows[0]:rows[1], columns[0]:columns[1]], shape


def _window_span(low, high, size):
    start = min(int(round(low * size)), size - 1)
    return start, max(int(round(high * size)), start + 1)


def rotate_grey(grey, degrees):
    """``grey`` turned counter-clockwise by ``degrees`` about its centre.

    The result keeps the array's size (and so its original-size semantics after a draft decode);
    the corners that come from outside are 0, black, as a plain rotation of a copy leaves them.
    Bicubic interpolation, on Pillow's 32-bit float images: the grey levels keep their scale
    (clipped to the input's range, which bicubic overshoots at sharp edges).

    Returns
    -------
    (h, w) float32 ndarray
    """
    from PIL import Image

    grey = np.ascontiguousarray(grey, dtype=np.float32)
    turned = np.asarray(Image.fromarray(grey).rotate(float(degrees),
                                                     resample=Image.Resampling.BICUBIC))
    return np.clip(turned, min(float(grey.min()), 0.0), float(grey.max()))


def expanded_rotation_box(shape, degrees):
    """Where the picture is in a copy of it turned by ``degrees`` on a canvas grown to hold it
    whole (image editors' "rotate", the corners filled), once the copy is turned back keeping
    its size: the centred window of the picture's own size, as fractions for ``window_of``.

    A W x H picture turned by t fills a canvas of (W cos t + H sin t) x (W sin t + H cos t);
    ``shape`` is the canvas's (H', W'), solved for W and H. None when no picture turned by that
    much gives a canvas of this shape (one too narrow for the angle, or 45 degrees and more).
    """
    height, width = shape
    if not abs(float(degrees)) < 45:
        return None
    turn = math.radians(abs(float(degrees)))
    cosine, sine = math.cos(turn), math.sin(turn)
    determinant = cosine * cosine - sine * sine
    picture_height = (height * cosine - width * sine) / determinant
    picture_width = (width * cosine - height * sine) / determinant
    if picture_height <= 0 or picture_width <= 0:
        return None
    return central_window(min(picture_height / height, 1.0), min(picture_width / width, 1.0))


def corner_crops_hold(area, side=CORNER_CROP_SIDE):
    """True when a copy keeping ``side`` of each side from a corner holds its original's central
    window of ``area`` whole: for areas up to ``(2 * side - 1) ** 2`` (62% at the default)."""
    return 0 < area < 1 and 0.5 + math.sqrt(area) / 2 <= side < 1


def corner_crop_windows(area=min(CROP_WINDOW_AREAS), side=CORNER_CROP_SIDE):
    """Where a copy cropped at a corner shows its original's central window.

    A store with crop windows keeps each image's central window of ``area``; a copy that kept
    ``side`` of the original's height and width from one corner holds that window whole, off its
    own centre. These are the 4 windows of the copy (the crop at the top left, top right, bottom
    left, bottom right) that show it, so that the copy compares with the stored window.

    Returns
    -------
    list of (top, bottom, left, right)
        Fractions of the copy's height and width, as ``window_of`` takes them.
    """
    if not corner_crops_hold(area, side):
        raise InvalidParameterError(f"corner crops keeping {side!r} of each side do not hold the "
                                    f"central window of area {area!r}")
    half = math.sqrt(area) / 2
    kept_start = ((0.5 - half) / side, (0.5 + half) / side)  # the copy starts where it did
    kept_end = ((0.5 - half - (1 - side)) / side, (0.5 + half - (1 - side)) / side)
    return [(*rows, *columns) for rows in (kept_start, kept_end) for columns in (kept_start, kept_end)]


def query_part_names(orientations=False, frames=False, small_rotations=False, insets=False,
                     corner_crops=False, mirror=False, central_crops=False):
    """What each row of ``ImageSignature.query_signatures`` (with the same options) is, in its
    order: the image, its other orientations (``DIHEDRAL_NAMES``; the mirror image alone with
    ``mirror``), then its parts ("central crop 0.9", "frame 0.74x1", "rotation -5",
    "rotation -5 expanded", "inset 1", "corner crop 1"...).

    Returns
    -------
    list of str
    """
    names = ["identity"]
    if orientations:
        names += DIHEDRAL_NAMES[1:]
    elif mirror:
        names.append(MIRROR_NAME)
    if central_crops:
        names += [f"central crop {side:g}" for side in CENTRAL_CROP_SIDES]
    if frames:
        names += [f"frame {height:g}x{width:g}" for height, width in QUERY_FRAMES]
    if small_rotations:
        names += [f"rotation {angle:g}" for angle in SMALL_ROTATIONS]
        names += [f"rotation {angle:g} expanded" for angle in SMALL_ROTATIONS]
    if insets:
        names += [f"inset {number}" for number in range(1, INSET_WINDOWS + 1)]
    if corner_crops:
        names += [f"corner crop {number}" for number in range(1, 5)]
    return names


def query_margins(orientations=False, frames=False, small_rotations=False, insets=False,
                  corner_crops=False, mirror=False, central_crops=False,
                  orientation_margin=ORIENTATION_MARGIN):
    """What each row of ``ImageSignature.query_signatures`` (with the same options) adds to its
    distances: 0 for the image, ``orientation_margin`` for its other orientations (or its mirror
    image), ``QUERY_MARGIN`` for central crops, frames, rotations, insets and corner crop windows.

    Returns
    -------
    (Q,) float64 ndarray
    """
    names = query_part_names(orientations, frames, small_rotations, insets, corner_crops, mirror,
                             central_crops)
    others = 7 if orientations else 1 if mirror else 0
    return np.concatenate([np.zeros(1), np.full(others, float(orientation_margin)),
                           np.full(len(names) - 1 - others, QUERY_MARGIN)])


def inset_windows(grey, count=INSET_WINDOWS):
    """Rectangles of a grey array bounded by long straight edges: where a picture pasted into a
    larger one (a collage, a screenshot, a page) would be.

    An edge is a grey step across a row (column) boundary that is among the image's 30% largest
    steps and larger than the steps one pixel to either side. A candidate side is a boundary with
    edges along at least half of some stretch of 30% of the width (height), the 16 best of each
    direction; the image's own borders are candidates too. A rectangle of candidate sides scores
    the share of its length (the sides on the image's border left out) that runs along edges; those
    scoring at least 0.7, each side at least 0.4, with sides of at least 20% of the image's, at
    most 85% of its area and at most one side on its border, are ranked by score plus 0.6 times
    their share of the area (less 0.5 when a side is on the border), the best ``count`` of them
    kept. Chosen on the dev corpus's inset copies (benchmarks/accuracy.py, ``insets``).

    Parameters
    ----------
    grey : (H, W) ndarray
    count : int

    Returns
    -------
    list of (top, bottom, left, right)
        Fractions of the height and width, as ``window_of`` takes them; the best first, at most
        ``count`` (none when nothing looks like a pasted picture).
    """
    grey = np.asarray(grey, dtype=np.float64)
    height, width = grey.shape
    if min(height, width) < 16 or count < 1:
        return []
    grey = grey / (grey.max() or 1.0)
    across_rows = _steps(np.abs(np.diff(grey, axis=0)))          # (H - 1, W)
    across_columns = _steps(np.abs(np.diff(grey, axis=1)).T).T   # (H, W - 1)
    rows = _candidate_sides(across_rows)
    columns = _candidate_sides(across_columns.T)
    # Boundary i lies between pixels i and i + 1; -1 and size - 1 are the image's own borders.
    rows = np.array([-1, *rows, height - 1])
    columns = np.array([-1, *columns, width - 1])
    # Running counts of edges along each boundary, the borders counting as edges everywhere.
    along_rows = np.vstack([np.ones((1, width)), across_rows, np.ones((1, width))])
    along_columns = np.hstack([np.ones((height, 1)), across_columns, np.ones((height, 1))])
    row_counts = np.concatenate([np.zeros((along_rows.shape[0], 1)),
                                 np.cumsum(along_rows, axis=1)], axis=1)
    column_counts = np.concatenate([np.zeros((1, along_columns.shape[1])),
                                    np.cumsum(along_columns, axis=0)], axis=0)

    top, bottom = (rows[i] for i in np.triu_indices(len(rows), 1))
    left, right = (columns[i] for i in np.triu_indices(len(columns), 1))
    top, bottom = np.repeat(top, len(left)), np.repeat(bottom, len(left))
    left, right = np.tile(left, len(rows) * (len(rows) - 1) // 2), \
        np.tile(right, len(rows) * (len(rows) - 1) // 2)
    high, wide = bottom - top, right - left
    on_border = np.stack([top == -1, bottom == height - 1, left == -1, right == width - 1])
    kept = ((high >= 0.2 * height) & (wide >= 0.2 * width) & (high * wide <= 0.85 * height * width)
            & (on_border.sum(axis=0) <= 1))
    top, bottom, left, right = top[kept], bottom[kept], left[kept], right[kept]
    high, wide, on_border = high[kept], wide[kept], on_border[:, kept]
    if not top.size:
        return []
    sides = np.stack([
        (row_counts[top + 1, right + 1] - row_counts[top + 1, left + 1]) / wide,
        (row_counts[bottom + 1, right + 1] - row_counts[bottom + 1, left + 1]) / wide,
        (column_counts[bottom + 1, left + 1] - column_counts[top + 1, left + 1]) / high,
        (column_counts[bottom + 1, right + 1] - column_counts[top + 1, right + 1]) / high,
    ])
    lengths = np.stack([wide, wide, high, high]) * ~on_border
    score = (sides * lengths).sum(axis=0) / lengths.sum(axis=0)
    good = (score >= 0.7) & (np.where(on_border, 1.0, sides).min(axis=0) >= 0.4)
    rank = score + 0.6 * high * wide / (height * width) - 0.5 * on_border.any(axis=0)
    windows = []
    for i in np.argsort(-np.where(good, rank, -np.inf)):
        if not good[i] or len(windows) == count:
            break
        window = ((top[i] + 1) / height, (bottom[i] + 1) / height,
                  (left[i] + 1) / width, (right[i] + 1) / width)
        # Not the same rectangle again, a pixel or two off.
        if all(max(abs(a - b) for a, b in zip(window, other)) > 0.03 for other in windows):
            windows.append(tuple(float(v) for v in window))
    return windows


def _steps(differences, percentile=70):
    """Where ``differences`` (across the rows of the array) are edges: among the largest
    (above ``percentile``, and at least 0.02 of the grey range), the largest one pixel to either
    side, a boundary blurred over two pixels counting for both."""
    threshold = max(float(np.percentile(differences, percentile)), 0.02)
    edges = differences > threshold
    edges[1:] &= differences[1:] >= differences[:-1]
    edges[:-1] &= differences[:-1] >= differences[1:]
    edges[1:] |= edges[:-1].copy()
    return edges


def _candidate_sides(edges, stretch=0.3, support=0.5, most=16):
    """Boundaries (rows of ``edges``) with edges along ``support`` of some stretch of
    ``stretch`` of their length: the best ``most``, at least 3 apart, in order."""
    length = max(2, int(stretch * edges.shape[1]))
    counts = np.concatenate([np.zeros((edges.shape[0], 1)), np.cumsum(edges, axis=1)], axis=1)
    best = ((counts[:, length:] - counts[:, :-length]) / length).max(axis=1)
    chosen = []
    for i in np.argsort(-best, kind="stable"):
        if best[i] < support or len(chosen) == most:
            break
        if 1 <= i <= edges.shape[0] - 2 and all(abs(i - j) > 2 for j in chosen):
            chosen.append(int(i))
    return sorted(chosen)


def normalized_distance(a, b):
    """``||a - b|| / (||a|| + ||b||)`` between signatures, vectorized.

    Parameters
    ----------
    a, b : array_like
        Signatures of one length; either may be a 2-D array of many signatures (one per row), in
        which case the distances of each row to the other argument are returned.

    Returns
    -------
    float, or (M,) float64 ndarray
        In [0, 1] (opposite ones, 1 up to rounding, give 1.0); 0 for equal signatures;
        1.0 when either signature is all zero (a featureless image matches nothing, not even
        another featureless image).
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape[-1] != b.shape[-1]:
        raise InvalidParameterError(
            f"cannot compare signatures of lengths {a.shape[-1]} and {b.shape[-1]}"
        )
    # int32 keeps squares exact and is 4x smaller than 1.x's int64 for the (M, 648) case.
    a32 = a.astype(np.int32)
    b32 = b.astype(np.int32)
    difference = np.sqrt(np.sum((a32 - b32) ** 2, axis=-1, dtype=np.int64))
    norms = np.sqrt(np.sum(a32 * a32, axis=-1, dtype=np.int64)) + np.sqrt(
        np.sum(b32 * b32, axis=-1, dtype=np.int64)
    )
    featureless = (np.sum(a32 != 0, axis=-1) == 0) | (np.sum(b32 != 0, axis=-1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        distance = np.where(featureless, 1.0, difference / np.where(norms == 0, 1, norms))
    # Opposite signatures (b = -2a) give 1 plus a rounding error of the square roots.
    distance = np.minimum(distance, 1.0)
    if np.ndim(distance) == 0:
        return float(distance)
    return distance


def distance_matrix(a, b):
    """``normalized_distance`` of every row of ``a`` to every row of ``b``, in one matrix product.

    Parameters
    ----------
    a : (M, L) array_like
    b : (N, L) array_like

    Returns
    -------
    (M, N) float64 ndarray
        Equal, value for value, to ``normalized_distance``: the sums of products of signature
        values are small integers, computed exactly.
    """
    # float32 holds every sum here exactly (at most 648 * 2 * 2); einsum's own loops, not BLAS,
    # whose threads would spin on the cores that other searches and workers need.
    a = np.atleast_2d(np.asarray(a)).astype(np.float32)
    b = np.atleast_2d(np.asarray(b)).astype(np.float32)
    if a.shape[-1] != b.shape[-1]:
        raise InvalidParameterError(
            f"cannot compare signatures of lengths {a.shape[-1]} and {b.shape[-1]}"
        )
    a_squares = np.einsum("ij,ij->i", a, a).astype(np.float64)
    b_squares = np.einsum("ij,ij->i", b, b).astype(np.float64)
    products = np.einsum("ij,kj->ik", a, b).astype(np.float64)
    squared_difference = a_squares[:, None] + b_squares[None, :] - 2 * products
    difference = np.sqrt(np.maximum(squared_difference, 0.0))
    norms = np.sqrt(a_squares)[:, None] + np.sqrt(b_squares)[None, :]
    featureless = (a_squares == 0)[:, None] | (b_squares == 0)[None, :]
    return np.minimum(np.where(featureless, 1.0, difference / np.where(featureless, 1.0, norms)),
                      1.0)


def is_featureless(signature):
    """True for the all-zero signature of a blank or featureless image (per row for 2-D input)."""
    return ~np.any(np.asarray(signature), axis=-1)


def _dihedral_transforms():
    """The 8 flips and rotations as functions on arrays whose first two axes are rows and columns.

    Listed in the order ``signature_variants`` returns them.
    """
    return (
        ("identity", lambda a: a),
        ("rotate 90", lambda a: np.rot90(a, 1, axes=(0, 1))),
        ("rotate 180", lambda a: np.rot90(a, 2, axes=(0, 1))),
        ("rotate 270", lambda a: np.rot90(a, 3, axes=(0, 1))),
        ("flip left-right", lambda a: a[:, ::-1]),
        ("flip up-down", lambda a: a[::-1]),
        ("transpose", lambda a: np.swapaxes(a, 0, 1)),
        ("anti-transpose", lambda a: np.rot90(np.swapaxes(a, 0, 1), 2, axes=(0, 1))),
    )


DIHEDRAL_NAMES = tuple(name for name, _ in _dihedral_transforms())
#: The orientation a search with ``mirror=True`` adds: the mirror image.
MIRROR_NAME = "flip left-right"


def dihedral_permutations(n=9, diagonal_neighbors=True):
    """Index arrays that turn a signature into those of its image's 8 flips and rotations.

    ``signature[permutations[t]]`` is the signature of the image transformed by
    ``DIHEDRAL_NAMES[t]``, up to the rounding of the grid positions and the crop.

    Returns
    -------
    (8, n * n * k) intp ndarray, k = 8 or 4
    """
    offsets = NEIGHBOUR_OFFSETS if diagonal_neighbors else AXIAL_OFFSETS
    k = len(offsets)
    positions = np.arange(n * n * k).reshape(n, n, k)
    # Each direction's slot on a 3x3 stencil; moving the stencil with the image tells which old
    # direction each new direction looks along.
    stencil = np.full((3, 3), -1)
    for slot, (dr, dc) in enumerate(offsets):
        stencil[1 + dr, 1 + dc] = slot
    permutations = []
    for _, transform in _dihedral_transforms():
        moved = transform(positions)
        moved_stencil = transform(stencil)
        direction_order = [moved_stencil[1 + dr, 1 + dc] for dr, dc in offsets]
        permutations.append(moved[:, :, direction_order].ravel())
    return np.array(permutations)


def signature_variants(signature, n=9, diagonal_neighbors=True):
    """The signatures of an image's 8 flips and rotations, from its own, by index arithmetic.

    Parameters
    ----------
    signature : (L,) or (M, L) array_like
    n, diagonal_neighbors
        The grid the signature was made with.

    Returns
    -------
    (8, L) or (M, 8, L) ndarray, in ``DIHEDRAL_NAMES`` order (the first is the signature itself).
    """
    signature = np.asarray(signature)
    return signature[..., dihedral_permutations(n, diagonal_neighbors)]


class ImageSignature:
    """Image signature generator, with image-match 1.1.2's parameters and defaults.

    Parameters
    ----------
    n : int
        The grid is ``n`` x ``n`` points.
    crop_percentiles : (float, float) or None
        How much variation to cut off each side before placing the grid; None keeps the whole image.
    P : int or None
        Side of the square averaged at each point; None computes it from the image size.
    diagonal_neighbors : bool
        Compare each point with 8 neighbours (True) or 4.
    identical_tolerance : float
        Grey differences (on the 0-1 scale) smaller than this count as equal.
    n_levels : int
        Differences are binned into ``-n_levels .. n_levels``.
    fix_ratio : bool
        Crop both axes by the larger range (1.x's option for square renderings).
    variant : {"1.x", "paper"}
        "1.x" reproduces image-match 1.1.2 bit for bit; "paper" follows Wong, Bern and Goldberg.
    draft : bool
        Decode large JPEGs at a reduced scale (still at least ``DRAFT_MIN_SIDE`` pixels on the
        short side). Several times faster; signatures move by a small distance (see README.rst).
        False (the default, as 1.x): every pixel is decoded, and signatures equal 1.x's. The
        stores image-match 2 creates sign with True (``drivers.NEW_STORE_DEFAULTS``).
    """

    def __init__(self, n=9, crop_percentiles=(5, 95), P=None, diagonal_neighbors=True,
                 identical_tolerance=2 / 255.0, n_levels=2, fix_ratio=False, variant="1.x",
                 draft=False):
        if type(n) is not int or n < 2:
            raise InvalidParameterError(f"n={n!r}: must be an integer of at least 2")
        if crop_percentiles is not None:
            try:
                lower, upper = crop_percentiles
            except (TypeError, ValueError):
                raise InvalidParameterError(
                    f"crop_percentiles={crop_percentiles!r}: must be a pair (lower, upper) or None"
                ) from None
            if not 0 <= lower < upper <= 100:
                raise InvalidParameterError(
                    f"crop_percentiles={crop_percentiles!r}: need 0 <= lower < upper <= 100"
                )
        if P is not None and (type(P) is not int or P < 1):
            raise InvalidParameterError(f"P={P!r}: must be a positive integer or None")
        if type(diagonal_neighbors) is not bool:
            raise InvalidParameterError(f"diagonal_neighbors={diagonal_neighbors!r}: must be a bool")
        if not isinstance(identical_tolerance, (int, float)) or not 0 <= identical_tolerance <= 1:
            raise InvalidParameterError(
                f"identical_tolerance={identical_tolerance!r}: must be a number in [0, 1]"
            )
        if type(n_levels) is not int or n_levels < 1:
            raise InvalidParameterError(f"n_levels={n_levels!r}: must be a positive integer")
        if type(fix_ratio) is not bool:
            raise InvalidParameterError(f"fix_ratio={fix_ratio!r}: must be a bool")
        if type(draft) is not bool:
            raise InvalidParameterError(f"draft={draft!r}: must be a bool")
        _check_variant(variant)

        self.n = n
        self.crop_percentiles = crop_percentiles
        self.lower_percentile, self.upper_percentile = crop_percentiles or (0, 100)
        self.P = P
        self.diagonal_neighbors = diagonal_neighbors
        self.identical_tolerance = identical_tolerance
        self.n_levels = n_levels
        self.fix_ratio = fix_ratio
        self.variant = variant
        self.draft = draft
        self.sig_length = n * n * (8 if diagonal_neighbors else 4)

    def parameters(self):
        """The parameters as a dict, enough to build an equal ``ImageSignature``."""
        return {
            "n": self.n, "crop_percentiles": self.crop_percentiles, "P": self.P,
            "diagonal_neighbors": self.diagonal_neighbors,
            "identical_tolerance": self.identical_tolerance, "n_levels": self.n_levels,
            "fix_ratio": self.fix_ratio, "variant": self.variant, "draft": self.draft,
        }

    def __repr__(self):
        arguments = ", ".join(f"{key}={value!r}" for key, value in self.parameters().items())
        return f"ImageSignature({arguments})"

    def decode(self, image, bytestream=False):
        """``(grey, original_shape)`` as this generator decodes ``image``; see ``decode_grey``."""
        return decode_grey(image, bytestream=bytestream, draft=self.draft,
                           scale="0-1" if self.variant == "paper" else "1.x")

    def decode_source(self, image, bytestream=False):
        """``(GreySource, original_shape)`` as this generator decodes ``image``, before the grey
        levels are made; see ``loading.decode_grey_source``."""
        return decode_grey_source(image, bytestream=bytestream, draft=self.draft,
                                  scale="0-1" if self.variant == "paper" else "1.x")

    def signature_of_grey(self, grey, original_shape=None):
        """The signature of an already decoded 2-D grey array (see ``signature_from_grey``)."""
        return signature_from_grey(
            grey, self.n, self.crop_percentiles, self.P, self.diagonal_neighbors,
            self.identical_tolerance, self.n_levels, self.fix_ratio, self.variant, original_shape,
        )

    def generate_signature(self, path_or_image, bytestream=False):
        """The signature of one image.

        Parameters
        ----------
        path_or_image
            Anything ``load_grey`` accepts: a path, an http(s) URL, bytes, a binary file, a numpy
            array or a PIL image.
        bytestream : bool
            1.x's flag: ``path_or_image`` holds the encoded bytes of an image.

        Returns
        -------
        (sig_length,) int8 ndarray

        Raises
        ------
        ImageLoadError
            The input is not a readable image; the message names it and says why.
        """
        if self.variant == "1.x" and kernel.in_use():
            # The kernel reads the decoded pixels themselves.
            source, original_shape = self.decode_source(path_or_image, bytestream=bytestream)
            return signature_from_source(
                source, original_shape, self.n, self.crop_percentiles, self.P,
                self.diagonal_neighbors, self.identical_tolerance, self.n_levels, self.fix_ratio,
                self.variant,
            )
        # The numpy steps work on the grey array; the decoded image is let go before them.
        return self.signature_of_grey(*self.decode(path_or_image, bytestream=bytestream))

    def orientation_signatures(self, image, bytestream=False):
        """The signatures of ``image`` in its 8 orientations (``DIHEDRAL_NAMES`` order), from one
        decode: each flip or rotation of the grey array is signed as such an image would be.

        Unlike ``signature_variants`` (index arithmetic on one signature) this is exact for the
        1.x variant too, whose grid is not symmetric under flips, at the cost of 8 signatures'
        arithmetic (a fraction of one decode).

        Returns
        -------
        (8, sig_length) int8 ndarray
        """
        return self.orientations_of_grey(*self.decode(image, bytestream=bytestream))

    def orientations_of_grey(self, grey, original_shape=None, orientations=None):
        """``orientation_signatures`` of an already decoded grey array: (8, sig_length), or those
        of the ``orientations`` given (indices into ``DIHEDRAL_NAMES``)."""
        shape = grey.shape if original_shape is None else tuple(original_shape)
        transforms = _dihedral_transforms()
        signatures = []
        for index in range(len(transforms)) if orientations is None else orientations:
            transform = transforms[index][1]
            # The original's size turned the same way (an empty array of that shape, turned).
            turned_shape = transform(np.empty(shape + (0,))).shape[:2]
            # A contiguous copy: the signature's arithmetic on a flipped or transposed view is
            # slower than the copy.
            turned = np.ascontiguousarray(transform(grey))
            signatures.append(self.signature_of_grey(turned, turned_shape))
        return np.stack(signatures)

    def windows_of_grey(self, grey, original_shape=None, windows=()):
        """The signatures of fractional windows of a decoded grey array, each signed as the crop
        of the original image to that window would be (see ``window_of``).

        Parameters
        ----------
        windows : sequence of (top, bottom, left, right)
            Fractions, as ``central_window`` and ``crop_windows`` give them.

        Returns
        -------
        (len(windows), sig_length) int8 ndarray
        """
        signatures = [self.signature_of_grey(*window_of(grey, window, original_shape))
                      for window in windows]
        return np.stack(signatures) if signatures else np.zeros((0, self.sig_length), np.int8)

    def uncropped_of_grey(self, grey, original_shape=None, sides=CENTRAL_CROP_SIDES):
        """The signatures a decoded grey array's original would have, were the array its central
        crop keeping each of ``sides`` of each side (see ``uncropped_signature``):
        (len(sides), sig_length) int8."""
        return uncropped_signatures(grey, sides, self.n, self.crop_percentiles, self.P,
                                    self.diagonal_neighbors, self.identical_tolerance,
                                    self.n_levels, self.fix_ratio, self.variant, original_shape)

    def rotations_of_grey(self, grey, original_shape=None, angles=SMALL_ROTATIONS):
        """The signatures of a decoded grey array turned by each of ``angles`` (degrees,
        counter-clockwise; see ``rotate_grey``), then of each turned array cut to
        ``expanded_rotation_box`` (a copy turned on a grown canvas, turned back: the picture
        without the canvas): (2 * len(angles), sig_length) int8, all zero (featureless, never
        searched) where no such box exists."""
        shape = grey.shape if original_shape is None else tuple(original_shape)
        turned, cut = [], []
        for angle in angles:
            array = rotate_grey(grey, angle)
            turned.append(self.signature_of_grey(array, shape))
            box = expanded_rotation_box(shape, angle)
            cut.append(np.zeros(self.sig_length, np.int8) if box is None
                       else self.signature_of_grey(*window_of(array, box, shape)))
        signatures = turned + cut
        return np.stack(signatures) if signatures else np.zeros((0, self.sig_length), np.int8)

    def record_signatures(self, image, bytestream=False, areas=CROP_WINDOW_AREAS):
        """What a store with crop windows keeps of an image, from one decode: its signature, then
        the signatures of its central windows keeping each of ``areas`` of it.

        Returns
        -------
        (1 + len(areas), sig_length) int8 ndarray
        """
        grey, shape = self.decode(image, bytestream=bytestream)
        return np.concatenate([self.signature_of_grey(grey, shape)[None],
                               self.windows_of_grey(grey, shape, crop_windows(areas))])

    def query_signatures(self, image, bytestream=False, orientations=False, frames=False,
                         small_rotations=False, insets=False, corner_crops=False, mirror=False,
                         central_crops=False):
        """The signatures a search compares for one image, from one decode.

        Parameters
        ----------
        orientations : bool
            Add the 7 other flips and rotations by 90 degrees (``orientations_of_grey``).
        mirror : bool
            Add the mirror image (left-right flip) alone; implied by ``orientations``.
        central_crops : bool
            Add the signatures the image's original would have, were the image its central crop
            keeping each of ``CENTRAL_CROP_SIDES`` of each side (``uncropped_signature``).
        frames : bool
            Add the central frames ``QUERY_FRAMES``: the picture without bars or a border added
            around it.
        small_rotations : bool
            Add the image turned by each of ``SMALL_ROTATIONS``, then each of those cut to the
            picture a turn on a grown canvas would have held (``rotations_of_grey``).
        insets : bool
            Add the rectangles ``inset_windows`` finds: a picture pasted into this one. Always
            ``INSET_WINDOWS`` rows, all zero (featureless: never searched) for those not found.
        corner_crops : bool or float
            Add the 4 ``corner_crop_windows``: where this image, were it a copy cropped at a
            corner, would show its original's central window of half the area, or of the area
            given (the smallest crop window of the store searched).

        Returns
        -------
        (Q, sig_length) int8 ndarray
            The signature first, then the orientations (``DIHEDRAL_NAMES`` order) or the mirror
            image, the central crops, the frames, the rotations, the insets and the corner crop
            windows asked for: Q = 1 + 7 + 2 + 3 + 12 + 2 + 4 with everything.
            ``query_margins`` with the same options gives the margin of each row,
            ``query_part_names`` its name.
        """
        grey, shape = self.decode(image, bytestream=bytestream)
        return self.query_signatures_of_grey(grey, shape, orientations, frames, small_rotations,
                                             insets, corner_crops, mirror, central_crops)

    def query_signatures_of_grey(self, grey, original_shape=None, orientations=False,
                                 frames=False, small_rotations=False, insets=False,
                                 corner_crops=False, mirror=False, central_crops=False):
        """``query_signatures`` of an already decoded grey array."""
        shape = grey.shape if original_shape is None else tuple(original_shape)
        if orientations:
            parts = [self.orientations_of_grey(grey, shape)]
        elif mirror:
            parts = [self.orientations_of_grey(grey, shape, (0, DIHEDRAL_NAMES.index(MIRROR_NAME)))]
        else:
            parts = [self.signature_of_grey(grey, shape)[None]]
        if central_crops:
            parts.append(self.uncropped_of_grey(grey, shape))
        if frames:
            parts.append(self.windows_of_grey(grey, shape, [central_window(*frame)
                                                            for frame in QUERY_FRAMES]))
        if small_rotations:
            parts.append(self.rotations_of_grey(grey, shape))
        if insets:
            found = self.windows_of_grey(grey, shape, inset_windows(grey))
            parts.append(np.concatenate(
                [found, np.zeros((INSET_WINDOWS - len(found), self.sig_length), np.int8)]))
        if corner_crops:
            area = min(CROP_WINDOW_AREAS) if corner_crops is True else float(corner_crops)
            parts.append(self.windows_of_grey(grey, shape, corner_crop_windows(area)))
        return np.concatenate(parts)

    def generate_signatures(self, inputs, workers=None, chunksize=16):
        """Sign many images on all cores, yielding per input its signature or its error.

        Parameters
        ----------
        inputs : iterable
            Paths, URLs, bytes, arrays... anything ``generate_signature`` takes. Read lazily: a
            few chunks per process are in flight at a time, however long the iterable.
        workers : int or None
            Processes to use; None uses every core, 1 signs in this process.
        chunksize : int
            Inputs sent to a process at a time.

        Yields
        ------
        ndarray or ImageMatchError
            In the order of ``inputs``; one bad input yields its error and the batch goes on.
        """
        return map_signing(self.generate_signature, inputs, workers, chunksize)

    @staticmethod
    def normalized_distance(a, b):
        """``||a - b|| / (||a|| + ||b||)``; see ``image_match.goldberg.normalized_distance``."""
        return normalized_distance(a, b)

    # 1.x's step-by-step methods, kept for code that called them directly.

    @staticmethod
    def preprocess_image(image_or_path, bytestream=False, handle_mpo=True):
        return load_grey(image_or_path, bytestream=bytestream, draft=False)

    @staticmethod
    def crop_image(image, lower_percentile=5, upper_percentile=95, fix_ratio=False):
        return [tuple(limits) for limits in
                crop_window(image, lower_percentile, upper_percentile, fix_ratio)]

    @staticmethod
    def compute_grid_points(image, n=9, window=None):
        if window is None:
            window = ((0, image.shape[0]), (0, image.shape[1]))
        return grid_points(window, n)

    @staticmethod
    def compute_mean_level(image, x_coords, y_coords, P=None):
        P = sample_size(image.shape, P)
        return block_means(image, square_spans(np.asarray(x_coords), P, image.shape[0]),
                           square_spans(np.asarray(y_coords), P, image.shape[1]))

    @staticmethod
    def compute_differentials(grey_level_matrix, diagonal_neighbors=True):
        return neighbour_differences(grey_level_matrix, diagonal_neighbors)

    @staticmethod
    def normalize_and_threshold(difference_array, identical_tolerance=2 / 255.0, n_levels=2):
        # 1.x bins in place and returns None.
        difference_array[...] = quantize_differences(difference_array, identical_tolerance, n_levels)


def _chunks(items, size):
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def map_signing(function, inputs, workers=None, chunksize=16):
    """``function(item)`` for every input on ``workers`` processes, yielding per input its result
    or its ImageMatchError, in order (``ImageSignature.generate_signatures`` for any signing
    function: ``functools.partial(gis.query_signatures, frames=True)``, ``gis.record_signatures``).

    ``function`` must pickle (a bound method of an ``ImageSignature``, or a partial of one);
    ``inputs`` are read lazily, a few chunks per process in flight.
    """
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers <= 1:
        for item in inputs:
            yield _sign_or_error(function, item)
        return
    chunks = _chunks(inputs, chunksize)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        in_flight = deque((chunk, pool.submit(_sign_chunk, function, chunk))
                          for chunk in itertools.islice(chunks, 2 * workers))
        while in_flight:
            chunk, future = in_flight.popleft()
            try:
                results = future.result()
            except BrokenProcessPool:
                raise
            except Exception:
                # An input that cannot be sent to a process (a PIL image whose lazily read file
                # is truncated fails as it is pickled): the chunk is signed here, where each
                # input's failure is its own.
                results = _sign_chunk(function, chunk)
            for chunk in itertools.islice(chunks, 1):
                in_flight.append((chunk, pool.submit(_sign_chunk, function, chunk)))
            yield from results


def _sign_or_error(function, item):
    try:
        return function(item)
    except ImageMatchError as error:
        return error


def _sign_chunk(function, items):
    return [_sign_or_error(function, item) for item in items]
