"""``pre_filter`` on Elasticsearch/OpenSearch indices: the portable form, and raw query DSL made to
fit the index's layout or refused.

A filter is one of:

- the portable form, ``{"key": value}`` or ``{"key": [values]}`` on metadata (see
  ``records.normalize_filter``), which every store takes;
- raw query DSL, as image-match 1.x passed it to the engine: one query (a dict with a single key,
  the name of a query, ``QUERY_NAMES``, whose value is a dict), or a list of them that must all
  hold (1.x master's form). A portable filter's values are never dicts, and a dict under any
  other key is a mistake in a portable filter (InvalidParameterError);
- ``QueryDSL(query)``: any query, sent as it is, unchecked (a plugin's query, or one this module
  does not know).

Raw DSL names fields as the documents of some layout spell them; 1.x users spell them as 1.x's
indices did (``metadata.tenant_id``, or under master's doc type ``image.metadata.tenant_id``).
``fit_query`` rewrites each field for the index at hand (``IndexFields``), so that a filter either
works or fails loudly, never returns an empty answer because it named a field the index does not
have:

- in 1.x's layouts (flat, or nested under the doc type), a field is moved under or out of the doc
  type as the index has it, ``x.keyword`` becomes ``x`` where ``x`` is a keyword field without
  that subfield, a ``term`` or ``terms`` query on a text field with a keyword subfield (1.x's
  dynamic mapping of strings) compares with the subfield, the whole value (on the text it would
  meet single lower-cased words: ``"bar-2"`` would find nothing), and a metadata field no
  document has yet is kept (no record has that key: the engine rightly finds none);
- in image-match 2's layouts metadata is kept as exact terms (``metadata_terms``, see
  ``metadata_term``): ``term``, ``terms``, ``match`` and ``match_phrase`` on ``metadata.<key>``
  become terms of that field (the whole value is compared), and other queries on metadata (range,
  prefix, exists...) are refused, as is any field the index does not have.

Compound queries (bool, constant_score, boosting, dis_max, function_score, script_score) are
rewritten clause by clause. A query naming fields in a way this module does not read (query_string,
multi_match, geo, script...) passes unchanged on a 1.x index, where 1.x passed it, and is refused
on image-match 2's (wrap it in ``QueryDSL`` to send it anyway).
"""

import json
import math
from hashlib import blake2b

from ..errors import InvalidParameterError
from ..records import normalize_filter

#: The queries a dict ``pre_filter`` may be: the engines' full-text, term-level, compound,
#: joining, geo and specialized queries.
QUERY_NAMES = frozenset("""
    bool boosting constant_score dis_max function_score script_score
    match match_all match_none match_bool_prefix match_phrase match_phrase_prefix multi_match
    combined_fields query_string simple_query_string intervals
    term terms terms_set range exists prefix wildcard regexp fuzzy ids
    nested has_child has_parent parent_id
    geo_bounding_box geo_distance geo_polygon geo_shape shape
    more_like_this percolate rank_feature distance_feature script pinned wrapper
    knn neural sparse_vector text_expansion
""".split())
#: image-match 2's field of metadata terms.
TERMS_FIELD = "metadata_terms"

# Where compound queries hold their clauses (a clause, or a list of them).
_COMPOUND = {"bool": ("must", "filter", "should", "must_not"), "constant_score": ("filter",),
             "boosting": ("positive", "negative"), "dis_max": ("queries",),
             "function_score": ("query",), "script_score": ("query",)}
# Queries of the form {name: {field: value-or-options, "boost"?: ..., "_name"?: ...}}.
_ON_A_FIELD = frozenset("term terms terms_set match match_phrase match_phrase_prefix "
                        "match_bool_prefix prefix wildcard regexp fuzzy range".split())
# Those that compare a whole value, which metadata terms answer.
_WHOLE_VALUE = frozenset(("term", "terms", "match", "match_phrase"))
_OPTIONS = frozenset(("boost", "_name"))
_NO_FIELD = frozenset(("match_all", "match_none", "ids"))
# Longer metadata terms are indexed as a hash of themselves: a keyword term may not exceed 32766
# bytes, and a filter on a long value hashes it the same way.
_MAX_TERM_LENGTH = 256


class QueryDSL:
    """A ``pre_filter`` given as raw query DSL, passed to the engine as it is:
    ``search_image(path, pre_filter=QueryDSL({"my_plugin_query": {...}}))``."""

    def __init__(self, query):
        if not isinstance(query, dict) or len(query) != 1:
            raise InvalidParameterError(f"QueryDSL({query!r}): a query is a dict with one key")
        self.query = query

    def __repr__(self):
        return f"QueryDSL({self.query!r})"


