"""image-match 1.x's import path for the Elasticsearch store: ``from image_match.elasticsearch_driver
import SignatureES`` keeps working. The driver lives in ``image_match.drivers.elasticsearch``; the
names 1.x's module offered (``SignatureES``, and the ``SignatureDatabaseBase`` and
``normalized_distance`` it imported) are re-exported here.
"""

from .drivers.elasticsearch import SignatureES, open_search_engine
from .signature_database_base import SignatureDatabaseBase, normalized_distance

__all__ = ["SignatureES", "SignatureDatabaseBase", "normalized_distance", "open_search_engine"]
