"""The Elasticsearch / OpenSearch store: ``SignatureES``, and ``open_search_engine`` for a URL.

One driver serves Elasticsearch 7.17, 8 and 9 (through elasticsearch-py of the server's major) and
OpenSearch 1, 2 and 3 (through opensearch-py). The client libraries differ in how a call is
spelled (7.x and opensearch-py take ``body=``, elasticsearch-py 8/9 take the body's fields as
keywords) and in their exception classes; ``_Client`` hides both, so the driver itself is written
once against a handful of calls. Every failure leaves as a ``DatabaseError`` naming the store
(never its password): transient when the engine could not be reached or was overloaded, permanent
when it refused the request.

An index is created with an explicit, strict mapping (nothing is left to dynamic guessing)::

    id              keyword, not indexed         the record's id again, as doc values: the
                                                 order records are listed in, page by page
    path            keyword                      exact lookups (delete_duplicates)
    signature       binary, not indexed          the signature packed 3 values a byte: 216 bytes
    windows         binary, not indexed          with crop windows: the central windows'
                                                 signatures, packed one after the other
    words           keyword, many values         layout "words" (the default): the index terms
                                                 of the store's candidate scheme
                                                 (``words.CandidateScheme.terms``; with 1.x's
                                                 words, word i as ``i * 3**k + word``), and those
                                                 of the windows in a store with them
    simple_word_i   long, i = 0..N-1             layout "simple_words": image-match 1.x's fields,
                                                 for its words only (several values with windows)
    metadata        object, enabled: false       kept as given, not indexed
    metadata_terms  keyword, many values         ``key=<JSON value>`` per scalar in metadata, dotted
                                                 keys for nested objects: what pre_filter queries
    timestamp       date

and the store's parameters (signature variant, grid, candidate scheme) and its layout in the
mapping's ``_meta``, read back on every open. Candidates for a query are the records sharing the
most terms: a bool query of one term clause per term with ``minimum_should_match``, all the
queries of a search (8 with ``all_orientations``, or a batch) in one ``msearch``.
``benchmarks/es_word_layout.py`` measures the two layouts; "words" is the default because it is
faster for the same recall and smaller on disk.

Indices written by image-match 1.x are read, searched, filtered and written in their own shape
without re-indexing, in both of its layouts (no ``_meta``, a dynamic mapping):

- 1.1.2's: flat documents with ``path``, ``signature`` as a list of ints, ``simple_word_0..62``,
  ``metadata`` and ``timestamp``;
- master's (what Elasticsearch 6/7 users installed from git): the same fields nested under the
  doc type, ``image.path``, ``image.signature``, ``image.simple_word_0..62``, ``image.metadata``,
  with or without the explicit mapping its tests create (``image.path`` and
  ``image.metadata.<key>`` keyword fields) - an index holding only that mapping is adopted too.

Their parameters are 1.x's (it recorded none: full-scale decoding, cutoff 0.45, new ids), those
the store is opened with for the rest, checked against what the documents show (N, k, grid). They
cannot keep crop windows (``crop_windows=True`` on one refuses): their documents have no field for
them, and 1.x code reading the index would not know them.

Pairs of records marked "not duplicates" live in an index of their own beside the store's,
``<index>-not-duplicates`` (one document ``{a, b, timestamp}`` a pair, its id a hash of the two
ids), made by the first mark and dropped with the store: a 1.x index is never written into for
them, and the records' index keeps one kind of document.

``pre_filter`` takes the portable form or raw query DSL, a query or a list of them, made to fit the
index's layout or refused (``es_filters``).
"""

import base64
import hashlib
import http.client
import json
import math
import re
import ssl
import urllib.error
import urllib.request
from datetime import datetime, timezone
from urllib.parse import unquote, urlsplit

import numpy as np

from ..errors import DatabaseError, InvalidParameterError
from ..extras import install_command
from ..records import (Record, filter_matches, indexed_window_terms, pack_signatures,
                       pack_windows, packed_size, unpack_signatures, unpack_windows)
from ..signature_database_base import CUTOFF_1X, SignatureDatabaseBase, scored_candidates
from ..words import make_words, word_field_names
from .es_filters import (TERMS_FIELD, Clauses, IndexFields, QueryDSL, field_mapping, fit_query,
                         metadata_term, metadata_terms, normalize)

# QueryDSL is offered here too, beside the driver that takes it.
__all__ = ["SignatureES", "QueryDSL", "open_search_engine", "check_client_version",
           "LAYOUTS", "DEFAULT_LAYOUT"]

LAYOUTS = ("words", "simple_words")
#: The layout of new indices; chosen by benchmarks/es_word_layout.py (see the README's table).
DEFAULT_LAYOUT = "words"
#: Seconds ``open_search_engine`` waits for the engine to answer ``GET /``.
CONNECT_TIMEOUT = 5.0
# Enough of GET / to read an engine's answer, or to say what else answered.
_PROBE_BYTES = 65536

_WORDS_FIELD = "words"
_MAX_ID_BYTES = 512
# The engines' index.max_result_window: from + size of a search may not pass it.
_RESULT_WINDOW = 10_000
_NO_HITS = {"hits": {"hits": []}}
#: The index beside the store's that keeps pairs marked "not duplicates".
NOT_DUPLICATES_SUFFIX = "-not-duplicates"
# The fields of 1.x's documents that tell its indices apart from others'.
_LEGACY_FIELDS = ("signature", "simple_word_0")


