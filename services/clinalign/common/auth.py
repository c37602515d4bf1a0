"""Bearer-token authentication and per-RPC role checks.

A token maps to a :class:`Principal` with exactly one :class:`Role`. Tokens live in a JSON
file (``clinalign up`` writes one, readable only by its owner; in Kubernetes it comes from a
Secret). The server keeps only SHA-256 digests and compares them in constant time.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from clinalign.common.errors import PermissionDenied, Unauthenticated


class Role(enum.StrEnum):
    EHR_CLIENT = "ehr-client"
    CLINICIAN = "clinician"
    ML_ENGINEER = "ml-engineer"
    SERVICE = "service"
    ADMIN = "admin"


ALL_ROLES: frozenset[Role] = frozenset(Role)


def roles(*names: Role) -> frozenset[Role]:
    """The roles an RPC admits; admin is always admitted."""
    return frozenset(names) | {Role.ADMIN}


# RPCs every caller reaches without a token: probes and tooling must work unauthenticated.
PUBLIC_METHODS: frozenset[str] = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)


@dataclass(frozen=True)
class Principal:
    """Who is calling: a pseudonymous name and one role."""

    name: str
    role: Role


@dataclass(frozen=True)
class TokenEntry:
    principal: str
    role: Role
    token: str


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuthenticator:
    """Resolves bearer tokens to principals and checks them against a role table."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self._by_digest: dict[bytes, Principal] = {
            _digest(e.token): Principal(e.principal, e.role) for e in entries
        }

    @classmethod
    def from_file(cls, path: Path) -> TokenAuthenticator:
        return cls(load_tokens(path))

    def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated("missing `authorization: Bearer <token>` metadata")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("authorization metadata must be `Bearer <token>`")
        wanted = _digest(token.strip())
        # Constant-time comparison against every known digest: no early exit on a match.
        found: Principal | None = None
        for digest, principal in self._by_digest.items():
            if hmac.compare_digest(digest, wanted):
                found = principal
        if found is None:
            raise Unauthenticated("unknown bearer token")
        return found

    @staticmethod
    def authorize(principal: Principal, method: str, table: Mapping[str, frozenset[Role]]) -> None:
        allowed = table.get(method)
        if allowed is None:
            # Deny by default: an RPC missing from the table is a bug, not an open door.
            raise PermissionDenied(f"{method} is not open to any role")
        if principal.role not in allowed:
            names = ", ".join(sorted(r.value for r in allowed))
            raise PermissionDenied(
                f"role {principal.role.value!r} may not call {method}; allowed: {names}"
            )


def load_tokens(path: Path) -> list[TokenEntry]:
    """Reads a tokens file: ``{"tokens": [{"principal", "role", "token"}, ...]}``."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"tokens file {path} not found; run `clinalign up` or set CLINALIGN_TOKENS_FILE"
        ) from exc
    entries = []
    for i, item in enumerate(raw.get("tokens", [])):
        try:
            entries.append(TokenEntry(str(item["principal"]), Role(item["role"]), item["token"]))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: tokens[{i}] is invalid: {exc}") from exc
    return entries


def generate_tokens(path: Path) -> list[TokenEntry]:
    """Writes a fresh tokens file with one local principal per role, mode 0600."""
    entries = [TokenEntry(f"local-{role.value}", role, secrets.token_urlsafe(32)) for role in Role]
    _write_tokens(path, entries)
    return entries


def ensure_principals(path: Path, principals: Mapping[str, Role]) -> dict[str, str]:
    """Adds a token for each named principal the tokens file lacks (services read the file
    when they start) and returns every named principal's token."""
    entries = load_tokens(path)
    known = {e.principal: e for e in entries}
    for name, role in principals.items():
        if name in known and known[name].role != role:
            raise ValueError(f"{path}: principal {name!r} exists with role {known[name].role}")
        if name not in known:
            known[name] = TokenEntry(name, role, secrets.token_urlsafe(32))
            entries.append(known[name])
    _write_tokens(path, entries)
    return {name: known[name].token for name in principals}


def _write_tokens(path: Path, entries: list[TokenEntry]) -> None:
    payload = {
        "tokens": [
            {"principal": e.principal, "role": e.role.value, "token": e.token} for e in entries
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)


def token_for_role(path: Path, role: Role) -> str:
    """The first token of a role in a tokens file, for local clients and service calls."""
    for entry in load_tokens(path):
        if entry.role == role:
            return entry.token
    raise LookupError(f"{path} holds no token with role {role.value!r}")
