"""Which code computes signatures: the compiled kernel, or the numpy reference.

1.x signatures (``variant="1.x"``, every default) are computed by a small C extension,
``image_match._signature_kernel``, which ``pip install`` builds where a C compiler is there. The
numpy code of ``goldberg`` and ``loading`` stays the definition and the fallback: the kernel repeats
its floating-point operations in the same order and gives the same signatures bit for bit
(``tests/test_kernel.py``: the dev corpus, generated arrays). It is faster by what numpy costs per
call on arrays this small, and it makes no float64 copy of the image: it reads the decoded 8-bit
pixels (a PIL image without a copy, through its Arrow export) and makes each grey level as it
needs it. The "paper" variant, and grey arrays of other dtypes, are signed by numpy.

Which one runs: ``in_use()``, ``describe()``, or the second line of ``image-match --version``.
``IMAGE_MATCH_SIGNATURE_KERNEL=numpy`` in the environment, or ``use(False)`` in a process, makes
every signature come from the numpy reference.
"""

import numpy as np

from . import settings
from .loading import DRAFT_GREY_TABLE, GREY_TABLES, YCBCR_GREY_TABLES

try:
    from . import _signature_kernel as _compiled
except ImportError:  # not built: no C compiler at install time, or its build failed
    _compiled = None

# The kernel's numbers for the grey rules of loading.GreySource, by the grey array's dtype for "grey".
_GREY_U8, _GREY_F32, _GREY_F64, _DRAFT8, _TABLES3 = range(5)
_GREY_RULES = {np.dtype(np.uint8): _GREY_U8, np.dtype(np.float32): _GREY_F32,
               np.dtype(np.float64): _GREY_F64}

_forced = None


def available():
    """Whether the compiled kernel was built and imports."""
    return _compiled is not None


def use(enabled=None):
    """Use the compiled kernel (True), the numpy reference (False), or what the environment says
    (None, the default: the kernel unless ``IMAGE_MATCH_SIGNATURE_KERNEL=numpy``), in this
    process. Returns the previous choice, to restore it."""
    global _forced
    previous, _forced = _forced, enabled
    return previous


def in_use():
    """Whether 1.x signatures are computed by the compiled kernel now."""
    if _compiled is None or _forced is False:
        return False
    return _forced is True or settings.get("SIGNATURE_KERNEL") == "auto"


def describe():
    """One line saying which code computes signatures, and why."""
    if in_use():
        return "compiled kernel (image_match._signature_kernel)"
    if _compiled is None:
        return ("numpy reference (the compiled kernel is not built: no C compiler at install, "
                "or its build failed)")
    if _forced is False:
        return "numpy reference (image_match.kernel.use(False))"
    return "numpy reference (IMAGE_MATCH_SIGNATURE_KERNEL=numpy)"


def signature(source, original_shape, n, crop_percentiles, P, diagonal_neighbors,
              identical_tolerance, n_levels, fix_ratio, levels):
    """The 1.x signature of a ``loading.GreySource`` by the compiled kernel, or None where the
    kernel does not take the input (a grey dtype it does not read, a value that is not finite,
    parameters out of its range): the caller then signs it with the numpy reference.

    Parameters are those of ``goldberg.signature_from_grey``; ``levels``: the ``n_levels + 1``
    percentiles quantization splits at (``goldberg._percentile_levels``), as float64.
    """
    if n < 2 or n_levels < 1 or (P is not None and P < 1):
        return None
    if source.rule == "rgb8":
        rule, table = _TABLES3, GREY_TABLES
    elif source.rule == "ycc8":
        rule, table = _TABLES3, YCBCR_GREY_TABLES
    elif source.rule == "draft8":
        rule, table = _DRAFT8, DRAFT_GREY_TABLE
    else:
        rule, table = _GREY_RULES.get(source.pixels.dtype), None
        if rule is None:
            return None
    out = np.empty(n * n * (8 if diagonal_neighbors else 4), dtype=np.int8)
    lower, upper = (0.0, 100.0) if crop_percentiles is None else crop_percentiles
    arguments = (rule, table, int(original_shape[0]), int(original_shape[1]), n,
                 crop_percentiles is not None, float(lower), float(upper), bool(fix_ratio),
                 int(P or 0), bool(diagonal_neighbors), float(identical_tolerance), levels, out)
    if not isinstance(source.pixels, np.ndarray):
        exported = _arrow_export(source.pixels)
        if exported is not None and _compiled.signature(exported, *arguments):
            return out
    return out if _compiled.signature(source.array(), *arguments) else None


def _arrow_export(image):
    """A PIL image's pixels without a copy, as the kernel reads them, or None (a Pillow without
    Arrow export, or an image stored in several blocks of memory)."""
    try:
        schema, array = image.__arrow_c_array__()
    except (AttributeError, ValueError, TypeError):
        return None
    return schema, array, image.height, image.width
