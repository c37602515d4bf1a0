"""`python -m clinalign.console` starts the clinician web console."""

from clinalign.console.server import main

main()
