"""``clinalign tokens``, ``clinalign audit`` and ``clinalign deid``: the platform team's
commands for bearer-token files, the preference store's audit chain, and de-identifying
text with the stores' own de-identifier. Registered on the main ``clinalign`` app.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from clinalign.cli.options import DataDir, common_settings
from clinalign.common.auth import Role

tokens_app = typer.Typer(no_args_is_help=True, help="Bearer-token files (roles and tokens).")


@tokens_app.command("new")
def tokens_new(
    path: Annotated[Path, typer.Argument(help="Tokens file to write (mode 0600).")],
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a fresh tokens file with one principal per role, for a Kubernetes Secret or
    CLINALIGN_TOKENS_FILE; prints the principals and roles, never the tokens."""
    from clinalign.common.auth import generate_tokens

    if path.exists() and not force:
        typer.echo(f"error: {path} exists; pass --force to replace its tokens", err=True)
        raise typer.Exit(1)
    for entry in generate_tokens(path):
        typer.echo(f"{entry.principal}\t{entry.role.value}")


@tokens_app.command("show")
def tokens_show(
    path: Annotated[Path, typer.Argument(help="Tokens file.")],
    role: Annotated[Role | None, typer.Option(help="Print the first token of this role.")] = None,
    principal: Annotated[
        str | None, typer.Option(help="Print this principal's token, e.g. svc-monitor.")
    ] = None,
) -> None:
    """Print one token (for `kubectl create secret ... --from-literal`): a principal's, or
    the first of a role's."""
    from clinalign.common.auth import load_tokens, token_for_role

    if (role is None) == (principal is None):
        typer.echo("error: give exactly one of --role and --principal", err=True)
        raise typer.Exit(2)
    try:
        if principal is not None:
            found = [e.token for e in load_tokens(path) if e.principal == principal and e.token]
            if not found:
                raise LookupError(f"{path} holds no token of principal {principal!r}")
            typer.echo(found[0])
        else:
            assert role is not None
            typer.echo(token_for_role(path, role))
    except (FileNotFoundError, LookupError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


@tokens_app.command("verify-file")
def tokens_verify_file(
    path: Annotated[Path, typer.Argument(help="Tokens file.")],
    out: Annotated[Path, typer.Argument(help="Verification file to write.")],
) -> None:
    """Write the verification file servers read (CLINALIGN_TOKENS_FILE in a pod): each
    principal, its role and its token's SHA-256 digest, no token. Mount it in every pod;
    give each pod only its own token (CLINALIGN_SERVICE_TOKEN)."""
    import json

    from clinalign.common.auth import load_tokens, verification_entries

    try:
        entries = verification_entries(load_tokens(path))
    except (FileNotFoundError, ValueError) as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    out.write_text(json.dumps({"tokens": entries}, indent=2) + "\n")
    typer.echo(f"{out}: {len(entries)} principals, digests only")


tls_app = typer.Typer(no_args_is_help=True, help="Certificates for TLS between the services.")


@tls_app.command("new")
def tls_new(
    out: Annotated[Path, typer.Argument(help="Directory for ca.crt, tls.crt and tls.key.")],
    release: Annotated[
        str, typer.Option(help="The Helm release (or kustomize name prefix).")
    ] = "clinalign",
    namespace: Annotated[
        str, typer.Option(help="The namespace the services run in.")
    ] = "clinalign",
    cluster_domain: Annotated[
        str, typer.Option(help="The cluster's DNS domain.")
    ] = "cluster.local",
    extra_name: Annotated[
        list[str] | None, typer.Option(help="Another DNS name (an ingress host); repeatable.")
    ] = None,
) -> None:
    """Write a private CA and one certificate for every service name (server and client
    auth, for mutual TLS), for `kubectl create secret generic clinalign-tls --from-file=...`
    where cert-manager is not available."""
    from clinalign.common.certificates import issue, service_names

    names = service_names(release, namespace, cluster_domain) + list(extra_name or [])
    paths = issue(out, names)
    typer.echo(f"{out}: ca.crt, tls.crt and tls.key (mode 0600) for {len(names)} names")
    del paths


audit_app = typer.Typer(no_args_is_help=True, help="The preference store's audit log.")


@audit_app.command("verify")
def audit_verify(
    data_dir: DataDir = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            help="Preference-store database (default: CLINALIGN_PREFERENCE_DATABASE_URL"
            " or <data_dir>/preference.db)."
        ),
    ] = None,
    keys: Annotated[
        Path | None,
        typer.Option(
            help="Audit keys file (default: CLINALIGN_PREFERENCE_AUDIT_KEYS_FILE or "
            "<data_dir>/audit-keys.json)."
        ),
    ] = None,
    anchors: Annotated[
        Path | None,
        typer.Option(
            help="Signed checkpoints, JSON lines (default: CLINALIGN_PREFERENCE_AUDIT_ANCHOR_"
            "FILE or <data_dir>/audit-anchors.jsonl when it exists; a shipped log works too)."
        ),
    ] = None,
) -> None:
    """Verify the audit log: its keyed hash chain, and that it still holds every signed
    checkpoint of its head (exit status 1 if any entry was edited, deleted, reordered, the
    chain rewritten or cut off)."""
    from clinalign.common.db import Database, default_sqlite_url
    from clinalign.preference import audit
    from clinalign.preference.audit_keys import AuditKeyError, load_keyring, read_checkpoints
    from clinalign.preference.config import PreferenceSettings
    from clinalign.preference.models import Base

    common = common_settings(data_dir)
    settings = PreferenceSettings()
    url = database_url or settings.database_url or default_sqlite_url(common.data_dir, "preference")
    keys = keys or settings.audit_keys_file or common.data_dir / "audit-keys.json"
    default_anchors = settings.audit_anchor_file or common.data_dir / "audit-anchors.jsonl"
    anchors = anchors or (default_anchors if default_anchors.exists() else None)
    from sqlalchemy.exc import OperationalError, ProgrammingError

    try:
        keyring = load_keyring(keys) if keys.exists() else None
        checkpoints = list(read_checkpoints(anchors)) if anchors else []
    except (AuditKeyError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    db = Database(url, Base)
    try:
        with db.sessions() as session:
            result = audit.verify(session, keyring, checkpoints)
    except (OperationalError, ProgrammingError) as exc:
        typer.echo(
            f"{url}: no preference-store schema here ({type(exc).__name__}); start the "
            "preference service once to migrate it",
            err=True,
        )
        raise typer.Exit(2) from exc
    finally:
        db.dispose()
    if result.ok:
        held = f", {len(checkpoints)} checkpoints held" if checkpoints else ", no checkpoints"
        typer.echo(f"audit log intact: {result.entries} entries{held}")
        return
    typer.echo(f"audit log BROKEN at entry {result.first_bad_sequence}: {result.message}", err=True)
    raise typer.Exit(1)


@audit_app.command("new-keys")
def audit_new_keys(
    path: Annotated[Path, typer.Argument(help="Audit keys file to write (mode 0600).")],
) -> None:
    """Write an audit keys file with one fresh key, for a Secret (key audit-keys.json)."""
    from clinalign.preference.audit_keys import ensure_keyring

    if path.exists():
        typer.echo(
            f"error: {path} exists; rotate its keys with `clinalign audit rotate-key`", err=True
        )
        raise typer.Exit(1)
    keyring = ensure_keyring(path)
    typer.echo(f"{path}: key {keyring.current_id} (current)")


@audit_app.command("rotate-key")
def audit_rotate_key(
    path: Annotated[Path, typer.Argument(help="Audit keys file to add a key to.")],
) -> None:
    """Add a fresh key and make it current; the older keys stay, so the entries they
    signed still verify. Update the Secret and restart the preference service."""
    from clinalign.preference.audit_keys import AuditKeyError, rotate

    try:
        typer.echo(f"{path}: key {rotate(path)} is now current")
    except AuditKeyError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None


def deid(
    as_json: Annotated[bool, typer.Option("--json", help="Print spans and types as JSON.")] = False,
) -> None:
    """De-identify clinical text: text on stdin, redacted text on stdout (settings:
    CLINALIGN_DEID_*)."""
    from pydantic import ValidationError

    from clinalign.common.deid import DeidSettings
    from clinalign.common.deid.cli import deid_cli

    try:
        settings = DeidSettings()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        typer.echo(f"invalid CLINALIGN_DEID_* settings: {problems}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(deid_cli(sys.stdin.read(), as_json=as_json, settings=settings), nl=False)


STORE_NAMES = ("preference", "trainer", "monitor")


def migrate(
    data_dir: DataDir = None,
    store: Annotated[
        list[str] | None,
        typer.Option(
            "--store",
            help="Store to migrate: preference, trainer or monitor (repeat; default: all).",
        ),
    ] = None,
) -> None:
    """Upgrade the stores' schemas to this release (Alembic, under a lock; the services do
    the same at start). URLs: CLINALIGN_<STORE>_DATABASE_URL, else SQLite under the data
    directory. A store an earlier release created without Alembic is adopted at its
    baseline revision first; no row is rewritten or lost."""
    from clinalign.common.db import Database, default_sqlite_url
    from clinalign.common.migrations import current_revision, version_table

    chosen = store or list(STORE_NAMES)
    unknown = sorted(set(chosen) - set(STORE_NAMES))
    if unknown:
        typer.echo(
            f"error: --store {unknown[0]!r} is not one of {', '.join(STORE_NAMES)}", err=True
        )
        raise typer.Exit(2)
    common = common_settings(data_dir)
    for name in STORE_NAMES:
        if name not in chosen:
            continue
        url, base, migrations, baseline_table = _store(name)
        db = Database(
            url or default_sqlite_url(common.data_dir, name),
            base,
            migrations,
            baseline_table=baseline_table,
        )
        try:
            before = current_revision(db.engine, version_table(name))
            db.create_schema()
            after = current_revision(db.engine, version_table(name))
        finally:
            db.dispose()
        typer.echo(f"{name}: {before or 'none'} -> {after}")


def _store(name: str) -> tuple[str | None, type, Path, str]:
    """A store's URL setting, tables, migrations and the table that marks its baseline."""
    if name == "preference":
        from clinalign.preference.config import PreferenceSettings
        from clinalign.preference.models import Base as PreferenceBase
        from clinalign.preference.server import MIGRATIONS as PREFERENCE

        return PreferenceSettings().database_url, PreferenceBase, PREFERENCE, ""
    if name == "trainer":
        from clinalign.trainer.config import TrainerSettings
        from clinalign.trainer.registry.versions import Base as TrainerBase
        from clinalign.trainer.server import MIGRATIONS as TRAINER

        return TrainerSettings().database_url, TrainerBase, TRAINER, "model_versions"
    from clinalign.monitor.config import MonitorSettings
    from clinalign.monitor.server import MIGRATIONS as MONITOR
    from clinalign.monitor.store import Base as MonitorBase

    return MonitorSettings().database_url, MonitorBase, MONITOR, "outputs"
