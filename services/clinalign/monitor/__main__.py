"""`python -m clinalign.monitor` starts the monitor service."""

from clinalign.monitor.server import main

main()
