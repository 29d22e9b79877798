"""Stores of image signatures: every user-facing operation, written once.

``SignatureDatabaseBase`` holds what a user does with a store (add, search, delete, find groups of
duplicates) on top of a few primitives each driver supplies (``image_match.drivers``):

==========================  =====================================================================
primitive                   what the driver does
==========================  =====================================================================
``_insert(records)``        store whole records, replacing those with the same ids, one round
                            trip; return per record None or the reason it was refused
``_candidates(words,...)``  for each row of query words, the records sharing the most words (with
                            their signatures), filtered by a metadata filter; one round trip
``_whole_matches(...)``     optional: the matches as whole records, for a driver whose
                            candidates hold only what ranking reads (id, signature, windows)
``_get(ids)``               the records with these ids ({id: Record}; a damaged record may be
                            the DatabaseError naming it)
``_delete(ids)``            delete these ids; return how many existed
``_ids_with_path(path)``    ids and timestamps of the records whose path is exactly ``path``
``_scan(batch_size)``       every record, in batches (for export and ``find_duplicates``); a
                            damaged one as the DatabaseError naming it, and the scan goes on
``_page(after, limit)``     up to ``limit`` records after the cursor ``after`` in the store's
                            own stable order, and the cursor of the last one (``records_page``;
                            a damaged record as in ``_scan``)
``_paths(offset, limit)``   the paths of the records at ``offset`` in that order (``paths``)
``count()``                 how many records
``_add_distinct(pairs)``    remember pairs of ids (``(a, b, timestamp)``, a < b) marked "not
                            duplicates", replacing a pair already remembered
``_distinct()``             every remembered pair, as ``(a, b, timestamp)``
``_read_config()``          the store's recorded parameters, None for a new or 1.x store
``_create(config)``         make the store (table, index) and record the parameters
``drop()``                  remove the store and everything in it
``describe()``              engine, location and size, for ``stats``
==========================  =====================================================================

Defaults. Constructed directly (``SignatureES(es)``, ``SignatureSQLite(path)``), a store has
image-match 1.x's defaults: full-scale decoding, cutoff 0.45 (``CUTOFF_1X``), and a new record
with a new id for every ``add_image`` (``ids="new"``). image-match 2's own entry points (``open_database``,
and through it the CLI, ingestion and the service) give a NEW store its better defaults
explicitly, from ``drivers.NEW_STORE_DEFAULTS`` (``new_store_defaults=``).

A store records its parameters when it is created - the signature's (variant, grid, draft
decoding), its candidate scheme (``candidates``: 1.x's words of k values, N a signature, or
bands), crop windows, cutoff, id scheme and search defaults - and adopts them whenever it is
opened again, whoever opens it, so that it is always queried the way its records were signed and
indexed. Given explicitly, a parameter that decides what is stored (the signature's, candidate
scheme, crop windows) must equal the recorded one (else ``InvalidParameterError``: signatures made
otherwise do not compare); the cutoff, the id scheme and the search defaults, which decide only
how a search or an add behaves, may be overridden for this handle (and ``search_image``'s
options for one call). A store of
image-match 1.x's documents recorded nothing: it has 1.x's parameters, full-scale decoding
included.

Mirror images, crops, bars, rotations and insets. A search may add signatures of the query:
``all_orientations=True`` its 7 other flips and turns by 90 degrees, ``mirror=True`` its mirror
image alone (``goldberg.signature_variants``: index arithmetic, the same in every search,
comparison and dedupe), ``central_crops=True`` the signatures its original would have were it a
light central crop of it (``goldberg.uncropped_signature``: copies keeping 58-90% of the area).
``mirror`` and ``central_crops`` are a store's parameters too (``search_defaults``): image-match
2's entry points give a new store both (``drivers.NEW_STORE_DEFAULTS``), so a plain
``search_image`` finds mirror images and light crops, for 3 more query signatures; a store
constructed directly searches as 1.x did. A store created with ``crop_windows=True`` keeps,
beside each image's signature, the signatures of its central windows
(``goldberg.CROP_WINDOW_AREAS``: the middle 50% and 75% of the area) and indexes their terms too,
so that a copy cropped to its centre is found down to half the area (about 2.6 times the index).
``frames=True`` adds its central frames (copies with caption bars, letterbox bars or a border
added), ``small_rotations=True`` the query turned by 5, 10 and 15 degrees each way (copies turned
by up to about 15 degrees, keeping their size or on a grown canvas), ``insets=True`` the
rectangles bounded by long straight edges in it (a copy pasted into a larger picture), and in a
store with crop windows ``corner_crops=True`` the query's windows that would show the original's
central window were the query cropped at a corner;
``robust=True`` turns on all that the store allows. A record's distance to a query
is the smallest over the query's signatures and the record's, a match through a part of a picture
counting with a margin; the engine is still asked once per search. benchmarks/accuracy.py
measures each option.

Ids (``ids``, recorded with the store): ``"new"`` (1.x's) gives every added record a new id, so
adding the same path twice keeps two records (``delete_duplicates`` removes the extra ones);
``"path"`` gives it ``default_id(path)``, a hash of the path, so adding the same path again
replaces the record (bulk ingestion delivered twice writes nothing twice). ``id=`` chooses one.
"""

import functools
import itertools
import reprlib
import uuid
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from operator import itemgetter

import numpy as np

from .errors import DatabaseError, ImageMatchError, InvalidParameterError, RecordNotFoundError
from .goldberg import (CORNER_CROP_SIDE, CROP_WINDOW_AREAS, ORIENTATION_MARGIN, WINDOW_MARGIN,
                       ImageSignature, corner_crops_hold, crop_windows, distance_matrix,
                       is_featureless, map_signing, query_margins, signature_variants)
from .goldberg import normalized_distance as _normalized_distance
from .loading import describe
from .records import Record, check_metadata, default_id, normalize_filter, now, record_path
from .words import make_words, scheme_from_config, word_positions

#: image-match 1.x's cutoff: a store constructed directly, or holding 1.x's documents, has it.
CUTOFF_1X = 0.45
# image-match 2's cutoff, which its entry points give a new store (drivers.NEW_STORE_DEFAULTS):
# two unrelated photos are closer than 0.40 with a probability of about 1e-6 (5.3e-7 over 1.9
# million pairs of the dev corpus and its copies), against 4e-5 at 1.x's 0.45; see README.rst
# ("What the cutoff means") and benchmarks/accuracy.py.
DEFAULT_CUTOFF = 0.40
#: How ``add_image`` names a record when no ``id`` is given: "new" (a new id each time, 1.x's) or
#: "path" (``records.default_id(path)``: adding a path again replaces its record).
ID_SCHEMES = ("new", "path")
CONFIG_FORMAT = 3
#: What image-match 2's searches add to a query when not told (a store's ``search_defaults``,
#: recorded with it): its mirror image, and the grids its original would have were it a light
#: central crop. On the dev corpus they find 100% of mirror images and of crops keeping 81% and
#: 64% of the area (58% and 10% without), leave as many unrelated pairs below the cutoff, and
#: cost 3 more query signatures (README.rst, "Crops, bars, rotations and insets").
SEARCH_DEFAULTS = {"mirror": True, "central_crops": True}
#: image-match 1.x's: the query alone.
SEARCH_DEFAULTS_1X = {"mirror": False, "central_crops": False}
#: The most records ``records_page`` returns at a time.
MAX_PAGE = 1000
#: The most records one ``mark_not_duplicates`` call takes (every pair of them is remembered).
MAX_NOT_DUPLICATES = 100

