"""``python -m xaibench`` is the ``xaibench`` command."""

from xaibench.apps.cli import main

main()
