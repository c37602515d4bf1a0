"""``python -m clinalign.cli``: the ``clinalign`` command."""

from clinalign.cli import main

main()
