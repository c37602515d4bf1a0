"""`python -m clinalign.trainer` starts the trainer service."""

from clinalign.trainer.server import main

main()