class Clauses(list):
    """A ``pre_filter`` of raw DSL: the queries that must all hold (``dict`` or ``QueryDSL``)."""


def normalize(pre_filter):
    """None, a portable filter as ``records.normalize_filter`` makes it, or ``Clauses``."""
    if pre_filter is None:
        return None
    if isinstance(pre_filter, (list, tuple)):
        if not pre_filter or not all(_is_query(clause) for clause in pre_filter):
            raise InvalidParameterError(
                f"pre_filter={pre_filter!r}: a list must hold queries (dicts with one key naming "
                "a query, such as {'term': {...}}, or QueryDSL objects)")
        return Clauses(pre_filter)
    if _is_query(pre_filter):
        return Clauses([pre_filter])
    return normalize_filter(pre_filter)


def _is_query(value):
    if isinstance(value, QueryDSL):
        return True
    if isinstance(value, dict) and len(value) == 1:
        ((name, body),) = value.items()
        return name in QUERY_NAMES and isinstance(body, dict)
    return False


class IndexFields:
    """What a filter's fields can be in one index.

    Parameters
    ----------
    root : str or None
        The object 1.x master's documents nest under (its doc type), None for flat documents.
    legacy : bool
        1.x's documents (metadata dynamically mapped under ``metadata``), or image-match 2's
        (metadata filtered through ``metadata_terms``).
    prefixes : iterable of str
        Doc type names a field may start with (1.x master spelled ``image.metadata.x``).
    mapping_of : callable
        The mapping of a dotted field, or None; the driver re-reads the index's mapping once
        before answering None (a 1.x index's dynamic mapping grows with its documents).
    """

    def __init__(self, root, legacy, prefixes, mapping_of):
        self.root = root
        self.legacy = legacy
        self.prefixes = tuple(sorted({p for p in (root, *prefixes) if p}, key=len, reverse=True))
        self.mapping_of = mapping_of

    def locate(self, field):
        """``("field", name)``: the field to query, or ``("metadata", key)``: a metadata key of
        image-match 2's layout. InvalidParameterError when the index has no such field."""
        if not isinstance(field, str) or not field:
            raise InvalidParameterError(f"pre_filter: {field!r} is not a field name")
        if field.startswith("_"):  # _id, _index...: the engine's own fields
            return "field", field
        relative = field
        for prefix in self.prefixes:
            if field.startswith(prefix + "."):
                relative = field[len(prefix) + 1:]
                break
        if self.legacy:
            return "field", self._legacy_field(field, relative)
        base = relative[:-len(".keyword")] if relative.endswith(".keyword") else relative
        if base.startswith("metadata.") and len(base) > len("metadata."):
            return "metadata", base[len("metadata."):]
        if base in ("path", "timestamp") or (base != "metadata" and self.mapping_of(base)):
            return "field", base
        raise InvalidParameterError(
            f"pre_filter names {field!r}, which this index does not have: filter on path, "
            "timestamp or metadata.<key> (or use the portable form, {'key': value})")

    def exact(self, field):
        """The field a term query compares whole values in: a text field's keyword subfield
        (1.x's dynamic mapping of strings), where a term would meet the text's tokens."""
        mapping = self.mapping_of(field) or {}
        if mapping.get("type") == "text" and "keyword" in (mapping.get("fields") or {}):
            return f"{field}.keyword"
        return field

    def _legacy_field(self, field, relative):
        actual = f"{self.root}.{relative}" if self.root else relative
        if self.mapping_of(actual) is not None:
            return actual
        if actual.endswith(".keyword"):
            base = actual[:-len(".keyword")]
            if (self.mapping_of(base) or {}).get("type") == "keyword":
                return base  # a keyword field of an explicit mapping has no .keyword subfield
        if relative.startswith("metadata."):
            return actual  # no document has this key yet: the engine rightly finds none
        raise InvalidParameterError(
            f"pre_filter names {field!r}, which this index of image-match 1.x documents does not "
            f"have (its documents {'nest under ' + repr(self.root) if self.root else 'are flat'})")


