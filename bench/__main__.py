"""``python -m xaibench`` is the ``xaibench`` command."""

from xaibench.cli import main

main()
