"""``python -m netpolicy``: the same as the ``netpolicy`` console script."""

from netpolicy.cli import main

main()
