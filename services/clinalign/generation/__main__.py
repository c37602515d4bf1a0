"""`python -m clinalign.generation` starts the generation service."""

from clinalign.generation.server import main

main()
