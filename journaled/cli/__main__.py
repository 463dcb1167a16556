"""``python -m journaled.cli``: the same command line as the ``journaled`` script."""

from . import main

main()