# ImageSignature's parameters in its positional order; all but draft decide what a signature is,
# and draft decides which pixels it is computed from: a store records and pins them all.
_SIGNATURE_KEYS = ("n", "crop_percentiles", "P", "diagonal_neighbors", "identical_tolerance",
                   "n_levels", "fix_ratio", "variant", "draft")
# What a store made before configuration format 3 did not record, as image-match 2 had them then;
# and its search defaults, which image-match 2 recorded later: its own (they need nothing stored).
_UNRECORDED = {"draft": True, "distance_cutoff": DEFAULT_CUTOFF, "ids": "path",
               "search_defaults": SEARCH_DEFAULTS, "orientation_margin": ORIENTATION_MARGIN}
# The parameters that decide only how this handle searches or adds: given explicitly, they hold
# for it whatever the store recorded.
_PER_HANDLE = ("distance_cutoff", "ids", "search_defaults", "orientation_margin")


class SignatureDatabaseBase:
    """A store of image signatures, with image-match 1.x's constructor, defaults and methods.

    Every parameter but ``size``, ``refresh_adds`` and ``new_store_defaults`` is recorded with a
    new store and, when not given, taken from the store's record when it exists (see the module's
    docstring).

    Parameters
    ----------
    k : int
        Values per word (16).
    N : int
        Words per signature (63).
    n_grid : int
        The signature's grid is ``n_grid`` x ``n_grid`` (9).
    crop_percentile : (float, float) or None
        The signature's crop (5, 95).
    distance_cutoff : float or None
        Matches are closer than this. None: the store's; for a new store 1.x's 0.45
        (``CUTOFF_1X``; image-match 2's entry points give new stores 0.40, ``DEFAULT_CUTOFF``: at
        0.45 a store of a million photos returns about 40 unrelated matches a query).
    size : int or None
        Candidates the engine returns per query signature before the exact distance ranks them.
        None: the candidate scheme's (``CandidateScheme.size``: 100 for 1.x's words, fewer for
        bands, which rank a copy among the first few).
    candidates : str, dict or None
        The store's candidate scheme (``words.SCHEMES``): ``"words"``, image-match 1.x's words of
        ``k`` signs, ``N`` a signature; ``"bands"``, bands of signs spread over the signature; or
        a dict of a scheme's parameters (``{"scheme": "bands", "bands": 64, "width": 9}``).
        None: the store's; for a new store 1.x's words (image-match 2's entry points give new
        stores ``words.DEFAULT_BANDS``). Another explicit value than the store's refuses.
    crop_windows : bool, sequence of float or None
        For a new store: True keeps the signatures of each image's central windows
        (``CROP_WINDOW_AREAS``, or the areas given, each in (0, 1)) beside its own, so that copies
        cropped to their centre are found, at about 3 times the index size. None: the store's own
        setting (off for a new store). Another explicit value than the store's refuses.
    ids : {"new", "path"} or None
        How ``add_image`` names a record given no ``id`` (``ID_SCHEMES``). None: the store's; for a
        new store "new", a new record each time, as 1.x.
    search_defaults : dict or None
        What ``search_image`` adds to a query when not told: ``{"mirror": bool, "central_crops":
        bool}``. None: the store's; for a new store ``SEARCH_DEFAULTS_1X``, the query alone, as
        1.x (image-match 2's entry points give ``SEARCH_DEFAULTS``, both on). Given for an
        existing store, it holds for this handle, as the cutoff does.
    orientation_margin : float or None
        What a match through another orientation of a query (its mirror image, a flip or a turn)
        adds to its distance. None: the store's; for a new store 0, as 1.x (image-match 2's entry
        points give ``goldberg.ORIENTATION_MARGIN``, 0.07, which keeps the share of unrelated
        pairs below the cutoff where it is without orientations). Per handle, as the cutoff.
    refresh_adds : bool
        For this handle: ``add_image`` and ``add_images`` make what they added searchable before
        they return (a search right after finds it), unless their ``refresh_after`` says otherwise.
        False, as 1.x: an engine makes new records searchable at its next periodic refresh (within
        1 s); SQLite at once either way. ``open_database`` passes True. It costs an engine refresh
        per ``add_image`` (18 -> 48-55 ms per add on a 2-core machine under load) and one per
        ``add_images`` call; ``add_signatures`` (the bulk write ingestion uses) never refreshes
        unless asked.
    new_store_defaults : dict, optional
        Keyword arguments of this constructor used, for those not given, if the store does not
        exist yet and is created now; ignored for an existing store (``open_database`` passes
        ``drivers.NEW_STORE_DEFAULTS``).
    *signature_args, **signature_kwargs
        More ``ImageSignature`` parameters (``P``, ``variant``, ``draft``...). ``draft`` not given:
        the store's; for a new store False, full-scale decoding as 1.x.
    """

    def __init__(self, k=16, N=63, n_grid=9, crop_percentile=(5, 95), distance_cutoff=None,
                 *signature_args, size=None, candidates=None, crop_windows=None, ids=None,
                 search_defaults=None, orientation_margin=None, refresh_adds=False,
                 new_store_defaults=None, **signature_kwargs):
        if len(signature_args) > len(_SIGNATURE_KEYS) - 2:
            raise InvalidParameterError(
                f"{len(signature_args)} positional ImageSignature parameters given after "
                f"distance_cutoff, at most {len(_SIGNATURE_KEYS) - 2} "
                f"({', '.join(_SIGNATURE_KEYS[2:])})")
        # What the caller gave: adopted from an existing store otherwise. k, N, the grid and the
        # crop count as given when they differ from 1.x's defaults.
        given = dict(zip(_SIGNATURE_KEYS[2:], signature_args), **signature_kwargs)
        given.update((name, value) for name, value, default in (
            ("k", k, 16), ("N", N, 63), ("n_grid", n_grid, 9),
            ("crop_percentile", crop_percentile, (5, 95))) if value != default)
        given.update((name, value) for name, value in (
            ("distance_cutoff", distance_cutoff), ("candidates", candidates),
            ("crop_windows", crop_windows), ("ids", ids), ("search_defaults", search_defaults),
            ("orientation_margin", orientation_margin)) if value is not None)
        if new_store_defaults is not None and not isinstance(new_store_defaults, Mapping):
            raise InvalidParameterError(
                f"new_store_defaults={new_store_defaults!r}: must be a dict")
        self._given = given
        self._new_store_defaults = dict(new_store_defaults or {})
        self._opened = False
        self.size = size
        self.refresh_adds = bool(refresh_adds)
        self._configure(given)

    def _configure(self, parameters):
        """Set the store's parameters from constructor keyword arguments; 1.x's for those absent.

        A new store parameter (a key of ``drivers.NEW_STORE_DEFAULTS``) is taken by ``__init__``
        (None: the store's, put in ``given`` otherwise), set here with 1.x's behaviour when
        absent, recorded by ``_config`` and read back by ``_adopt`` (``_completed`` gives stores
        that did not record it the value they had).
        """
        parameters = dict(parameters)
        k, N, n_grid = (parameters.pop(name, default) for name, default in
                        (("k", 16), ("N", 63), ("n_grid", 9)))
        if type(k) is not int or type(N) is not int or type(n_grid) is not int:
            raise InvalidParameterError(f"k={k!r}, N={N!r}, n_grid={n_grid!r}: must be integers")
        self.k, self.N, self.n_grid = k, N, n_grid
        self.crop_percentile = parameters.pop("crop_percentile", (5, 95))
        self.distance_cutoff = _check_cutoff(parameters.pop("distance_cutoff", CUTOFF_1X))
        self.crop_windows = _check_crop_windows(parameters.pop("crop_windows", None))
        self.ids = _check_ids(parameters.pop("ids", "new"))
        self.search_defaults = _check_search_defaults(
            parameters.pop("search_defaults", SEARCH_DEFAULTS_1X))
        self.orientation_margin = _check_margin(parameters.pop("orientation_margin", 0.0))
        candidates = parameters.pop("candidates", "words")
        # n and crop_percentiles are the store's n_grid and crop_percentile.
        unknown = sorted(set(parameters) - set(_SIGNATURE_KEYS[2:]))
        if unknown:
            raise InvalidParameterError(f"{', '.join(unknown)}: not a parameter of a store")
        self.gis = ImageSignature(n_grid, self.crop_percentile, **parameters)
        if candidates in ("words", {"scheme": "words"}):
            candidates = {"scheme": "words", "k": k, "N": N}
        self.scheme = scheme_from_config(candidates, self.gis.sig_length, self.gis.n,
                                         self.gis.diagonal_neighbors)

    # --- the store's parameters -------------------------------------------------------------

    @property
    def size(self):
        """Candidates the engine returns per query signature: as given, else the candidate
        scheme's."""
        return self.scheme.size if self._size is None else self._size

    @size.setter
    def size(self, value):
        self._size = None if value is None else _check_size(value)

    def _config(self):
        parameters = self.gis.parameters()
        return {
            "format": CONFIG_FORMAT,
            "k": self.k,
            "N": self.N,
            "signature": {key: _jsonable(parameters[key]) for key in _SIGNATURE_KEYS},
            "crop_windows": list(self.crop_windows),
            "candidates": self.scheme.config(),
            "distance_cutoff": self.distance_cutoff,
            "ids": self.ids,
            "search_defaults": dict(self.search_defaults),
            "orientation_margin": self.orientation_margin,
        }

    def _open(self, create=True):
        """Adopt the parameters of an existing store, or create it (with ``new_store_defaults``
        for those not given, the first time). Drivers call this last in their constructor, and
        again to create a store dropped meanwhile (which keeps this handle's parameters)."""
        stored = self._read_config()
        if stored is None:
            if not create:
                raise DatabaseError(f"{self.location}: no such store")
            if not self._opened:
                self._configure({**self._new_store_defaults, **self._given})
            self._create(self._config())
        else:
            self._adopt(stored)
        self._opened = True

    def _adopt(self, stored):
        """Take the parameters a store recorded; those given explicitly that decide what is stored
        must agree with them, the cutoff and the id scheme given override them for this handle."""
        stored = _completed(stored)
        given = self._given
        current = self._config()
        conflicts = [f"{key}={stored[key]!r}" for key in ("k", "N")
                     if key in given and current[key] != stored[key]]
        names = {"n": "n_grid", "crop_percentiles": "crop_percentile"}
        conflicts += [f"{key}={value!r}" for key, value in stored["signature"].items()
                      if names.get(key, key) in given and current["signature"].get(key) != value]
        stored_windows = tuple(stored["crop_windows"])
        if "crop_windows" in given and stored_windows != self.crop_windows:
            if not conflicts:
                raise InvalidParameterError(
                    f"{self.location}: this store was made "
                    + (f"with crop windows {list(stored_windows)}; open it without crop_windows "
                       "(or with the same)" if stored_windows else
                       "without crop windows, which are chosen when a store is created: make a "
                       "new store with crop_windows=True and add the images to it"))
            conflicts.append(f"crop_windows={list(stored_windows) or False!r}")
        if "candidates" in given and stored["candidates"] != current["candidates"]:
            conflicts.append(f"candidates={stored['candidates']!r}")
        if conflicts:
            raise InvalidParameterError(
                f"{self.location}: this store was built with {', '.join(conflicts)}; open it with "
                f"those parameters (signatures made otherwise do not compare; export and import "
                f"move records to a store made otherwise)")
        signature = dict(stored["signature"])
        parameters = {"k": stored["k"], "N": stored["N"], "n_grid": signature.pop("n"),
                      "crop_percentile": _tuple_or_none(signature.pop("crop_percentiles")),
                      "crop_windows": list(stored_windows) or None, **signature,
                      "candidates": stored["candidates"],
                      "distance_cutoff": stored["distance_cutoff"], "ids": stored["ids"],
                      "search_defaults": stored["search_defaults"],
                      "orientation_margin": stored["orientation_margin"]}
        parameters.update((key, given[key]) for key in _PER_HANDLE if key in given)
        self._configure(parameters)

    @property
    def location(self):
        """Where the store is, for messages (a file, a URL and index)."""
        return type(self).__name__

    # --- adding ------------------------------------------------------------------------------

    def add_image(self, path, img=None, bytestream=False, metadata=None, refresh_after=None,
                  id=None):
        """Sign an image and store it; return the record's id.

        Parameters
        ----------
        path : str
            Where the image is (a path or URL), and the name the record keeps.
        img : optional
            What to sign instead of ``path``: bytes (with ``bytestream=True``, or detected), a
            path, an array, a PIL image. ``path`` is still the name stored.
        metadata : dict, optional
            Any JSON data to keep with the record; ``pre_filter`` searches on it.
        refresh_after : bool or None
            Make the record searchable before returning (engines refresh their index). None: the
            handle's ``refresh_adds`` (True in a store ``open_database`` opened, False as 1.x).
        id : str, optional
            The record's id; by default a new one, or ``default_id(path)`` in a store with
            ``ids="path"`` (adding the same path again then replaces the record).

        Raises
        ------
        ImageLoadError
            The image could not be read. DatabaseError: the store refused or is unreachable.
        """
        image = path if img is None else img
        signed = self.sign(image, bytestream=bytestream)
        result = self.add_signatures([{"path": path, **signed, "metadata": metadata, "id": id}],
                                     refresh_after=self._refreshing(refresh_after))[0]
        if isinstance(result, ImageMatchError):
            raise result
        return result

    def add_images(self, items, workers=None, batch_size=500, refresh_after=None):
        """Sign and store many images; one engine round trip per batch.

        Parameters
        ----------
        items : iterable
            Paths or URLs, or dicts with ``path`` and optionally ``image`` (what to sign instead
            of the path), ``id`` and ``metadata``.
        workers : int or None
            Processes signing the images (None: every core).
        batch_size : int
            Records per round trip to the store.
        refresh_after : bool or None
            Make the records searchable before returning, with one refresh after the last batch.
            None: the handle's ``refresh_adds``.

        Returns
        -------
        list
            Per item, in order, its id (str) or the ImageMatchError that kept it out. A bad item
            never stops the others.
        """
        items = [_as_item(item) for item in items]
        signed = self.sign_many([item.get("image", item["path"]) for item in items
                                 if not isinstance(item, ImageMatchError)], workers=workers)
        results = []
        for batch in _batches(items, batch_size):
            ready = []
            for item in batch:
                fields = item if isinstance(item, ImageMatchError) else next(signed)
                if isinstance(fields, ImageMatchError):
                    results.append(fields)
                else:
                    ready.append(len(results))
                    results.append(dict(item, **fields))
            stored = self.add_signatures([results[i] for i in ready], refresh_after=False)
            for index, outcome in zip(ready, stored):
                results[index] = outcome
        if self._refreshing(refresh_after):
            self.refresh()
        return results

    def _refreshing(self, refresh_after):
        return self.refresh_adds if refresh_after is None else bool(refresh_after)

    def add_signatures(self, items, refresh_after=False):
        """Store signatures computed elsewhere (a worker, an import); one round trip.

        Parameters
        ----------
        items : iterable of dict
            ``path`` and ``signature`` (array of the store's length), optionally ``id``,
            ``metadata``, ``timestamp`` and, for a store with crop windows, ``windows``: the
            signatures of the image's central windows as ``sign`` makes them ((W, L) array). A
            record without them is found by its own signature only; a store without crop
            windows ignores them.

        Returns
        -------
        list
            Per item its id or the ImageMatchError that kept it out.
        """
        results, records = [], []
        for item in items:
            try:
                record = self._record(item)
            except ImageMatchError as error:
                results.append(error)
                continue
            results.append(record)
            records.append(record)
        if not records:
            return results
        # The signatures' codes are checked, converted and cut into terms for the whole batch
        # at once: record by record, that was a fifth of a bulk insert's time in the client.
        signatures = np.stack([record.signature for record in records])
        valid = _valid_codes(signatures, self.gis.n_levels)
        if not valid.all():
            refused = {id(record) for record, ok in zip(records, valid) if not ok}
            results = [InvalidParameterError(self._codes_refusal(outcome.path, "signature"))
                       if id(outcome) in refused else outcome for outcome in results]
            records = [record for record, ok in zip(records, valid) if ok]
            signatures = signatures[valid]
            if not records:
                return results
        signatures = signatures.astype(np.int8)
        terms = self.scheme.terms(signatures)
        for record, signature, row in zip(records, signatures, terms):
            record.signature, record.terms = signature, row
        windowed = [record for record in records if record.windows is not None]
        if windowed:
            window_terms = self.scheme.terms(np.concatenate([r.windows for r in windowed]))
            count = len(self.crop_windows)
            for index, record in enumerate(windowed):
                record.window_terms = window_terms[index * count:(index + 1) * count]
        reasons = iter(self._insert(records, refresh=refresh_after))
        for index, outcome in enumerate(results):
            if isinstance(outcome, Record):
                reason = next(reasons)
                results[index] = (outcome.id if reason is None else
                                  DatabaseError(f"{self.location}: {outcome.path}: {reason}"))
        return results

    def _record(self, item):
        if not isinstance(item, Mapping):
            raise InvalidParameterError(
                f"{reprlib.repr(item)}: a record must be a dict with a path and a signature")
        path = item.get("path")
        if not isinstance(path, str) or not path:
            raise InvalidParameterError(f"{item.get('path')!r}: a record needs a path (a string)")
        record_id = item.get("id") or (default_id(path) if self.ids == "path" else uuid.uuid4().hex)
        path = record_path(path)
        if item.get("signature") is None:
            raise InvalidParameterError(f"{path}: a record needs a signature")
        # Their range is checked by add_signatures, for the whole batch at once.
        signature = self._code_array(item["signature"], (self.gis.sig_length,), path, "signature")
        if not isinstance(record_id, str) or record_path(record_id) != record_id:
            raise InvalidParameterError(f"{path}: id must be a string of valid UTF-8 text, not "
                                        f"{record_id!r}")
        windows = item.get("windows")
        if windows is not None and self.crop_windows:
            shape = (len(self.crop_windows), self.gis.sig_length)
            windows = self._code_array(windows, shape, path, "windows")
            if not _valid_codes(windows[None], self.gis.n_levels)[0]:
                raise InvalidParameterError(self._codes_refusal(path, "windows", shape))
            windows = windows.astype(np.int8)
        else:
            windows = None
        return Record(id=record_id, path=path, signature=signature,
                      metadata=check_metadata(item.get("metadata"), path),
                      timestamp=_timestamp(item.get("timestamp"), path), windows=windows)

    def _code_array(self, values, shape, path, what):
        """``values`` as a numeric array of ``shape`` (codes to check with ``_valid_codes``), or
        InvalidParameterError naming ``path``."""
        refusal = self._codes_refusal(path, what, shape)
        try:
            array = np.asarray(values)
        except (TypeError, ValueError):
            raise InvalidParameterError(refusal) from None
        if array.shape != shape:
            raise InvalidParameterError(f"{refusal}, not {array.shape}")
        if array.dtype == bool or array.dtype.kind not in "iuf":
            raise InvalidParameterError(f"{refusal}, not {array.dtype}")
        return array

    def _codes_refusal(self, path, what, shape=None):
        shape = (self.gis.sig_length,) if shape is None else shape
        levels = self.gis.n_levels
        return f"{path}: {what} must be whole numbers in -{levels}..{levels} of shape {shape}"

    def sign(self, image, bytestream=False, query_options=None):
        """What this store keeps of an image, from one decode: ``{"signature"}``, and
        ``"windows"`` (the signatures of its central windows) in a store with crop windows.
        The dict goes into an ``add_signatures`` item as it is.

        ``query_options`` (``query_options()``' dict): also ``"query"``, the signatures a search
        of the image adds to its own (``ImageSignature.query_signatures`` after its first row),
        from the same decode; ``find_duplicates(queries=...)`` takes them.

        Raises ImageLoadError when the image cannot be read.
        """
        return _store_fields(self.gis, self.crop_windows, image, bytestream, query_options)

    def sign_many(self, images, workers=None, chunksize=16, query_options=None):
        """``sign`` for many images on ``workers`` processes (None: every core), yielding per
        image its dict or its ImageMatchError, in order."""
        return map_signing(self.record_signer(query_options), images, workers, chunksize)

    def record_signer(self, query_options=None):
        """``sign`` as a function of the image alone that pickles, for a process pool of one's
        own (a service signing in worker processes): ``record_signer(options)(image)`` is
        ``sign(image, query_options=options)``."""
        return functools.partial(_store_fields, self.gis, self.crop_windows,
                                 query_options=query_options)

    def query_signer(self, all_orientations=False, frames=False, small_rotations=False,
                     insets=False, corner_crops=False, robust=False, mirror=None,
                     central_crops=None):
        """What ``search_image`` signs of a query with these options, as a function of the image
        alone that pickles: it returns the query, ``(signatures, margins)``, which
        ``search_queries`` searches. The two halves of ``search_image``, for signing in a process
        pool of one's own and searching elsewhere.

        Raises InvalidParameterError as ``query_options`` does; the function raises
        ImageLoadError for an image that cannot be read.
        """
        options = self.query_options(all_orientations, frames, small_rotations, insets,
                                     corner_crops, robust, mirror, central_crops)
        return functools.partial(_query, self.gis, options, self.query_margins(options))

    def query_options(self, all_orientations=False, frames=False, small_rotations=False,
                      insets=False, corner_crops=False, robust=False, mirror=None,
                      central_crops=None):
        """``ImageSignature.query_signatures``' options for a search's (``robust``: frames,
        small rotations, insets and, in a store whose crop windows allow them, corner crops;
        ``mirror`` and ``central_crops`` None: the store's ``search_defaults``).

        Raises InvalidParameterError for ``corner_crops`` in a store without a crop window they
        can show (one of at most 62% of the area, as ``crop_windows=True``'s 50%).
        """
        area = min(self.crop_windows, default=None)
        usable = area is not None and corner_crops_hold(area)
        if corner_crops and not usable:
            largest = (2 * CORNER_CROP_SIDE - 1) ** 2
            raise InvalidParameterError(
                f"{self.location}: corner_crops needs a store made with crop windows (of at most "
                f"{largest:.0%} of the area; this one has {list(self.crop_windows) or 'none'})")
        defaults = self.search_defaults
        return {"orientations": bool(all_orientations),
                "mirror": bool(defaults["mirror"] if mirror is None else mirror),
                "central_crops": bool(defaults["central_crops"] if central_crops is None
                                      else central_crops),
                "frames": bool(frames or robust),
                "small_rotations": bool(small_rotations or robust), "insets": bool(insets or robust),
                "corner_crops": area if usable and (corner_crops or robust) else False}

    def query_margins(self, options):
        """What each row of ``ImageSignature.query_signatures(**options)`` adds to its distances
        in this store (``goldberg.query_margins`` with its ``orientation_margin``)."""
        return query_margins(**options, orientation_margin=self.orientation_margin)

    def refresh(self):
        """Make what was added searchable now (engines refresh periodically on their own)."""

    # --- searching ---------------------------------------------------------------------------

    def search_image(self, path, all_orientations=False, bytestream=False, pre_filter=None,
                     size=None, distance_cutoff=None, frames=False, small_rotations=False,
                     insets=False, corner_crops=False, robust=False, mirror=None,
                     central_crops=None):
        """The stored images that are the same picture as ``path``.

        Parameters
        ----------
        path
            The query: anything ``ImageSignature.generate_signature`` takes.
        all_orientations : bool
            Also find flipped and rotated (by 90, 180, 270 degrees) copies: the 7 other
            orientations of the query's signature (``goldberg.signature_variants``) are searched
            in the same round trip, a match through one counting ``goldberg.ORIENTATION_MARGIN``
            (0.05) more.
        mirror : bool or None
            Also find mirror images (flipped left to right), as ``all_orientations`` does, with
            one more query signature. None: the store's default (``search_defaults``; on in a
            store image-match 2 made).
        central_crops : bool or None
            Also find copies cropped around their centre to 58-90% of the area (5 or 10% cut off
            each side): the query is signed on the grids its original would have had
            (``goldberg.uncropped_signature``, 2 more signatures). None: the store's default.
        bytestream : bool
            ``path`` holds the image's bytes (1.x's flag).
        pre_filter : dict, optional
            Only records whose metadata has these values: ``{"key": value}`` or
            ``{"key": [values]}``. The Elasticsearch/OpenSearch driver also takes raw query DSL.
        size : int, optional
            Candidates fetched per query signature (default: the store's ``size``).
        distance_cutoff : float, optional
            Overrides the store's cutoff for this search.
        frames : bool
            Also find copies with bars or a border added around the picture (caption bars,
            letterbox bars, a frame): the query's central frames are searched too (3 more
            signatures).
        small_rotations : bool
            Also find copies turned by up to about 15 degrees: the query turned by 5, 10 and 15
            degrees each way is searched too (6 more signatures).
        insets : bool
            Also find copies pasted into a larger picture (a collage, a screenshot): the
            rectangles bounded by long straight edges in the query (``goldberg.inset_windows``)
            are searched too (up to 2 more signatures).
        corner_crops : bool
            In a store with crop windows: also find copies cropped at a corner (about a tenth of
            each side cut away): the query's windows that would show the original's stored
            central window are searched too (4 more signatures, ``goldberg.corner_crop_windows``).
        robust : bool
            All of the above that the store allows (corner crops need crop windows).

        All the signatures of a search (its orientations, central crops, frames, rotations,
        insets...) go to the engine in one round trip; a record's distance is its smallest to any
        of them. In a store with crop windows a record's windows take part as well, whatever the
        options. A match through a central crop, frame, rotation or inset counts at its distance
        plus ``goldberg.QUERY_MARGIN`` (0.07), one through a stored window plus
        ``goldberg.WINDOW_MARGIN`` (0.10): parts of pictures must be closer than wholes to be the
        same picture (see ``record_distances``).

        Returns
        -------
        list of dict
            ``{"id", "path", "dist", "score", "metadata"}`` per match, sorted by distance, each id
            once.
        """
        query = self.query_signer(all_orientations, frames, small_rotations, insets, corner_crops,
                                  robust, mirror, central_crops)(path, bytestream)
        return self.search_queries([query], pre_filter, size, distance_cutoff)[0]

    def search_images(self, images, all_orientations=False, pre_filter=None, size=None,
                      distance_cutoff=None, workers=1, frames=False, small_rotations=False,
                      insets=False, corner_crops=False, robust=False, mirror=None,
                      central_crops=None):
        """Search many images, with one engine round trip for all of them.

        Parameters are those of ``search_image``, and ``workers``: processes signing the images.

        Returns
        -------
        list
            Per image, its list of matches (as ``search_image``) or the ImageMatchError that
            kept it from being searched.
        """
        images = list(images)
        queries, positions, results = [], [], [None] * len(images)
        signer = self.query_signer(all_orientations, frames, small_rotations, insets, corner_crops,
                                   robust, mirror, central_crops)
        for index, query in enumerate(map_signing(signer, images, workers)):
            if isinstance(query, ImageMatchError):
                results[index] = query
            else:
                positions.append(index)
                queries.append(query)
        for index, matches in zip(positions,
                                  self.search_queries(queries, pre_filter, size, distance_cutoff)):
            results[index] = matches
        return results

    def search_queries(self, queries, pre_filter=None, size=None, distance_cutoff=None):
        """Matches for each query that ``query_signer``'s function made (or a (Q, L) array of
        signatures of one image), as ``search_image`` returns them; one engine round trip for all.
        ``pre_filter``, ``size`` and ``distance_cutoff`` as for ``search_image``."""
        return self._search_signatures(queries, pre_filter, size, distance_cutoff)

    def search_signature(self, signature, pre_filter=None, size=None, distance_cutoff=None):
        """Search with a signature computed elsewhere (array of the store's length)."""
        signature = np.asarray(signature, dtype=np.int8)
        if signature.shape != (self.gis.sig_length,):
            raise InvalidParameterError(
                f"signature has shape {signature.shape}, this store's are ({self.gis.sig_length},)")
        return self._search_signatures([signature[None]], pre_filter, size, distance_cutoff)[0]

    def _search_signatures(self, queries, pre_filter, size, distance_cutoff):
        """Matches for each query, given as a (Q, L) array of signatures of one image, or as a
        pair ``(signatures, margins)`` with (Q,) margins (``goldberg.query_margins``)."""
        return [[{"id": record.id, "path": record.path, "dist": distance, "score": record.score,
                  "metadata": record.metadata} for record, distance in found]
                for found in self._search_records(queries, pre_filter, size, distance_cutoff)]

    def _search_records(self, queries, pre_filter, size, distance_cutoff):
        """For each query (the signatures of one image: a (Q, L) array, or ``(signatures,
        margins)``), ``[(Record, distance)]`` closer than the cutoff, each record once at its best
        distance, nearest first."""
        cutoff = self.distance_cutoff if distance_cutoff is None else _check_cutoff(distance_cutoff)
        size = self.size if size is None else _check_size(size)
        pre_filter = self._check_filter(pre_filter)
        if not len(queries):
            return []
        searched = []
        for query in queries:
            signatures, margins = query if isinstance(query, tuple) else (query, None)
            signatures = np.asarray(signatures)
            margins = np.zeros(len(signatures)) if margins is None else np.asarray(margins)
            # Featureless signatures match nothing: do not ask the engine about them.
            kept = ~is_featureless(signatures)
            searched.append((signatures[kept], margins[kept]))
        stacked = [signatures for signatures, _ in searched if len(signatures)]
        candidate_lists = iter(self._candidates(self.scheme.terms(np.concatenate(stacked)),
                                                size, pre_filter) if stacked else [])
        results = []
        for signatures, margins in searched:
            found = {}
            for _ in range(len(signatures)):
                for record in next(candidate_lists):
                    found.setdefault(record.id, record)
            results.append(self._rank(signatures, margins, list(found.values()), cutoff))
        return self._whole_matches(results)

    def _rank(self, signatures, margins, records, cutoff):
        if not records:
            return []
        distances = record_distances(signatures, records, margins)
        ranked = [(record, float(distance)) for record, distance in zip(records, distances)
                  if distance < cutoff]
        return sorted(ranked, key=itemgetter(1))

    def _check_filter(self, pre_filter):
        return normalize_filter(pre_filter)

    # --- reading and deleting -----------------------------------------------------------------

    def get(self, id):
        """The record with this id as a dict (``id, path, signature, metadata, timestamp``).

        Raises RecordNotFoundError when there is none.
        """
        record = self._get([id]).get(id)
        if record is None:
            raise RecordNotFoundError(f"{self.location}: no record with id {id!r}")
        if isinstance(record, DatabaseError):  # damaged: what it holds cannot be read
            raise record
        return record.as_dict()

    def get_many(self, ids):
        """The records with these ids, as ``{id: record}`` (absent ids are left out); one round
        trip. A damaged record's value is the DatabaseError that names it."""
        return {record_id: _as_dict(record) for record_id, record in self._get(list(ids)).items()}

    def delete(self, id):
        """Delete the record with this id; True if there was one."""
        return self._delete([id]) > 0

    def delete_path(self, path):
        """Delete every record whose path is exactly ``path``; return how many there were."""
        ids = [record_id for record_id, _ in self._ids_with_path(record_path(path))]
        return self._delete(ids) if ids else 0

    def delete_duplicates(self, path):
        """Keep one record of those whose path is exactly ``path`` (the earliest added), delete the
        others; return how many were deleted (1.x's method)."""
        holders = sorted(self._ids_with_path(record_path(path)),
                         key=lambda pair: (pair[1] is None, pair[1]))
        extra = [record_id for record_id, _ in holders[1:]]
        return self._delete(extra) if extra else 0

    def ids_with_path(self, path):
        """The ids of the records whose path is exactly ``path`` (another path that merely starts
        or ends alike, or differs in case, is not ``path``)."""
        return [record_id for record_id, _ in self._ids_with_path(path)]

    # --- decisions: pairs that are not duplicates ------------------------------------------------

    def mark_not_duplicates(self, ids, timestamp=None):
        """Remember that the records ``ids`` are not duplicates of each other, whatever their
        distance: ``find_duplicates`` never links any two of them again (a moderator's "not
        duplicates" on a group, kept in the store and exported with it).

        Parameters
        ----------
        ids : sequence of str
            Two to ``MAX_NOT_DUPLICATES`` record ids; every pair of them is remembered. The
            records need not exist (a decision outlives a record deleted and added again under
            the same id, as a path id is).
        timestamp : datetime or str, optional
            When it was decided (ISO 8601 text as ``not_duplicates`` gives it); default now.

        Returns
        -------
        int
            How many pairs were remembered.
        """
        if isinstance(ids, str) or not all(isinstance(i, str) and i for i in ids):
            raise InvalidParameterError(f"ids={reprlib.repr(ids)}: must be a list of record ids")
        check_record_ids(ids)
        unique = sorted(set(ids))
        if not 2 <= len(unique) <= MAX_NOT_DUPLICATES:
            raise InvalidParameterError(
                f"{len(unique)} distinct ids: not duplicates takes 2 to {MAX_NOT_DUPLICATES}")
        moment = _timestamp(timestamp, "not duplicates")
        pairs = [(a, b, moment) for a, b in itertools.combinations(unique, 2)]
        self._add_distinct(pairs)
        return len(pairs)

    def not_duplicates(self):
        """Every pair marked "not duplicates", as ``{"ids": [a, b], "timestamp"}`` (ISO 8601),
        ``a < b``, oldest first."""
        pairs = sorted(self._distinct(), key=lambda pair: (pair[2], pair[0], pair[1]))
        return [{"ids": [a, b], "timestamp": moment.isoformat()} for a, b, moment in pairs]

    def records_page(self, after=None, limit=100):
        """One page of the store's records, in its own stable order, for listing them page by
        page however many there are (the CLI's export reads them all with ``iter_records``).

        Parameters
        ----------
        after : str or None
            The cursor a previous page returned; None for the first page.
        limit : int
            Records per page, 1 to ``MAX_PAGE``.

        Returns
        -------
        (list of dict, str or None)
            The records as ``get`` returns them (a damaged record: the DatabaseError that names
            it), and the cursor of the next page: None when there are no more records. Records
            added or deleted meanwhile may or may not show.

        Raises
        ------
        InvalidParameterError
            ``limit`` is out of range, or ``after`` is not a cursor this store gave.
        """
        if type(limit) is not int or not 1 <= limit <= MAX_PAGE:
            raise InvalidParameterError(f"limit={limit!r}: must be an integer from 1 to {MAX_PAGE}")
        if after is not None and (not isinstance(after, str) or not after):
            raise InvalidParameterError(f"after={after!r}: not a cursor of {self.location}")
        records, following = self._page(after, limit)
        return [_as_dict(record) for record in records], following

    def paths(self, offset=0, limit=20):
        """The paths of ``limit`` records from the ``offset``-th on, in the order of
        ``records_page`` (dsys/match's ``/list``; ``records_page`` pages cheaply, an offset costs
        the records it skips)."""
        for name, value in (("offset", offset), ("limit", limit)):
            if type(value) is not int or value < 0:
                raise InvalidParameterError(f"{name}={value!r}: must be an integer >= 0")
        if limit > MAX_PAGE * 10:
            raise InvalidParameterError(f"limit={limit}: at most {MAX_PAGE * 10} paths at a time")
        # No store holds 2**63 records (SQLite cannot even be asked for them).
        return self._paths(offset, limit) if limit and offset < 2 ** 63 else []

    def iter_records(self, batch_size=1000):
        """Every record, as ``get`` returns them, for export; in place of a damaged record (one
        whose stored data cannot be read), the DatabaseError that names it."""
        for record in self._scan(batch_size):
            yield _as_dict(record)

    def find_duplicates(self, distance_cutoff=None, size=None, batch_size=200,
                        all_orientations=True, queries=None, damaged=None):
        """Groups of near-duplicate images over the whole store.

        Every record is searched against the store with its stored signature; two records closer
        than the cutoff are linked, and a group is a connected set of links. In a store with crop
        windows, records' windows take part (a record that is a central crop of another is
        linked to it).

        Parameters
        ----------
        all_orientations : bool
            Also link mirrored and turned copies (flips, turns by 90, 180 and 270 degrees; on by
            default): a record without ``queries`` is searched in its 8 orientations, its stored
            signature's ``signature_variants`` (the store keeps no pixels to turn), another
            orientation than its own counting the store's ``orientation_margin`` more.
        queries : dict, optional
            ``{record id: (signatures, margins)}``: the signatures a search of the record's image
            adds to its own, signed from the image (``ImageSignature.query_signatures`` after its
            first row, with ``query_options``: its orientations, central crops, frames...; and
            ``query_margins``). A record that has them is searched with them instead of its
            signature's variants: as ``search_image`` would search its image.
        damaged : list, optional
            Receives the DatabaseError of each damaged record (one whose stored data cannot be
            read), which is left out; without a list, each is given to ``warnings.warn``.

        Returns
        -------
        list of list of dict
            Each group (two or more members) as ``{"id", "path", "dist", "metadata"}``, the first
            member the one with the most links (ties: the earliest path), ``dist`` each member's
            distance to it; groups with the most members first. Two records marked "not
            duplicates" (``mark_not_duplicates``) are never linked.
        """
        queries = queries or {}
        distinct = {(a, b) for a, b, _ in self._distinct()}

        def searched(record):
            return self._searched(record, all_orientations, queries)

        parent, records, links = {}, {}, {}

        def root(node):
            while parent.setdefault(node, node) != node:
                parent[node] = parent[parent[node]]
                node = parent[node]
            return node

        def readable(records):
            for record in records:
                if not isinstance(record, DatabaseError):
                    yield record
                elif damaged is not None:
                    damaged.append(record)
                else:
                    warnings.warn(str(record), RuntimeWarning, stacklevel=4)

        for batch in _batches(readable(self._scan(batch_size)), batch_size):
            for record, found in zip(batch, self._search_records([searched(r) for r in batch],
                                                                 None, size, distance_cutoff)):
                records.setdefault(record.id, record)
                for other, _ in found:
                    if other.id != record.id and (min(record.id, other.id),
                                                  max(record.id, other.id)) not in distinct:
                        records.setdefault(other.id, other)
                        links.setdefault(record.id, set()).add(other.id)
                        links.setdefault(other.id, set()).add(record.id)
                        parent[root(record.id)] = root(other.id)

        members = {}
        for record_id in links:
            members.setdefault(root(record_id), []).append(records[record_id])
        groups = []
        for group in members.values():
            group.sort(key=lambda r: (-len(links[r.id]), r.path, r.id))
            distances = pair_distances(group[0], group, searched)
            groups.append([{"id": r.id, "path": r.path, "dist": float(d), "metadata": r.metadata}
                           for r, d in zip(group, distances)])
        groups.sort(key=lambda g: (-len(g), g[0]["path"]))
        return groups

    def distances_to(self, head, records, all_orientations=True, queries=None):
        """The distance of ``head`` to each of ``records`` as ``find_duplicates`` measures it (the
        nearer of both ways; windows, orientations and ``queries`` taking part).

        ``head`` and ``records`` are records as ``get`` returns them (dicts with ``id``,
        ``signature`` and, in a store with crop windows, ``windows``). Returns a float64 array.
        """
        head, records = _as_record(head), [_as_record(record) for record in records]
        return pair_distances(head, records,
                              lambda r: self._searched(r, all_orientations, queries or {}))

    def _searched(self, record, all_orientations, queries):
        """``(signatures, margins)`` searched for a stored record by ``find_duplicates``: its
        signature and the rows ``queries`` has for it, signed from its image; else, without an
        image, its signature's ``signature_variants`` for the orientations."""
        own = np.asarray(record.signature)[None]
        if record.id in queries:
            more, more_margins = queries[record.id]
            return (np.concatenate([own, np.asarray(more, np.int8)]),
                    np.concatenate([[0.0], more_margins]))
        if not all_orientations:
            return own, np.zeros(1)
        turned = signature_variants(record.signature, self.gis.n, self.gis.diagonal_neighbors)
        return turned, np.concatenate([[0.0], np.full(len(turned) - 1, self.orientation_margin)])

    # --- primitives: each driver supplies these ------------------------------------------------

    def _insert(self, records, refresh=False):
        raise NotImplementedError

    def _candidates(self, terms, size, pre_filter):
        raise NotImplementedError

    def _whole_matches(self, matches):
        """Per query, its ``[(Record, distance)]`` with every record whole (path, metadata,
        timestamp). A driver whose candidates are whole already has nothing to do."""
        return matches

    def _get(self, ids):
        raise NotImplementedError

    def _delete(self, ids):
        raise NotImplementedError

    def _ids_with_path(self, path):
        raise NotImplementedError

    def _scan(self, batch_size):
        raise NotImplementedError

    def _page(self, after, limit):
        raise NotImplementedError

    def _paths(self, offset, limit):
        raise NotImplementedError

    def _read_config(self):
        raise NotImplementedError

    def _create(self, config):
        raise NotImplementedError

    def _add_distinct(self, pairs):
        raise NotImplementedError

    def _distinct(self):
        raise NotImplementedError

    def count(self):
        """How many records the store holds."""
        raise NotImplementedError

    def drop(self):
        """Remove the store and all its records."""
        raise NotImplementedError

    def describe(self):
        """``{"engine", "location", "records", "bytes"}`` (bytes may be None)."""
        raise NotImplementedError


