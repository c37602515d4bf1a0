"""Client helpers for the CLI, the demo and tests: a channel to a service, authenticated
with the local token of a role."""

from __future__ import annotations

import grpc.aio

from clinalign.common.auth import Role, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings


def channel_for(service: str, role: Role, common: CommonSettings | None = None) -> grpc.aio.Channel:
    common = common or CommonSettings()
    token = token_for_role(common.resolved_tokens_file, role)
    return open_channel(common.target(service), common, token)
