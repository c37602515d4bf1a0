"""`python -m clinalign.cdshooks` starts the CDS Hooks gateway."""

from clinalign.cdshooks.server import main

main()