def record_distances(signatures, records, margins=None):
    """The distance of each record to a query: the smallest, over the query's signatures ((Q, L):
    orientations, frames, rotations) and the record's (its own and its windows'), of their
    normalized distance plus the query signature's margin plus ``WINDOW_MARGIN`` for a window.

    Parameters
    ----------
    signatures : (Q, L) array
    records : list of Record
    margins : (Q,) array or None
        What each query signature adds (``goldberg.query_margins``); None: nothing.

    Returns
    -------
    (len(records),) float64 ndarray
    """
    margins = np.zeros(len(signatures)) if margins is None else np.asarray(margins)

    def nearest(stored):
        return (distance_matrix(signatures, stored) + margins[:, None]).min(axis=0)

    distances = nearest(np.stack([record.signature for record in records]))
    windowed = [(index, record.windows) for index, record in enumerate(records)
                if record.windows is not None and len(record.windows)]
    if windowed:
        # A match through a stored window counts WINDOW_MARGIN more.
        owners = np.concatenate([np.full(len(windows), index) for index, windows in windowed])
        through_windows = nearest(np.concatenate([windows for _, windows in windowed]))
        np.minimum.at(distances, owners, through_windows + WINDOW_MARGIN)
    return np.minimum(distances, 1.0)


def scored_candidates(hits, records):
    """Per query signature, its candidates as records carrying that hit's score.

    Parameters
    ----------
    hits : list of [(key, score)]
        Per query signature, the engine's candidates, best first.
    records : dict
        ``{key: Record}``, each candidate read once per search (the signatures of one search,
        its orientations and parts, share most candidates); a key missing (a record deleted
        meanwhile) is left out.

    A record's first hit carries the record itself; a later one a copy with its own score.
    """
    seen, results = set(), []
    for found in hits:
        listed = []
        for key, score in found:
            record = records.get(key)
            if record is None:
                continue
            if key in seen:
                record = with_score(record, score)
            else:
                seen.add(key)
                record.score = score
            listed.append(record)
        results.append(listed)
    return results


