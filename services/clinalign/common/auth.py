"""Bearer-token authentication and per-RPC role checks.

Two kinds of bearer credential resolve to a :class:`Principal`:

- people present an OIDC/OAuth2 access token, a JWT from the configured issuer
  (:mod:`clinalign.common.oidc`); its subject is the principal and its roles come from a
  configured claim;
- services, and everyone in the embedded default, present a static token from a JSON file
  (``clinalign up`` writes one, readable only by its owner; in Kubernetes each pod mounts
  only its own). The server keeps only SHA-256 digests and compares them in constant time.

A JWT is told from a static token by its shape (three dot-separated parts; static tokens
are URL-safe base64 without dots).
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from clinalign.common.errors import PermissionDenied, Unauthenticated


class Role(enum.StrEnum):
    EHR_CLIENT = "ehr-client"
    CLINICIAN = "clinician"
    # A clinician who also reviews others' flags and reads the labelling and safety
    # dashboards; an issuer grants it beside `clinician`.
    CLINICAL_LEAD = "clinical-lead"
    ML_ENGINEER = "ml-engineer"
    SERVICE = "service"
    ADMIN = "admin"


# Roles whose holders may name someone else as the annotator of a label (importing
# labels, the monitor filing a flag's correction for its clinician). People act only as
# themselves.
ACTS_FOR_OTHERS: frozenset[Role] = frozenset({Role.SERVICE, Role.ADMIN})


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
    """Who is calling: a pseudonymous name (a static token's principal, or the subject of
    an OIDC token), its role and any further roles, and the issuer that vouched for it
    (empty for a static token)."""

    name: str
    role: Role
    also: frozenset[Role] = frozenset()
    issuer: str = ""
    via: str = ""  # the front door acting for this person (common.delegation), if any

    @property
    def shown(self) -> str:
        """The name audit entries and logs record: the person, and the front door."""
        return f"{self.name} via {self.via}" if self.via else self.name

    @property
    def roles(self) -> frozenset[Role]:
        return self.also | {self.role}

    @property
    def acts_for_others(self) -> bool:
        return bool(self.roles & ACTS_FOR_OTHERS)


# Which of several roles names a principal in messages and audit entries.
_PRECEDENCE = (
    Role.ADMIN,
    Role.ML_ENGINEER,
    Role.SERVICE,
    Role.CLINICAL_LEAD,
    Role.CLINICIAN,
    Role.EHR_CLIENT,
)


def principal_with_roles(name: str, held: frozenset[Role], issuer: str = "") -> Principal:
    """A principal holding every role in ``held`` (at least one)."""
    if not held:
        raise ValueError("a principal needs at least one role")
    primary = next(r for r in _PRECEDENCE if r in held)
    return Principal(name, primary, frozenset(held - {primary}), issuer)


# The platform's own callers, each with its own credential (principal ``svc-<name>``):
# the five services and the training jobs the trainer runs.
SERVICE_NAMES: tuple[str, ...] = (
    "generation",
    "reward",
    "preference",
    "trainer",
    "monitor",
    "trainer-job",
    # the front doors (common.delegation): they act for the people they verified
    "console",
    "cds-hooks",
)


_ANNOTATOR_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{2,63}$")


def annotator_id(principal: str) -> str:
    """The preference store's annotator id of a person's principal, the one every service
    registers them under (the console when they first label, the monitor when it files
    their confirmed flag), so one clinician keeps one annotator: the principal's name when
    that is a valid pseudonymous id (3-64 letters, digits, '.', '_' or '-'; never an
    e-mail), else a deterministic pseudonym derived from it."""
    if _ANNOTATOR_ID.match(principal) and "@" not in principal:
        return principal
    return "clin-" + hashlib.sha256(principal.encode()).hexdigest()[:16]


def service_principal(service: str) -> str:
    """The principal name of a ClinAlign service's own credential."""
    return f"svc-{service}"


@dataclass(frozen=True)
class TokenEntry:
    """A principal's credential: the token itself (a file handed to callers), or only its
    SHA-256 digest in hex (a verification file a server reads: no secret in it)."""

    principal: str
    role: Role
    token: str = ""
    sha256: str = ""

    def digest(self) -> bytes:
        return bytes.fromhex(self.sha256) if self.sha256 else _digest(self.token)


class Authenticator(Protocol):
    """Resolves an ``authorization`` header to a principal, or raises Unauthenticated."""

    def authenticate(self, authorization: str | None) -> Principal: ...


def bearer(authorization: str | None) -> str:
    """The token of a ``Bearer`` authorization header."""
    if not authorization:
        raise Unauthenticated("missing `authorization: Bearer <token>` metadata")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("authorization metadata must be `Bearer <token>`")
    return token.strip()


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


# Which of ClinAlign's own services (their ``svc-<name>`` credentials) may call an RPC that
# role ``service`` may call: "/pkg.Service/Method" -> service names. A service credential
# a pod holds reaches only the RPCs that service's code calls.
ServiceCallers = Mapping[str, frozenset[str]]
ANY_SERVICE: frozenset[str] = frozenset(SERVICE_NAMES)


