"""Deprecated alias of :mod:`xaibench.core.types` (the contracts moved into the core layer; the README
used to name this path, so it keeps working with a warning)."""

import warnings

from xaibench.core.types import *  # noqa: F403

warnings.warn("xaibench.types moved to xaibench.core.types; import it from there", DeprecationWarning, stacklevel=2)
