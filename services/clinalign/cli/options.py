"""What every command group shares: the data-directory and ``--json`` options, the settings
they resolve to, calling a service as the local role's principal, and printing results.

Exit status of a failed call: 1, with ``error: <CODE>: <details>`` on stderr (the details
name the field at fault).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings

if TYPE_CHECKING:
    from google.protobuf.message import Message

    from clinalign.common.channels import Clients

T = TypeVar("T")

DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir", help="Data directory (default: $CLINALIGN_DATA_DIR or ./.clinalign)."
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the response as protobuf JSON on one line.")
]


def common_settings(data_dir: Path | None) -> CommonSettings:
    """The shared settings, with ``--data-dir`` over ``CLINALIGN_DATA_DIR``."""
    return CommonSettings() if data_dir is None else CommonSettings(data_dir=data_dir)


def fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def rpc(
    data_dir: Path | None,
    call: Callable[[Clients], Awaitable[T]],
    role: Role = Role.ML_ENGINEER,
) -> T:
    """Runs ``call`` with the services' clients, authenticated as the local ``role`` (the
    tokens file's first principal of that role); a gRPC error becomes exit status 1."""
    import grpc.aio

    from clinalign.common.channels import Clients

    clients = Clients(common_settings(data_dir), role=role)
    try:
        clients.token()
    except (FileNotFoundError, LookupError) as err:
        fail(str(err))

    async def run() -> T:
        async with clients:
            return await call(clients)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as err:
        fail(f"{err.code().name}: {err.details()}")


def echo_json(message: Message) -> None:
    from google.protobuf.json_format import MessageToDict

    typer.echo(json.dumps(MessageToDict(message, preserving_proto_field_name=True)))


def when(ts: Any) -> str:
    """A protobuf Timestamp in local time; ``-`` when unset."""
    if not ts.seconds:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(title: str, columns: list[str], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    out = Table(title=title)
    for column in columns:
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(*row)
    Console().print(out)
