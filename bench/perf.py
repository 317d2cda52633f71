"""Deprecated alias of :mod:`xaibench.apps.bench` (``make bench``); ``python -m xaibench.perf`` still runs it."""

import warnings

from xaibench.apps.bench import main

warnings.warn("xaibench.perf moved to xaibench.apps.bench", DeprecationWarning, stacklevel=2)

if __name__ == "__main__":
    main()
