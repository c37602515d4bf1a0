"""`python -m clinalign.reward` starts the reward service."""

from clinalign.reward.server import main

main()