class SignatureES(SignatureDatabaseBase):
    """Signatures in an Elasticsearch or OpenSearch index (image-match 1.x's class, same name).

    Parameters
    ----------
    es : elasticsearch.Elasticsearch or opensearchpy.OpenSearch
        A client for the engine (elasticsearch-py of the server's major version for Elasticsearch).
    index : str
        The index (created with the mapping above if it does not exist).
    doc_type : str
        1.x master's: the object a new document of a 1.x index nests under when the index's
        documents do (master's layout; found in the mapping); a raw-DSL filter may name fields
        under it (``image.metadata.tenant_id``). Elasticsearch 7+ and OpenSearch have no mapping
        types (an index made with one on 6.x is still reached through ``_doc``).
    timeout : str or number
        How long the engine may spend on one search ("10s", or seconds).
    size : int or None
        Candidates fetched per query signature (None: the candidate scheme's; 100 for 1.x's
        words).
    *args
        Passed to ``SignatureDatabaseBase`` (``k, N, n_grid, crop_percentile, distance_cutoff``).
    shards : int
        Primary shards of a new index. One shard holds tens of millions of records comfortably;
        more only pay on a cluster of several nodes.
    replicas : int or None
        Replicas of a new index. None (the default) auto-expands between 0 and 1: no replica on a
        single node (which stays green), one as soon as the cluster has a second data node.
    layout : {"words", "simple_words"} or None
        How the words of a new index are stored (see the module's docstring); None: the default
        for a new index, whatever an existing one has. An existing index of another layout refuses.
        "simple_words" holds 1.x's words only (a new index of it has them unless told otherwise).
    minimum_should_match : int or str
        Words a candidate must share with a query (1: any; "10%" is also understood).
    create : bool
        Create the index when it does not exist.
    **kwargs
        More ``SignatureDatabaseBase`` / ``ImageSignature`` parameters.

    Raises
    ------
    DatabaseError
        The engine cannot be reached (``transient``), or the index holds something else.
    InvalidParameterError
        A parameter is invalid, or conflicts with the parameters the index was built with.
    """

    def __init__(self, es, index="images", doc_type="image", timeout="10s", size=None, *args,
                 shards=1, replicas=None, layout=None, minimum_should_match=1, create=True,
                 **kwargs):
        if layout == "simple_words" and kwargs.get("new_store_defaults"):
            # 1.x's fields hold 1.x's words: a new index of that layout has them by default.
            kwargs["new_store_defaults"] = {**kwargs["new_store_defaults"], "candidates": "words"}
        super().__init__(*args, size=size, **kwargs)
        if not isinstance(index, str) or not index:
            raise InvalidParameterError(f"index={index!r}: must be a non-empty string")
        if layout is not None and layout not in LAYOUTS:
            raise InvalidParameterError(f"layout={layout!r}: must be one of {', '.join(LAYOUTS)}")
        if type(shards) is not int or shards < 1:
            raise InvalidParameterError(f"shards={shards!r}: must be a positive integer")
        if replicas is not None and (type(replicas) is not int or replicas < 0):
            raise InvalidParameterError(f"replicas={replicas!r}: must be None or an integer >= 0")
        self.es = es
        self.index = index
        self.doc_type = doc_type
        self.timeout = _check_timeout(timeout)
        self.shards = shards
        self.replicas = replicas
        self.minimum_should_match = _check_minimum_should_match(minimum_should_match)
        self._client = _Client(es, index)
        self._decisions = _Client(es, index + NOT_DUPLICATES_SUFFIX)
        self._requested_layout = layout
        self.layout = layout or DEFAULT_LAYOUT
        self.legacy = False  # an index of image-match 1.x documents
        self.root = None  # the object 1.x master's documents nest under, in such an index
        self._mapping = {}
        self._index_exists = False
        self._create_index = create
        info = self._client.info()
        version = info.get("version") or {}
        self.engine = ("OpenSearch" if version.get("distribution") == "opensearch"
                       else "Elasticsearch")
        self.engine_version = version.get("number", "?")
        if self.engine == "Elasticsearch" and _major(self.engine_version) < 7:
            raise DatabaseError(f"{self.location}: Elasticsearch {self.engine_version} is too old "
                                "(7.17 or later is needed)")
        self._open(create=create)

    @property
    def location(self):
        return self._client.location

    # --- the index and its parameters ----------------------------------------------------------

    def _read_config(self):
        mapping = self._client.get_mapping()
        self._index_exists = mapping is not None
        self._mapping = mapping or {}
        if mapping is None:
            return None
        properties = mapping.get("properties") or {}
        meta = (mapping.get("_meta") or {}).get("image_match")
        if meta:
            self._use_layout(meta["layout"])
            return meta["config"]
        if not properties:
            return None  # an empty index, made by hand or by 1.x before its first document
        root = _legacy_root(properties, self.doc_type)
        if root is None:
            raise DatabaseError(
                f"{self.location}: the index holds other documents than image-match's (fields "
                f"{', '.join(sorted(properties)[:5])}); choose another index")
        self._use_layout("simple_words", legacy=True)
        self.root = root or None
        if self.crop_windows:
            raise InvalidParameterError(
                f"{self.location}: an index of image-match 1.x documents cannot keep crop "
                "windows; open it without crop_windows, or export its records and import "
                "them into a new index made with crop windows (and add the images again)")
        return self._legacy_config(properties[root]["properties"] if root else properties)

    def _use_layout(self, layout, legacy=False):
        if self._requested_layout not in (None, layout):
            raise InvalidParameterError(
                f"{self.location}: this index has the {layout!r} layout; open it with "
                f"layout={layout!r} or None")
        self.layout, self.legacy = layout, legacy

    def _legacy_config(self, properties):
        """An image-match 1.x index recorded no parameters: take those the store was opened with
        (1.x's defaults unless told otherwise), corrected by what the documents show. Its
        signatures are 1.x's, of full-scale decodes, and it keeps 1.x's cutoff and ids."""
        config = self._config()
        config["signature"].update(variant="1.x", draft=False)
        config.update(crop_windows=[], distance_cutoff=CUTOFF_1X, ids="new")
        del config["candidates"]  # 1.x's words, of the k and N found below
        word_count = sum(1 for name in properties if re.fullmatch(r"simple_word_\d+", name))
        if word_count:
            config["N"] = word_count
        sample = self._client.search({"query": {"exists": {"field": self._field("signature")}},
                                      "size": 1})
        hits = sample["hits"]["hits"]
        if not hits:
            return config
        source = self._source_of(hits[0])
        signature = np.asarray(source.get("signature") or [], dtype=np.int64)
        if signature.size and signature.size != self.gis.sig_length:
            grid = math.isqrt(signature.size // 8)
            if grid * grid * 8 == signature.size:
                config["signature"]["n"] = grid
        stored_words = [source.get(name) for name in word_field_names(config["N"])]
        if signature.size and None not in stored_words:
            # k is the word length whose words are the ones 1.x stored (the requested one first).
            for k in [config["k"], *range(1, min(signature.size, 40) + 1)]:
                if make_words(signature, k, config["N"]).tolist() == stored_words:
                    config["k"] = k
                    break
        return config

    def _create(self, config):
        self.layout, self.legacy, self.root = self._requested_layout or DEFAULT_LAYOUT, False, None
        mappings = self._mappings(config)
        if self._index_exists:  # the index exists, empty: give it our mapping
            self._client.put_mapping(mappings)
            self._mapping = mappings
            return
        settings = {"number_of_shards": self.shards}
        if self.replicas is None:
            settings["auto_expand_replicas"] = "0-1"
        else:
            settings["number_of_replicas"] = self.replicas
        if not self._client.create_index(settings, mappings):
            # Another process created it in the meantime: adopt what it recorded.
            stored = self._read_config()
            if stored is None:
                raise DatabaseError(f"{self.location}: the index appeared while being created, "
                                    "without image-match's mapping")
            self._adopt(stored)
            return
        self._mapping = mappings
        self._index_exists = True

    def _mappings(self, config):
        if self.layout == "simple_words" and self.scheme.name != "words":
            raise InvalidParameterError(
                f"{self.location}: the simple_words layout holds image-match 1.x's words only, "
                f"not the {self.scheme.name} candidate scheme")
        properties = {
            "id": {"type": "keyword", "index": False},
            "path": {"type": "keyword"},
            "signature": {"type": "binary"},
            "windows": {"type": "binary"},
            "metadata": {"type": "object", "enabled": False},
            TERMS_FIELD: {"type": "keyword", "doc_values": False},
            "timestamp": {"type": "date"},
        }
        if self.layout == "words":
            properties[_WORDS_FIELD] = {"type": self._words_type, "doc_values": False}
        else:
            for name in word_field_names(config["N"]):
                properties[name] = {"type": "long", "doc_values": False}
        meta = {"config": config, "layout": self.layout}
        return {"dynamic": "strict", "_meta": {"image_match": meta}, "properties": properties}

    # The field type of the "words" layout (benchmarks/es_word_layout.py also measures "long").
    _words_type = "keyword"

    def _field(self, name):
        """A document field's name in this index (under the doc type in 1.x master's layout)."""
        return f"{self.root}.{name}" if self.root else name

    def _source_of(self, hit):
        """A hit's document fields (unwrapped from the doc type in 1.x master's layout)."""
        source = hit.get("_source") or {}
        return (source.get(self.root) or {}) if self.root else source

    def _not_returned(self):
        """The fields a search never needs back (derived from the signature and metadata)."""
        return [_WORDS_FIELD, TERMS_FIELD, self._field("simple_word_*")]

    def _mapping_of(self, dotted):
        """The mapping of a field; a field not found is looked up again in the index's mapping as
        it is now (a 1.x index's dynamic mapping grows with its documents)."""
        found = field_mapping(self._mapping, dotted)
        if found is None and self.legacy:
            self._mapping = self._client.get_mapping() or {}
            found = field_mapping(self._mapping, dotted)
        return found

    # --- primitives ----------------------------------------------------------------------------

    def _insert(self, records, refresh=False):
        if not self._index_exists:
            # Never let the engine create the index itself from a document (dynamic mapping).
            if not self._create_index:
                raise DatabaseError(f"{self.location}: no such index (opened with create=False)")
            self._open()
        # The engine refuses a whole bulk request over one id that is too long: refuse it here.
        refused = [None if len(r.id.encode("utf-8")) <= _MAX_ID_BYTES else
                   f"id is longer than {_MAX_ID_BYTES} bytes" for r in records]
        accepted = [record for record, reason in zip(records, refused) if reason is None]
        # Lines serialized here, once, as the bulk API's NDJSON (every client passes text
        # through): the clients' serializer costs more per call than the JSON it writes.
        index = _to_json(self.index)
        operations = []
        for record, document in zip(accepted, self._documents(accepted)):
            operations.append(f'{{"index":{{"_index":{index},"_id":{_to_json(record.id)}}}}}')
            operations.append(_to_json(document))
        if operations:
            items = iter(self._client.bulk(operations, refresh=refresh)["items"])
            refused = [_item_error(next(items)) if reason is None else reason
                       for reason in refused]
        return refused

    def _documents(self, records):
        """The engine's document of each record. What can be is computed for the whole batch at
        once (packing, field words): per record, it was most of the client's time in a bulk."""
        if not records:
            return []
        signatures = np.stack([record.signature for record in records])
        if self.legacy:
            # 1.x's shape, so that documents old and new read alike (also to 1.x code).
            signature_values = signatures.tolist()
        else:
            packed = pack_signatures(signatures)
        with_id = self._order() == "id"
        # A record's own terms differ from each other (each has its own range): no dedup needed.
        plain = np.stack([r.terms for r in records])
        if self.layout == "simple_words":
            plain = self.scheme.words_of_terms(plain)
        plain = plain.tolist()
        documents = []
        for index, record in enumerate(records):
            document = {"path": record.path}
            if with_id:
                document["id"] = record.id
            if self.legacy:
                document["signature"] = signature_values[index]
                if record.metadata is not None:
                    document["metadata"] = record.metadata
            else:
                document["signature"] = base64.b64encode(packed[index]).decode()
                document["metadata"] = record.metadata
                document[TERMS_FIELD] = metadata_terms(record.metadata)
            with_windows = None  # the record's terms and its windows', when it has windows
            if record.windows is not None and not self.legacy:
                document["windows"] = base64.b64encode(pack_windows(record.windows)).decode()
                with_windows = np.concatenate(
                    [record.terms[None], indexed_window_terms(record.window_terms,
                                                              record.windows)])
            if self.layout == "words":
                document[_WORDS_FIELD] = (plain[index] if with_windows is None
                                          else _unique(with_windows.ravel().tolist()))
            elif with_windows is None:
                document.update(zip(word_field_names(self.scheme.N), plain[index]))
            else:
                words = self.scheme.words_of_terms(with_windows)
                document.update(zip(word_field_names(self.scheme.N),
                                    (_unique(column) for column in words.T.tolist())))
            document["timestamp"] = _format_timestamp(record.timestamp)
            documents.append({self.root: document} if self.root else document)
        return documents

    def _candidates(self, terms, size, pre_filter):
        clauses = self._filter_clauses(pre_filter)
        searches = []
        for row in np.atleast_2d(terms):
            query = self._words_query(row)
            if clauses:
                query = {"bool": {"must": [query], "filter": clauses}}
            searches.append({"index": self.index})
            searches.append({"query": query, "size": size, "timeout": self.timeout,
                             "track_total_hits": False,
                             "_source": {"excludes": self._not_returned()}})
        responses = self._client.msearch(searches)["responses"]
        hit_lists = []
        for response in responses:
            if "error" in response:
                status = response.get("status")
                raise DatabaseError(f"{self.location}: search failed: {_reason(response['error'])}",
                                    transient=status == 429 or (status or 0) >= 500)
            hit_lists.append(response["hits"]["hits"])
        # Every candidate of the search unpacked in one call, each once.
        first = {}
        for hits in hit_lists:
            for hit in hits:
                first.setdefault(hit["_id"], hit)
        parsed = {record.id: record for record in self._from_hits(list(first.values()))}
        candidates = scored_candidates([[(hit["_id"], hit.get("_score")) for hit in hits]
                                        for hits in hit_lists], parsed)
        # The engine's translation of a portable filter may let more through (values inside
        # lists, 1.x's text fields): the reference semantics decide.
        portable = pre_filter if isinstance(pre_filter, dict) else None
        return [[r for r in records if filter_matches(r.metadata, portable)]
                for records in candidates]

    def _words_query(self, row):
        """Records sharing at least ``minimum_should_match`` of the terms ``row``, scored by the
        terms they share (a term on a long field scores 1; on the keyword field, its rarity)."""
        if self.layout == "words":
            should = [{"term": {_WORDS_FIELD: int(v)}} for v in row]
        else:
            should = [{"term": {self._field(name): int(w)}} for name, w in
                      zip(word_field_names(self.scheme.N), self.scheme.words_of_terms(row))]
        return {"bool": {"should": should, "minimum_should_match": self.minimum_should_match}}

    def _check_filter(self, pre_filter):
        """A portable filter as ``records.normalize_filter`` makes it, or raw DSL as ``Clauses``
        fitted to this index's layout (``es_filters``)."""
        pre_filter = normalize(pre_filter)
        if not isinstance(pre_filter, Clauses):
            return pre_filter
        fields = IndexFields(self.root, self.legacy, [self.doc_type], self._mapping_of)
        return Clauses(fit_query(clause, fields) for clause in pre_filter)

    def _filter_clauses(self, pre_filter):
        if pre_filter is None:
            return []
        if isinstance(pre_filter, Clauses):
            return list(pre_filter)
        if self.legacy:
            return [self._legacy_filter(key, values) for key, values in pre_filter.items()]
        return [{"terms": {TERMS_FIELD: [metadata_term(key, v) for v in values]}}
                for key, values in pre_filter.items()]

    def _legacy_filter(self, key, values):
        """Term queries on 1.x's dynamically mapped ``metadata.<key>``, by the type the engine
        gave the field: strings on its keyword (sub)field, numbers and booleans on the field."""
        field = self._field(f"metadata.{key}")
        mapping = self._mapping_of(field)
        kind = (mapping or {}).get("type")
        keyword = field if kind == "keyword" else (
            f"{field}.keyword" if "keyword" in (mapping or {}).get("fields", {}) else None)
        numeric = kind in ("long", "integer", "short", "byte", "double", "float", "half_float",
                           "scaled_float")
        should = []
        for value in values:
            if isinstance(value, bool):
                if kind == "boolean":
                    should.append({"term": {field: value}})
            elif isinstance(value, (int, float)):
                if numeric:
                    should.append({"term": {field: value}})
            elif keyword:
                should.append({"term": {keyword: value}})
        return {"bool": {"should": should or [{"match_none": {}}], "minimum_should_match": 1}}

    def _from_hits(self, hits):
        """The records of search, get or scan hits; the packed signatures of all of them are
        unpacked in one call (per hit, that was most of a search's time in the client)."""
        sources = [self._source_of(hit) for hit in hits]
        encoded = [source.get("signature") for source in sources]
        packed = [base64.b64decode(s) if isinstance(s, str) else None for s in encoded]
        size = packed_size(self.gis.sig_length)
        whole = [i for i, data in enumerate(packed) if data is not None and len(data) == size]
        unpacked = dict(zip(whole, unpack_signatures([packed[i] for i in whole],
                                                     self.gis.sig_length))) if whole else {}
        records = []
        for index, (hit, source) in enumerate(zip(hits, sources)):
            signature = unpacked.get(index)
            if signature is None and packed[index] is not None:  # packed, of another length
                signature = unpack_signatures(packed[index], self.gis.sig_length)
            elif signature is None:  # 1.x's documents hold a list of numbers
                try:
                    signature = np.asarray(encoded[index] or [], dtype=np.int8)
                except (TypeError, ValueError):
                    signature = np.zeros(0, dtype=np.int8)
            if signature.shape != (self.gis.sig_length,):
                raise DatabaseError(f"{self.location}: record {hit['_id']} holds a signature of "
                                    f"{signature.size} values, this store's have "
                                    f"{self.gis.sig_length}")
            windows = source.get("windows")
            if windows is not None:
                windows = unpack_windows(base64.b64decode(windows), self.gis.sig_length)
            records.append(Record(id=hit["_id"], path=source.get("path", source.get("url")),
                                  signature=signature, metadata=source.get("metadata"),
                                  timestamp=_parse_timestamp(source.get("timestamp")),
                                  score=hit.get("_score"), windows=windows))
        return records

    def _get(self, ids):
        docs = self._client.mget([{"_id": i, "_source": {"excludes": self._not_returned()}}
                                  for i in ids])["docs"]
        for doc in docs:
            if "error" in doc:
                raise DatabaseError(f"{self.location}: reading {doc['_id']}: {_reason(doc['error'])}")
        return {record.id: record
                for record in self._from_hits([doc for doc in docs if doc.get("found")])}

    def _delete(self, ids):
        operations = [{"delete": {"_index": self.index, "_id": i}} for i in ids]
        # Deletions are rare and a user expects a deleted record gone from the next search.
        response = self._client.bulk(operations, refresh=True)
        deleted = 0
        for item in response["items"]:
            outcome = item["delete"]
            if outcome.get("result") == "deleted":
                deleted += 1
            elif outcome.get("status") != 404:
                raise DatabaseError(f"{self.location}: deleting {outcome.get('_id')}: "
                                    f"{_item_error(item)}")
        return deleted

    def _ids_with_path(self, path):
        query, exact = self._path_query(path)
        holders = []
        returned = [self._field(name) for name in ("path", "url", "timestamp")]
        for hit in self._client.scan({"query": query, "_source": returned}):
            source = self._source_of(hit)
            if not exact or source.get("path", source.get("url")) == path:
                holders.append((hit["_id"], _parse_timestamp(source.get("timestamp"))))
        return holders

    def _path_query(self, path):
        """The query for records whose path is ``path``, and whether hits need an exact check.

        1.x's dynamic mapping made ``path`` text with a ``keyword`` subfield that skips values
        longer than its ``ignore_above``: those are found by phrase and checked here."""
        field = self._field("path")
        mapping = self._mapping_of(field) or {"type": "keyword"}
        if mapping.get("type") == "keyword":
            return {"term": {field: path}}, False
        keyword = mapping.get("fields", {}).get("keyword")
        if keyword and len(path) <= keyword.get("ignore_above", 2 ** 31):
            return {"term": {f"{field}.keyword": path}}, False
        return {"match_phrase": {field: path}}, True

    def _scan(self, batch_size):
        query = {"query": {"match_all": {}}, "_source": {"excludes": self._not_returned()}}
        for hit in self._client.scan(query, size=batch_size):
            try:
                yield from self._from_hits([hit])
            except DatabaseError as error:  # a damaged document: named, and the scan goes on
                yield error

    def _order(self):
        """The field records are listed in the order of: ``id``'s doc values in the indices made
        since it exists; in others (1.x's), ``_id``, which Elasticsearch 7 and OpenSearch sort on
        from a cache of every id in the heap (and Elasticsearch 8 refuses)."""
        properties = self._mapping.get("properties") or {}
        return "id" if "id" in properties and not self.legacy else "_id"

    def _page(self, after, limit):
        body = {"query": {"match_all": {}}, "size": limit + 1, "sort": [{self._order(): "asc"}],
                "track_total_hits": False, "_source": {"excludes": self._not_returned()}}
        if after is not None:
            body["search_after"] = [after]
        hits = self._client.search(body, missing=_NO_HITS)["hits"]["hits"]
        following = hits[limit - 1]["sort"][0] if len(hits) > limit else None
        return self._from_hits(hits[:limit]), following

    def _paths(self, offset, limit):
        order = [{self._order(): "asc"}]
        base = {"query": {"match_all": {}}, "sort": order, "track_total_hits": False}
        if offset + limit <= _RESULT_WINDOW:
            hits = self._client.search(
                {**base, "from": offset, "size": limit, "_source": self._path_fields()},
                missing=_NO_HITS)["hits"]["hits"]
            return [self._path_of(hit) for hit in hits]
        # Past the engine's result window: walk there by search_after, sort values only.
        after = None
        while offset:
            step = {**base, "size": min(offset, _RESULT_WINDOW), "_source": False}
            if after is not None:
                step["search_after"] = after
            hits = self._client.search(step, missing=_NO_HITS)["hits"]["hits"]
            if not hits:
                return []
            offset -= len(hits)
            after = hits[-1]["sort"]
        body = {**base, "size": limit, "_source": self._path_fields(), "search_after": after}
        return [self._path_of(hit) for hit in
                self._client.search(body, missing=_NO_HITS)["hits"]["hits"]]

    def _path_fields(self):
        return [self._field("path"), self._field("url")]

    def _path_of(self, hit):
        source = self._source_of(hit)
        return source.get("path", source.get("url"))

    def _add_distinct(self, pairs):
        decisions = self._decisions
        if decisions.get_mapping() is None:
            decisions.create_index({"number_of_shards": 1, "auto_expand_replicas": "0-1"}, {
                "dynamic": "strict", "properties": {"a": {"type": "keyword"},
                                                    "b": {"type": "keyword"},
                                                    "timestamp": {"type": "date"}}})
        index = _to_json(decisions.index)
        operations = []
        for a, b, moment in pairs:
            pair_id = hashlib.blake2b(f"{a}\n{b}".encode("utf-8", "surrogatepass"),
                                      digest_size=16).hexdigest()
            operations.append(f'{{"index":{{"_index":{index},"_id":"{pair_id}"}}}}')
            operations.append(_to_json({"a": a, "b": b, "timestamp": _format_timestamp(moment)}))
        response = decisions.bulk(operations, refresh=True)
        for item in response["items"]:
            error = _item_error(item)
            if error is not None:
                raise DatabaseError(f"{decisions.location}: writing a pair: {error}")

    def _distinct(self):
        if self._decisions.get_mapping() is None:
            return []
        return [(source["a"], source["b"], _parse_timestamp(source["timestamp"]))
                for source in (hit["_source"] for hit in self._decisions.scan(
                    {"query": {"match_all": {}}}))]

    def count(self):
        """How many records the index holds (0 when it does not exist)."""
        return self._client.count()

    def drop(self):
        """Delete the index and every record in it, and the pairs marked "not duplicates" (the
        next write creates it again)."""
        self._client.delete_index()
        self._decisions.delete_index()
        self._mapping, self._index_exists, self.root = {}, False, None

    def refresh(self):
        self._client.refresh()

    def describe(self):
        """``{"engine", "location", "records", "bytes", "layout"}``; bytes on disk, replicas
        included."""
        layout = self.layout
        if self.legacy:
            nested = f", nested under {self.root!r}" if self.root else ""
            layout += f" (image-match 1.x documents{nested})"
        return {"engine": f"{self.engine} {self.engine_version}", "location": self.location,
                "records": self.count(), "bytes": self._client.store_bytes(), "layout": layout}


# --- documents --------------------------------------------------------------------------------

_JSON_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def _to_json(value):
    """Compact JSON text, as the clients write it."""
    return _JSON_ENCODER.encode(value)


def _unique(values):
    """The values without repeats, in their first order."""
    return list(dict.fromkeys(values))


def _legacy_root(properties, doc_type):
    """Whether an index's mapping ``properties`` are those of image-match 1.x's documents: ""
    for 1.1.2's flat ones, the doc type for master's nested ones, None for other documents.

    Master's documents nest under one object, the doc type; its tests create the index with a
    mapping of that object's ``path`` and ``metadata`` before any document is written."""
    if any(name in properties for name in _LEGACY_FIELDS):
        return ""
    nested = {name: (field.get("properties") or {}) for name, field in properties.items()
              if isinstance(field, dict) and field.get("properties")}
    candidates = [name for name, inner in nested.items()
                  if any(key in inner for key in (*_LEGACY_FIELDS, "path"))]
    if doc_type in candidates:
        return doc_type
    return candidates[0] if len(candidates) == 1 and len(properties) == 1 else None


def _parse_timestamp(value):
    """An engine date (ISO 8601, or epoch milliseconds) as an aware datetime; 1.x wrote local
    times without a zone, read here as UTC."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return datetime.fromtimestamp(value / 1000, timezone.utc)
        if isinstance(value, str):
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    except (ValueError, OverflowError, OSError):
        pass
    return None


def _format_timestamp(value):
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).isoformat()
    return value  # given by the caller as the engine takes it (ISO 8601 text, epoch millis)


def _item_error(item):
    """None for a bulk item that succeeded, else the engine's reason."""
    (outcome,) = item.values()
    if "error" not in outcome:
        return None
    return _reason(outcome["error"])


def _reason(error):
    if isinstance(error, dict):
        cause = error.get("caused_by") or {}
        reason = f"{error.get('type', 'error')}: {error.get('reason', '')}".strip(": ")
        if cause.get("reason"):
            reason += f" ({cause['reason']})"
        return reason
    return str(error)


def _check_timeout(timeout):
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0:
        return f"{int(math.ceil(timeout * 1000))}ms"
    if isinstance(timeout, str) and re.fullmatch(r"\d+(ms|s|m|h|d|micros|nanos)", timeout):
        return timeout
    raise InvalidParameterError(f"timeout={timeout!r}: expected seconds or a duration such as '10s'")


def _check_minimum_should_match(value):
    if type(value) is int and value >= 1:
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+%?", value):
        return value
    raise InvalidParameterError(
        f"minimum_should_match={value!r}: must be a positive integer or a percentage ('10%')")


# --- the client libraries ---------------------------------------------------------------------

class _Client:
    """The calls the driver makes, spelled for the client it was given, each failure translated
    into a ``DatabaseError`` naming the index.

    elasticsearch-py 7 and opensearch-py take request bodies as ``body=``; elasticsearch-py 8 and
    9 take the body's fields as keywords (``query=``, ``operations=``, ``searches=``) and dropped
    ``body=`` (9). A missing index is an exception (status 404) for all of them, which avoids
    their different ways to ignore a status (``ignore=`` against ``.options(ignore_status=)``).
    """

    def __init__(self, es, index):
        library = _client_library(es)
        # elasticsearch-py 7.17 already takes keywords for these and warns about body= there.
        self.field_keywords = library == "elasticsearch"
        if library == "opensearchpy":
            import opensearchpy.helpers

            self.keywords = False
            self.helpers = opensearchpy.helpers
            errors = (opensearchpy.exceptions.OpenSearchException,)
        elif library == "elasticsearch":
            import elasticsearch
            import elasticsearch.helpers

            self.keywords = elasticsearch.VERSION[0] >= 8
            self.helpers = elasticsearch.helpers
            if elasticsearch.VERSION[0] >= 8:
                import elastic_transport

                errors = (elasticsearch.ApiError, elastic_transport.TransportError,
                          elasticsearch.helpers.ScanError, elasticsearch.helpers.BulkIndexError)
            else:
                errors = (elasticsearch.exceptions.ElasticsearchException,)
        else:
            raise InvalidParameterError(
                f"es={es!r}: expected an elasticsearch.Elasticsearch or opensearchpy.OpenSearch client")
        self.es = es
        self.index = index
        self.errors = errors
        self.address, self.secret = _client_address(es)
        self.location = f"{self.address}/{index}"

    def _call(self, what, function, *args, missing=None, **kwargs):
        """``function(*args, **kwargs)``; ``missing`` when the index does not exist (if given)."""
        try:
            response = function(*args, **kwargs)
        except self.errors as error:
            status = _status_of(error)
            if status == 404 and missing is not None:
                return missing
            raise self._translate(error, status, what) from None
        return getattr(response, "body", response)  # elasticsearch-py 8 wraps its responses

    def _translate(self, error, status, what):
        if status is None:  # no HTTP answer: refused, reset, timed out, TLS, product check
            reason = f"cannot reach the engine ({type(error).__name__}: {_short(error)})"
            transient = True
        else:
            reason = f"HTTP {status}: {_error_reason(error)}"
            transient = status == 429 or status >= 500
        if self.secret:
            reason = reason.replace(self.secret, "***")
        return DatabaseError(f"{self.location}: {what}: {reason}", transient=transient)

    def _body(self, function, body, keywords=None, **kwargs):
        """Call ``function`` with ``body`` spelled as the client wants it (``keywords``: whether it
        takes the body's fields as keywords, by default for elasticsearch-py 8/9)."""
        keywords = self.keywords if keywords is None else keywords
        return function(**kwargs, **body) if keywords else function(body=body, **kwargs)

    def info(self):
        return self._call("connecting", self.es.info)

    def get_mapping(self):
        """The index's mapping, or None if there is no such index."""
        response = self._call("reading the mapping", self.es.indices.get_mapping,
                              index=self.index, missing=False)
        if not response:
            return None
        (index,) = response.values()  # keyed by the concrete index (an alias may point to it)
        return index.get("mappings") or {}

    def create_index(self, settings, mappings):
        """Create the index; False if it already exists."""
        try:
            self._body(self.es.indices.create, {"settings": settings, "mappings": mappings},
                       keywords=self.field_keywords, index=self.index)
        except self.errors as error:
            status = _status_of(error)
            if status == 400 and "already_exists" in _error_reason(error):
                return False
            raise self._translate(error, status, "creating the index") from None
        return True

    def put_mapping(self, mappings):
        if self.keywords:
            body = {("meta" if key == "_meta" else key): value for key, value in mappings.items()}
        else:
            body = mappings
        self._call("writing the mapping", self._body, self.es.indices.put_mapping, body,
                   index=self.index)

    def delete_index(self):
        self._call("dropping the index", self.es.indices.delete, index=self.index, missing=True)

    def refresh(self):
        self._call("refreshing", self.es.indices.refresh, index=self.index, missing=True)

    def count(self):
        response = self._call("counting", self.es.count, index=self.index, missing={"count": 0})
        return response["count"]

    def store_bytes(self):
        response = self._call("reading the index size", self.es.indices.stats, index=self.index,
                              metric="store", missing={})
        total = response.get("_all", {}).get("total", {}).get("store", {})
        return total.get("size_in_bytes")

    def bulk(self, operations, refresh=False):
        spelled = {"operations": operations} if self.keywords else {"body": operations}
        return self._call("writing", self.es.bulk, **spelled, refresh="true" if refresh else "false")

    def msearch(self, searches):
        spelled = {"searches": searches} if self.keywords else {"body": searches}
        return self._call("searching", self.es.msearch, **spelled)

    def search(self, body, missing=None):
        """The engine's answer to a search; ``missing`` when the index does not exist (if given)."""
        if self.field_keywords and "from" in body:  # a Python keyword: elasticsearch-py's from_
            body = {("from_" if key == "from" else key): value for key, value in body.items()}
        return self._call("searching", self._body, self.es.search, body,
                          keywords=self.field_keywords, index=self.index, missing=missing)

    def mget(self, docs):
        return self._call("reading", self._body, self.es.mget, {"docs": docs}, index=self.index)

    def scan(self, query, size=1000):
        """Every hit of ``query``, through the client's own scroll helper."""
        hits = self.helpers.scan(self.es, query=query, index=self.index, size=size, scroll="5m")
        while True:
            try:
                hit = self._call("scanning", next, hits)
            except StopIteration:
                return
            yield hit


def _client_library(es):
    """"elasticsearch" or "opensearchpy": the library of a client, or of the client class it is
    made from (users subclass clients), else None."""
    for cls in type(es).__mro__:
        library = cls.__module__.split(".")[0]
        if library in ("elasticsearch", "opensearchpy"):
            return library
    return None


def _status_of(error):
    """The HTTP status of a client error, or None when there was no HTTP answer."""
    status = getattr(error, "status_code", None)  # elasticsearch-py 7, opensearch-py
    if not isinstance(status, int):
        meta = getattr(error, "meta", None)  # elasticsearch-py 8/9's ApiError
        status = getattr(meta, "status", None)
    return status if isinstance(status, int) else None


def _error_reason(error):
    info = getattr(error, "info", None)  # elasticsearch-py 7, opensearch-py: the parsed body
    if not isinstance(info, dict):
        info = getattr(error, "body", None)  # elasticsearch-py 8/9
    if isinstance(info, dict) and isinstance(info.get("error"), dict):
        return _reason(info["error"])
    return _short(error)


def _short(error):
    text = " ".join(str(error).split())
    return text if len(text) <= 300 else text[:297] + "..."


def _client_address(es):
    """``(scheme://host:port[/prefix], password or None)`` of a client's first node, for
    messages (without the credentials) and for scrubbing the password out of them."""
    try:
        transport = es.transport
        if hasattr(transport, "node_pool"):  # elasticsearch-py 8/9
            node = transport.node_pool.all()[0].config
            scheme, host, port, prefix = node.scheme, node.host, node.port, node.path_prefix
            secret = None
        else:
            host_info = transport.hosts[0]
            ssl_on = host_info.get("use_ssl") or host_info.get("scheme") == "https"
            scheme, host, port = ("https" if ssl_on else "http"), host_info["host"], host_info.get("port")
            prefix, secret = host_info.get("url_prefix", ""), None
            auth = host_info.get("http_auth") or getattr(transport, "kwargs", {}).get("http_auth")
            if isinstance(auth, str) and ":" in auth:
                secret = auth.split(":", 1)[1]
            elif isinstance(auth, (tuple, list)) and len(auth) == 2:
                secret = auth[1]
        address = f"{scheme}://{host}" + (f":{port}" if port else "") + (prefix or "").rstrip("/")
        return address, secret or None
    except (AttributeError, IndexError, KeyError, TypeError):
        return type(es).__name__, None


# --- opening a store from a URL ----------------------------------------------------------------

def open_search_engine(url, client_options=None, request_timeout=30, **kwargs):
    """Open the index at ``http(s)://[user:pass@]host:port[/prefix]/index`` as a ``SignatureES``.

    ``GET /`` (within ``CONNECT_TIMEOUT`` seconds) tells Elasticsearch from OpenSearch and the
    major version; the matching client is built (opensearch-py, or elasticsearch-py of the
    server's major). The index is the URL's last path segment, "images" when there is none (1.x's
    default); anything before it is the engine's path prefix (behind a proxy).

    Parameters
    ----------
    client_options : dict, optional
        More options for the client (``verify_certs``, ``ca_certs``, ``headers``...).
    request_timeout : float
        Seconds the client waits for any one request.
    **kwargs
        ``SignatureES`` parameters (``layout``, ``replicas``, ``size``, ``distance_cutoff``...).

    Raises
    ------
    DatabaseError
        The engine does not answer (transient), is not one this driver supports, or needs a client
        library that is missing or of another major version (the message says what to install).
    """
    address, index, username, password = _parse_url(url)
    options = dict(client_options or {})
    where = f"{address}/{index}"
    product, version = _probe(address, username, password, options, where)
    major = _major(version)
    if product == "OpenSearch":
        try:
            import opensearchpy
        except ImportError:
            raise DatabaseError(f"{where}: OpenSearch {version} needs opensearch-py: "
                                f"{install_command('opensearch')}") from None
        factory = opensearchpy.OpenSearch
        auth = {"http_auth": (username, password)} if username is not None else {}
        timeouts = {"timeout": request_timeout}
    else:
        try:
            import elasticsearch
        except ImportError:
            raise DatabaseError(
                f"{where}: Elasticsearch {version} needs elasticsearch-py {major}: "
                f"{client_install(major)}") from None
        problem = check_client_version(major, elasticsearch.VERSION[0])
        if problem:
            raise DatabaseError(f"{where}: Elasticsearch {version}: {problem}")
        factory = elasticsearch.Elasticsearch
        if elasticsearch.VERSION[0] >= 8:
            auth = {"basic_auth": (username, password)} if username is not None else {}
            timeouts = {"request_timeout": request_timeout}
        else:
            auth = {"http_auth": (username, password)} if username is not None else {}
            timeouts = {"timeout": request_timeout}
    client_kwargs = {**timeouts, "max_retries": 1, "retry_on_timeout": False, **auth, **options}
    try:
        client = factory([address], **client_kwargs)
    except Exception as error:  # the clients raise ValueError, TypeError, their own: report any
        message = _short(error)
        if password:
            message = message.replace(password, "***")
        raise DatabaseError(f"{where}: cannot set up the {product} client: {message}") from None
    return SignatureES(client, index, **kwargs)


def check_client_version(server_major, client_major):
    """None if elasticsearch-py ``client_major`` talks to an Elasticsearch ``server_major``, else
    what to install. Clients speak to their own major; 8 also to 9 (its REST compatibility)."""
    if server_major < 7:
        return "Elasticsearch 7.17 or later is needed (this server is too old)"
    if client_major == server_major or (client_major == 8 and server_major == 9):
        return None
    return (f"elasticsearch-py {client_major} is installed, this server needs "
            f"elasticsearch-py {server_major}: {client_install(server_major)}")


def client_install(server_major):
    """What to install for an Elasticsearch of ``server_major``: the client of the extra of its
    major (setup.cfg has one per major the driver knows)."""
    if server_major in (7, 8, 9):
        return install_command(f"elasticsearch{server_major}")
    return f"pip install 'elasticsearch>={server_major},<{server_major + 1}'"


def _parse_url(url):
    """``(address without credentials, index, username, password)``."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidParameterError(f"{_redact(url)}: expected http(s)://host:port/index")
    try:
        port = parts.port
    except ValueError:
        raise InvalidParameterError(f"{_redact(url)}: the port is not a number") from None
    segments = [s for s in parts.path.split("/") if s]
    index = unquote(segments[-1]) if segments else "images"
    prefix = "".join("/" + s for s in segments[:-1])
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    address = f"{parts.scheme}://{host}:{port or (443 if parts.scheme == 'https' else 9200)}{prefix}"
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    if username is not None and password is None:
        password = ""
    return address, index, username, password


def _redact(url):
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.password is None:
        return str(url)
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


def _probe(address, username, password, options, where):
    """``("OpenSearch" | "Elasticsearch", version)`` from the engine's ``GET /``."""
    request = urllib.request.Request(address + "/", headers={"Accept": "application/json"})
    if username is not None:
        token = base64.b64encode(f"{username}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    handlers = [urllib.request.ProxyHandler({})]  # as the clients: no proxy from the environment
    if address.startswith("https"):
        context = ssl.create_default_context(cafile=options.get("ca_certs"))
        if options.get("verify_certs") is False:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    try:
        with urllib.request.build_opener(*handlers).open(request, timeout=CONNECT_TIMEOUT) as response:
            status, headers, body = response.status, response.headers, response.read(_PROBE_BYTES)
    except urllib.error.HTTPError as error:
        hint = " (check the user and password)" if error.code in (401, 403) else ""
        try:
            body = error.read(_PROBE_BYTES)
        except (OSError, http.client.HTTPException):
            body = b""
        if _json_object(body) is None:  # an engine's errors are JSON: this is another server
            raise DatabaseError(f"{where}: not an Elasticsearch or OpenSearch engine: "
                                f"{_what_answered(address, error.code, error.headers, body)}{hint}"
                                ) from None
        raise DatabaseError(f"{where}: the engine answered HTTP {error.code}{hint}",
                            transient=error.code == 429 or error.code >= 500) from None
    except http.client.HTTPException as error:  # something answered, not in HTTP (ssh, a database)
        raise DatabaseError(f"{where}: not an Elasticsearch or OpenSearch engine: GET {address}/ "
                            f"was not answered in HTTP ({type(error).__name__}: {_short(error)})"
                            ) from None
    except (OSError, ValueError) as error:  # refused, timed out, reset, TLS
        reason = getattr(error, "reason", error)
        message = " ".join(str(reason).split())
        if password:
            message = message.replace(password, "***")
        raise DatabaseError(f"{where}: cannot reach the engine ({message})", transient=True) from None
    info = _json_object(body)
    version = (info.get("version") or {}) if info is not None else {}
    if not isinstance(version, dict) or not version.get("number"):
        raise DatabaseError(f"{where}: not an Elasticsearch or OpenSearch engine: "
                            f"{_what_answered(address, status, headers, body)}")
    product = "OpenSearch" if version.get("distribution") == "opensearch" else "Elasticsearch"
    return product, version["number"]


def _json_object(body):
    try:
        value = json.loads(body)
    except ValueError:  # not JSON (nor UTF-8)
        return None
    return value if isinstance(value, dict) else None


def _what_answered(address, status, headers, body):
    """What a server that is not an engine answered to ``GET /``, for a message: its status,
    type, name, and the title of its page or the start of its body."""
    server = headers.get("Server") if headers is not None else None
    kind = headers.get_content_type() if headers is not None and headers.get("Content-Type") else None
    text = " ".join(body.decode("utf-8", "replace").split())
    title = re.search(r"<title[^>]*>(.*?)</title", text, re.IGNORECASE)
    excerpt = title.group(1).strip() if title else text
    excerpt = excerpt if len(excerpt) <= 80 else excerpt[:77] + "..."
    details = [part for part in (kind, server and f"server {server}") if part]
    return (f"GET {address}/ answered HTTP {status}" + (f" ({', '.join(details)})" if details else "")
            + (f": {excerpt!r}" if excerpt else ", empty"))


def _major(version):
    match = re.match(r"(\d+)", version)
    return int(match.group(1)) if match else 0