def with_score(record, score):
    """A shallow copy of ``record`` carrying ``score`` (``dataclasses.replace`` runs ``__init__``
    again: several times slower, on a path that copies dozens of records a search)."""
    copied = object.__new__(Record)
    copied.__dict__.update(record.__dict__)
    copied.score = score
    return copied


def pair_distances(head, records, searched):
    """The distance of ``head`` to each of ``records`` for groups of duplicates, the nearer of
    both ways, as links are made either way: ``searched(head)`` (the signatures searched for a
    record and their margins, ``((Q, L), (Q,))``) against each record's signatures, and
    ``searched(record)`` against head's.

    ``head`` and ``records`` are ``Record`` objects; returns a (len(records),) float64 array.
    """
    signatures, margins = searched(head)
    forward = record_distances(signatures, records, margins)
    backward = []
    for record in records:
        signatures, margins = searched(record)
        backward.append(record_distances(signatures, [head], margins)[0])
    return np.minimum(forward, backward)


def _as_dict(record):
    return record if isinstance(record, DatabaseError) else record.as_dict()


def _as_record(record):
    if isinstance(record, Record):
        return record
    windows = record.get("windows")
    return Record(id=record.get("id"), path=record.get("path"),
                  signature=np.asarray(record["signature"], dtype=np.int8),
                  windows=None if windows is None else np.asarray(windows, dtype=np.int8))


