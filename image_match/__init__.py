"""image-match: find the copies of a picture among millions of stored images.

The pipeline, one module a step: ``loading`` (anything -> grey array), ``goldberg`` (grey array ->
signature), ``words`` (signature -> integer words), ``drivers`` (stores). Every error a user can
catch is in ``image_match.errors``.
"""

__version__ = "2.0.0.dev0"

from .errors import (  # noqa: E402
    CorruptImageError,
    DatabaseError,
    FetchError,
    ImageLoadError,
    ImageMatchError,
    InvalidParameterError,
    RecordNotFoundError,
    UnavailableError,
)
from .goldberg import (  # noqa: E402
    ImageSignature,
    is_featureless,
    normalized_distance,
    signature_variants,
)
from .loading import load_grey  # noqa: E402
from .words import make_words  # noqa: E402

__all__ = [
    "__version__",
    "CorruptImageError",
    "DatabaseError",
    "FetchError",
    "ImageLoadError",
    "ImageMatchError",
    "ImageSignature",
    "InvalidParameterError",
    "RecordNotFoundError",
    "UnavailableError",
    "is_featureless",
    "load_grey",
    "make_words",
    "normalized_distance",
    "signature_variants",
]
