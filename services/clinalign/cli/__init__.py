"""The ``clinalign`` command: ``main`` is its entry point, ``app`` the typer application.

One module per command group (``jobs``, ``models``, ``train``, ``monitor``, ``generate``,
``admin``), ``main`` for the top-level commands, ``stack`` for the local supervisor that
``clinalign up`` and the demo run the services under. The commands reach the services only
through their gRPC contracts, with ``clinalign.common.channels``.
"""

from clinalign.cli.main import app, main

__all__ = ["app", "main"]
