"""`python -m clinalign.preference` starts the preference service."""

from clinalign.preference.server import main

main()
