"""Which loaded version serves a request: the active version, an optional canary share,
and versions loaded on demand for candidate sampling.

Switching is atomic from a request's point of view: a request picks its backend once and
keeps it, and a replaced backend is closed only after its in-flight requests finish, so an
activation never drops one.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from clinalign.common.errors import InvalidArgument
from clinalign.generation.backend import Backend, ModelInfo

log = logging.getLogger("clinalign.generation.router")

MAX_CANARY_FRACTION = 0.5
EXTRA_VERSIONS = 2  # versions kept loaded for GenerateCandidates beside the served ones

Load = Callable[[str], Awaitable[Backend]]  # registry version -> started backend


@dataclass(frozen=True)
class Served:
    info: ModelInfo
    traffic_fraction: float


class Router:
    def __init__(self, load: Load, rng: random.Random | None = None) -> None:
        self._load = load
        self._rng = rng or random.Random()
        self._primary: Backend | None = None
        self._canary: Backend | None = None
        self._canary_fraction = 0.0
        self._extras: OrderedDict[str, Backend] = OrderedDict()
        self._switch = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()

    def serve(self, backend: Backend) -> None:
        """Sets the initial version (already started)."""
        self._primary = backend

    @property
    def ready(self) -> bool:
        return self._primary is not None

    def pick(self) -> Backend:
        """The backend for one production request."""
        if self._primary is None:
            raise RuntimeError("no model is being served yet")
        if self._canary is not None and self._rng.random() < self._canary_fraction:
            return self._canary
        return self._primary

    def served(self) -> list[Served]:
        if self._primary is None:
            return []
        if self._canary is None:
            return [Served(self._primary.info, 1.0)]
        return [
            Served(self._primary.info, 1.0 - self._canary_fraction),
            Served(self._canary.info, self._canary_fraction),
        ]

    def loaded(self) -> dict[str, Backend]:
        live = [b for b in (self._primary, self._canary) if b is not None]
        return {b.info.version: b for b in [*live, *self._extras.values()]}

    async def backend(self, version: str) -> Backend:
        """A loaded backend for version, loading it (and evicting the least recently used
        extra) when it is not loaded."""
        async with self._switch:
            found = self.loaded().get(version)
            if found is not None:
                if version in self._extras:
                    self._extras.move_to_end(version)
                return found
            backend = await self._load(version)
            self._extras[version] = backend
            while len(self._extras) > EXTRA_VERSIONS:
                _, old = self._extras.popitem(last=False)
                self._retire(old)
            return backend

    async def activate(self, version: str, canary: str = "", fraction: float = 0.0) -> list[Served]:
        validate_activation(version, canary, fraction)
        async with self._switch:
            loaded = self.loaded()
            fresh: list[Backend] = []
            try:
                primary = loaded.get(version)
                if primary is None:
                    primary = await self._load(version)
                    fresh.append(primary)
                canary_backend = None
                if canary:
                    canary_backend = loaded.get(canary)
                    if canary_backend is None:
                        canary_backend = await self._load(canary)
                        fresh.append(canary_backend)
            except BaseException:
                for backend in fresh:  # nothing half-switched: the old routing stays
                    self._retire(backend)
                raise
            keep = {version, canary}
            before = loaded
            self._primary, self._canary = primary, canary_backend
            self._canary_fraction = fraction if canary else 0.0
            for name in keep:
                self._extras.pop(name, None)
            for name, backend in before.items():
                if name not in keep and name not in self._extras:
                    self._retire(backend)
            log.info(
                "model activated",
                extra={"fields": {"version": version, "canary": canary, "fraction": fraction}},
            )
            return self.served()

    def _retire(self, backend: Backend) -> None:
        task = asyncio.create_task(backend.close(), name=f"retire-{backend.info.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for backend in self.loaded().values():
            self._retire(backend)
        self._primary, self._canary = None, None
        self._extras.clear()
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def validate_activation(version: str, canary: str, fraction: float) -> None:
    if not version:
        raise InvalidArgument("version", "is required: the registry version to serve")
    if canary == version:
        raise InvalidArgument("canary_version", "must differ from version")
    if not 0.0 <= fraction <= MAX_CANARY_FRACTION:
        raise InvalidArgument(
            "canary_fraction", f"must be in [0, {MAX_CANARY_FRACTION}], got {fraction:g}"
        )
    if canary and fraction == 0.0:
        raise InvalidArgument("canary_fraction", "must be above 0 when canary_version is set")
    if fraction and not canary:
        raise InvalidArgument("canary_version", "is required when canary_fraction is set")