def authorize(
    principal: Principal,
    method: str,
    table: Mapping[str, frozenset[Role]],
    callers: ServiceCallers | None = None,
) -> None:
    """Admits the call when any of the principal's roles is among the RPC's; a ClinAlign
    service's own credential only where ``callers`` names that service."""
    allowed = table.get(method)
    if allowed is None:
        # Deny by default: an RPC missing from the table is a bug, not an open door.
        raise PermissionDenied(f"{method} is not open to any role")
    if not principal.roles & allowed:
        names = ", ".join(sorted(r.value for r in allowed))
        held = ", ".join(sorted(r.value for r in principal.roles))
        raise PermissionDenied(f"role {held!r} may not call {method}; allowed: {names}")
    service = own_service(principal)
    if service is not None and callers is not None and principal.roles & allowed == {Role.SERVICE}:
        admitted = callers.get(method, frozenset())
        if service not in admitted:
            names = ", ".join(sorted(admitted)) or "none"
            raise PermissionDenied(
                f"service {service!r} may not call {method}; services allowed: {names}"
            )


def own_service(principal: Principal) -> str | None:
    """The ClinAlign service whose own credential the principal is, if any."""
    if principal.role is not Role.SERVICE or not principal.name.startswith("svc-"):
        return None
    name = principal.name.removeprefix("svc-")
    return name if name in SERVICE_NAMES else None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenAuthenticator:
    """Resolves bearer tokens to principals and checks them against a role table."""

    def __init__(self, entries: Iterable[TokenEntry]) -> None:
        self._by_digest: dict[bytes, Principal] = {
            e.digest(): Principal(e.principal, e.role) for e in entries
        }

    @classmethod
    def from_file(cls, path: Path) -> TokenAuthenticator:
        return cls(load_tokens(path))

    def authenticate(self, authorization: str | None) -> Principal:
        wanted = _digest(bearer(authorization))
        # Constant-time comparison against every known digest: no early exit on a match.
        found: Principal | None = None
        for digest, principal in self._by_digest.items():
            if hmac.compare_digest(digest, wanted):
                found = principal
        if found is None:
            raise Unauthenticated("unknown bearer token")
        return found


class CombinedAuthenticator:
    """Static tokens for services and the embedded default; JWTs for people, verified by
    ``jwt_verifier`` when an issuer is configured and refused otherwise."""

    def __init__(self, tokens: TokenAuthenticator, jwt_verifier: Authenticator | None) -> None:
        self.tokens = tokens
        self.jwt_verifier = jwt_verifier

    def authenticate(self, authorization: str | None) -> Principal:
        token = bearer(authorization)
        if not looks_like_jwt(token):
            return self.tokens.authenticate(authorization)
        if self.jwt_verifier is None:
            raise Unauthenticated("JWTs are not accepted: no OIDC issuer is configured")
        return self.jwt_verifier.authenticate(authorization)


def load_tokens(path: Path) -> list[TokenEntry]:
    """Reads a tokens file: ``{"tokens": [{"principal", "role", "token"}, ...]}``, or a
    verification file whose entries carry ``sha256`` (hex) instead of ``token``."""
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"tokens file {path} not found; run `clinalign up` or set CLINALIGN_TOKENS_FILE"
        ) from exc
    entries = []
    for i, item in enumerate(raw.get("tokens", [])):
        try:
            digest = str(item.get("sha256", ""))
            if digest and len(bytes.fromhex(digest)) != 32:
                raise ValueError("sha256 must be 64 hex digits")
            token = "" if digest else str(item["token"])
            entries.append(TokenEntry(str(item["principal"]), Role(item["role"]), token, digest))
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{path}: tokens[{i}] is invalid: {exc}") from exc
    return entries


def generate_tokens(path: Path) -> list[TokenEntry]:
    """Writes a fresh tokens file, mode 0600: one local principal for each role (people,
    tools and integrations), and one credential for each ClinAlign service (``svc-<name>``)."""
    # local-service: integrations and tools acting with role service (importing labels),
    # not held by any ClinAlign service; the services' own are svc-<name>.
    entries = [TokenEntry(f"local-{role.value}", role, secrets.token_urlsafe(32)) for role in Role]
    entries += [
        TokenEntry(service_principal(name), Role.SERVICE, secrets.token_urlsafe(32))
        for name in SERVICE_NAMES
    ]
    _write_tokens(path, entries)
    return entries


def verification_entries(entries: Iterable[TokenEntry]) -> list[dict[str, str]]:
    """The entries of a verification file: principal, role and digest, no token."""
    return [
        {"principal": e.principal, "role": e.role.value, "sha256": e.digest().hex()}
        for e in entries
    ]


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
            {"principal": e.principal, "role": e.role.value, "token": e.token}
            if e.token
            else {"principal": e.principal, "role": e.role.value, "sha256": e.sha256}
            for e in entries
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
    os.replace(tmp, path)


def token_for_role(path: Path, role: Role) -> str:
    """The first token of a role in a tokens file, for local clients and tools."""
    for entry in load_tokens(path):
        if entry.role == role and entry.token:
            return entry.token
    raise LookupError(f"{path} holds no token with role {role.value!r}")


def token_for_service(path: Path, service: str) -> str:
    """A service's own token in a tokens file (``svc-<name>``); a file written before
    services had their own falls back to its first ``service`` token."""
    entries = load_tokens(path)
    for entry in entries:
        if entry.principal == service_principal(service) and entry.token:
            return entry.token
    return token_for_role(path, Role.SERVICE)