def _check_margin(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise InvalidParameterError(f"orientation_margin={value!r}: must be a number in [0, 1]")
    return float(value)


def _check_search_defaults(value):
    """``search_defaults`` as a dict of ``SEARCH_DEFAULTS``' keys to bools."""
    if not isinstance(value, Mapping) or set(value) != set(SEARCH_DEFAULTS) or not all(
            isinstance(flag, bool) for flag in value.values()):
        raise InvalidParameterError(
            f"search_defaults={value!r}: must be a dict of {', '.join(SEARCH_DEFAULTS)} to bools")
    return dict(value)


def _check_crop_windows(value):
    """The crop window areas as a tuple of floats (empty: none)."""
    if value is None or value is False:
        return ()
    if value is True:
        return tuple(CROP_WINDOW_AREAS)
    try:
        areas = tuple(float(area) for area in value)
    except (TypeError, ValueError):
        areas = None
    if not areas or not all(0 < area < 1 for area in areas) or isinstance(value, (str, bytes)):
        raise InvalidParameterError(
            f"crop_windows={value!r}: must be True, False, None or a sequence of areas in (0, 1)")
    return areas


def _store_fields(gis, areas, image, bytestream=False, query_options=None):
    """``SignatureDatabaseBase.sign``, as a function that pickles (for ``map_signing``)."""
    if query_options is not None:
        grey, shape = gis.decode(image, bytestream=bytestream)
        signatures = gis.query_signatures_of_grey(grey, shape, **query_options)
        fields = {"signature": signatures[0], "query": signatures[1:]}
        if areas:
            fields["windows"] = gis.windows_of_grey(grey, shape, crop_windows(areas))
        return fields
    if not areas:
        return {"signature": gis.generate_signature(image, bytestream=bytestream)}
    signatures = gis.record_signatures(image, bytestream=bytestream, areas=areas)
    return {"signature": signatures[0], "windows": signatures[1:]}


def _query(gis, options, margins, image, bytestream=False):
    """``SignatureDatabaseBase.query_signer``'s function, at module level so that it pickles."""
    return gis.query_signatures(image, bytestream, **options), margins


def check_record_ids(ids):
    """Refuse ids that are not valid UTF-8 text (a lone surrogate), which no store can hold."""
    for record_id in ids:
        try:
            record_id.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidParameterError(f"id {record_id!r}: not valid UTF-8 text") from None


def _check_ids(ids):
    if ids not in ID_SCHEMES:
        raise InvalidParameterError(
            f"ids={ids!r}: must be one of {', '.join(map(repr, ID_SCHEMES))}")
    return ids


def _completed(stored):
    """A recorded configuration with what older formats did not record (``_UNRECORDED``)."""
    stored = dict(stored)
    stored["signature"] = {"draft": _UNRECORDED["draft"], **stored["signature"]}
    stored["crop_windows"] = stored.get("crop_windows") or []  # none before crop windows existed
    # 1.x's words before candidate schemes were recorded.
    stored.setdefault("candidates", {"scheme": "words", "k": stored["k"], "N": stored["N"]})
    for key in ("distance_cutoff", "ids", "search_defaults", "orientation_margin"):
        stored.setdefault(key, _UNRECORDED[key])
    return stored


def _tuple_or_none(value):
    return None if value is None else tuple(value)


def _check_cutoff(cutoff):
    if isinstance(cutoff, bool) or not isinstance(cutoff, (int, float)) or not 0 <= cutoff <= 1:
        raise InvalidParameterError(f"distance_cutoff={cutoff!r}: must be a number in [0, 1]")
    return float(cutoff)


def _check_size(size):
    if type(size) is not int or size < 1:
        raise InvalidParameterError(f"size={size!r}: must be a positive integer")
    return size


def _timestamp(value, source):
    """A record's timestamp: a datetime, an ISO 8601 string (as ``iter_records`` exports it; UTC
    when it names no zone), or None for now."""
    if value is None:
        return now()
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise InvalidParameterError(f"{source}: timestamp {value!r} is not ISO 8601") from None
    if not isinstance(value, datetime):
        raise InvalidParameterError(f"{source}: timestamp must be a datetime or an ISO 8601 string")
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def _as_item(item):
    """An ``add_images`` item as a dict, or the InvalidParameterError that refuses it."""
    if isinstance(item, dict):
        if "path" not in item:
            return InvalidParameterError(f"{reprlib.repr(item)}: an item needs a path")
        return dict(item)
    if isinstance(item, str):
        return {"path": item}
    return {"path": describe(item), "image": item}


def _batches(iterable, size):
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def _valid_codes(arrays, levels):
    """Per row of a 2-D (or per item of a 3-D) numeric array: all whole numbers in
    ``-levels..levels`` (False for NaN)."""
    axes = tuple(range(1, arrays.ndim))
    valid = (arrays.min(axis=axes) >= -levels) & (arrays.max(axis=axes) <= levels)
    if arrays.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            valid &= np.all(arrays == np.round(arrays), axis=axes)
    return valid


# --- image-match 1.x's module-level helpers, for code that imported them ----------------------

def make_record(path, gis, k, N, img=None, bytestream=False, metadata=None):
    """1.x's record dict: ``path``, ``signature`` (list), ``simple_word_0..N-1``, ``metadata``."""
    signature = gis.generate_signature(path if img is None else img, bytestream=bytestream)
    record = {"path": path, "signature": signature.tolist()}
    if metadata:
        record["metadata"] = metadata
    for i, word in enumerate(make_words(signature, k, N).tolist()):
        record[f"simple_word_{i}"] = word
    return record


def get_words(array, k, N):
    """1.x's words before packing: an (N, k) int8 array, word i the k values from position
    ``words.word_positions(len(array), N)[i]``, the last ones padded with zeros."""
    array = np.asarray(array)
    if k > array.shape[0] or N > array.shape[0]:
        raise InvalidParameterError(f"k={k}, N={N}: words cannot be longer or more than the "
                                    f"{array.shape[0]} values of the array")
    padded = np.concatenate([array, np.zeros(k, dtype=array.dtype)])
    positions = word_positions(array.shape[0], N)
    return padded[positions[:, None] + np.arange(k)].astype(np.int8)


def max_contrast(array):
    """1.x's step between ``get_words`` and ``words_to_int``: values to their sign, in place."""
    np.sign(array, out=array)


def words_to_int(word_array):
    """1.x's packing of (N, k) words of -1, 0, 1 into integers, the first value least significant
    (``make_words`` does the three steps at once)."""
    word_array = np.asarray(word_array)
    return (word_array.astype(np.int64) + 1) @ 3 ** np.arange(word_array.shape[1], dtype=np.int64)


def normalized_distance(_target_array, _vec, nan_value=1.0):
    """1.x's many-to-one distance (featureless signatures are at distance 1.0 already)."""
    distances = np.atleast_1d(_normalized_distance(_target_array, _vec))
    if nan_value != 1.0:
        warnings.warn("nan_value is ignored: a featureless signature is at distance 1.0",
                      stacklevel=2)
    return distances