def fit_query(query, fields):
    """``query`` (a dict of raw DSL, or ``QueryDSL``) rewritten for the index ``fields`` describes.

    Raises InvalidParameterError for a query that cannot match anything there because of how it
    names its fields.
    """
    if isinstance(query, QueryDSL):
        return query.query
    ((name, body),) = query.items()
    if not isinstance(body, dict):
        raise InvalidParameterError(f"pre_filter: {query!r}: the body of a query is a dict")
    if name in _COMPOUND:
        fitted = dict(body)
        for key in _COMPOUND[name]:
            if key in body:
                inner = body[key]
                fitted[key] = ([_fit_clause(q, fields) for q in inner] if isinstance(inner, list)
                               else _fit_clause(inner, fields))
        return {name: fitted}
    if name in _NO_FIELD:
        return query
    if name == "exists":
        kind, target = fields.locate(body.get("field"))
        if kind == "metadata":
            raise _whole_values_only(name, body.get("field"))
        return {name: dict(body, field=target)}
    if name in _ON_A_FIELD:
        named = [key for key in body if key not in _OPTIONS]
        if len(named) != 1:
            raise InvalidParameterError(f"pre_filter: {query!r}: a {name} query names one field")
        (field,) = named
        kind, target = fields.locate(field)
        if kind == "field":
            if name in ("term", "terms"):
                target = fields.exact(target)
            return {name: {**{k: v for k, v in body.items() if k != field}, target: body[field]}}
        if name not in _WHOLE_VALUE:
            raise _whole_values_only(name, field)
        values = _compared_values(name, field, body[field])
        return {"terms": {TERMS_FIELD: [metadata_term(target, value) for value in values]}}
    if fields.legacy:
        return query  # as 1.x passed it, on 1.x's own documents
    raise InvalidParameterError(
        f"pre_filter: {name} queries are not checked against this index's fields (image-match 2 "
        f"keeps metadata as exact terms); use term, terms or match, or QueryDSL(...) to send it "
        f"as it is")


def _fit_clause(clause, fields):
    if not _is_query(clause):
        raise InvalidParameterError(f"pre_filter: {clause!r} is not a query")
    return fit_query(clause, fields)


def _whole_values_only(name, field):
    return InvalidParameterError(
        f"pre_filter: {name} on {field!r}: this index keeps metadata as exact values; filter "
        "it with term, terms or match, or the portable form {'key': value}")


def _compared_values(name, field, value):
    """The values a term, terms or match query on a metadata field compares with."""
    if name == "terms":
        values = value
    elif isinstance(value, dict):
        values = [value.get("value" if name == "term" else "query")]
    else:
        values = [value]
    if not isinstance(values, list) or not values or not all(
            isinstance(v, (str, int, float, bool)) for v in values):
        raise InvalidParameterError(
            f"pre_filter: {name} on {field!r}: compares with {value!r}; expected a string, "
            "number or boolean (a list of them for terms)")
    return values


# --- metadata terms: what image-match 2's indices keep of metadata, for filters -----------------

def metadata_term(key, value):
    """The indexed term for ``metadata[key] == value``: ``key=<JSON value>``.

    Numbers equal in Python are one term (``1`` and ``1.0`` both ``key=1``), booleans are not
    numbers (``key=true``), strings are quoted; long terms become a hash of themselves.
    """
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    term = f"{key}={json.dumps(value, ensure_ascii=False)}"
    if len(term) > _MAX_TERM_LENGTH:
        term = "#" + blake2b(term.encode("utf-8"), digest_size=16).hexdigest()
    return term


def metadata_terms(metadata):
    """Every term of ``metadata`` a portable filter can ask for: its scalars, nested objects' by
    dotted keys (``camera.make``). Values inside lists and keys holding a dot are left out, as
    ``records.filter_matches`` never matches them."""
    terms = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                if isinstance(key, str) and key and "." not in key:
                    walk(f"{prefix}.{key}" if prefix else key, inner)
        elif isinstance(value, (str, int, float)) and prefix:  # bool is an int
            if not (isinstance(value, float) and not math.isfinite(value)):
                terms.append(metadata_term(prefix, value))

    walk("", metadata or {})
    return terms


def field_mapping(mapping, dotted):
    """The mapping of a dotted field of an index's ``mapping``, or None; a part may be a
    multi-field (``path.keyword``)."""
    properties, field = mapping.get("properties") or {}, None
    for part in dotted.split("."):
        inner = properties.get(part)
        if inner is None and field is not None:
            inner = (field.get("fields") or {}).get(part)
        if inner is None:
            return None
        field, properties = inner, inner.get("properties") or {}
    return field
