"""The services, called as the EHR user.

Every call carries the gateway's own credential (``svc-cds-hooks``, through ``Clients``)
and, in ``x-clinalign-on-behalf-of``, an assertion the gateway signs for the EHR's
``userId`` (``common.assertions``), which the services verify with the gateway's public key
(``delegation_keys_file``). The assertion carries only the role the call needs:

- ``ehr-client`` to draft (``Generate`` admits ehr-client; a front door may not assert
  ``service``), so the draft is requested by the EHR user through the gateway;
- ``clinician`` to flag and to record an outcome (``FlagOutput`` and ``RecordOutcome``
  admit clinicians, not ehr-client): an EHR user who accepts or overrides a card is treated
  as a clinician, whose flag enters the same review queue as the console's.

The subject is the EHR's ``userId`` as sent (``Practitioner/123``); it is not yet
qualified by the EHR it came from.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

import grpc
import grpc.aio

from clinalign.cdshooks.errors import BadRequest, GatewayError, NotFound, TooMany, Upstream
from clinalign.cdshooks.hooks import HookCall
from clinalign.common.assertions import AssertionSigner
from clinalign.common.auth import Role
from clinalign.common.channels import Clients
from clinalign.common.delegation import ON_BEHALF_OF
from clinalign.common.protos import timestamp
from clinalign.common.quotas import PUSHBACK_TRAILER
from clinalign.generation.v1 import generation_pb2 as gpb
from clinalign.monitor.v1 import monitor_pb2 as mpb
from clinalign.trainer.v1 import trainer_pb2 as tpb

# An output reaches the monitor shortly after its draft is returned (generation reports it
# in batches): feedback that arrives first waits this long before it is refused with 503.
OUTPUT_WAITS_S = (0.2, 0.5, 1.0, 2.0)
T = TypeVar("T")
OUTCOMES = {"accepted": mpb.OUTCOME_ACCEPTED, "overridden": mpb.OUTCOME_OVERRIDDEN}


def http_error(err: grpc.aio.AioRpcError, field: str) -> GatewayError:
    """A service's refusal as the gateway's: the caller's mistakes as 4xx, naming ``field``;
    everything else (the gateway's own credential refused included) as 503."""
    code, details = err.code(), err.details() or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return BadRequest(field, details)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(field, details)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return TooMany("", "too many requests; retry shortly", _pushback_s(err))
    return Upstream("", f"a ClinAlign service failed ({code.name}); retry shortly")


def _pushback_s(err: grpc.aio.AioRpcError) -> float:
    """The wait a service's refusal suggests (its ``grpc-retry-pushback-ms`` trailer, as
    ``common.quotas`` sets it); one second when it gives none."""
    for key, value in err.trailing_metadata() or ():
        if key == PUSHBACK_TRAILER:
            try:
                return max(int(value), 0) / 1000
            except (TypeError, ValueError):
                break
    return 1.0


class Backend:
    def __init__(
        self,
        clients: Clients,
        signer: AssertionSigner,
        timeout_s: float,
        *,
        temperature: float | None = None,
        message_only: bool = False,
    ) -> None:
        self.clients = clients
        self.signer = signer
        self.timeout_s = timeout_s
        self.temperature = temperature
        self.message_only = message_only

    def _as(self, user_id: str, role: Role) -> tuple[tuple[str, str], ...]:
        return ((ON_BEHALF_OF, self.signer.assertion(user_id, (role.value,))),)

    async def draft(self, call: HookCall, max_new_tokens: int) -> gpb.Completion:
        request = gpb.GenerateRequest(
            input=self._input(call),
            sampling=gpb.SamplingParams(
                max_new_tokens=max_new_tokens, temperature=self.temperature
            ),
        )
        try:
            reply = await self.clients.generation.Generate(
                request, metadata=self._as(call.user_id, Role.EHR_CLIENT), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as err:
            raise http_error(err, "prefetch") from None
        return reply.completion

    def _input(self, call: HookCall) -> gpb.GenerationInput:
        """The record rendered by the service's template (with the patient's message, for a
        reply), or the message alone where ``message_only`` says so."""
        if call.question is not None and self.message_only:
            return gpb.GenerationInput(prompt=call.question)
        return gpb.GenerationInput(
            fhir=gpb.FhirContext(
                bundle_json=call.bundle_json,
                task=call.service.task,  # type: ignore[arg-type]
                question=call.question or "",
            )
        )

    async def flag(
        self,
        output_id: str,
        user_id: str,
        category: int,
        severity: int,
        comment: str,
        corrected_text: str = "",
    ) -> None:
        request = mpb.FlagOutputRequest(
            output_id=output_id,
            category=category,  # type: ignore[arg-type]
            severity=severity,  # type: ignore[arg-type]
            comment=comment,
            corrected_text=corrected_text,
        )
        await self._on_output(
            lambda: self.clients.monitor.FlagOutput(
                request, metadata=self._as(user_id, Role.CLINICIAN), timeout=self.timeout_s
            )
        )

    async def outcome(
        self, output_id: str, user_id: str, outcome: str, when: datetime, source: str
    ) -> bool:
        """Records the outcome in the monitor; True when the monitor had it already."""
        request = mpb.RecordOutcomeRequest(
            output_id=output_id,
            outcome=OUTCOMES[outcome],
            outcome_time=timestamp(when),
            source=source,
        )
        reply: mpb.RecordOutcomeResponse = await self._on_output(
            lambda: self.clients.monitor.RecordOutcome(
                request, metadata=self._as(user_id, Role.CLINICIAN), timeout=self.timeout_s
            )
        )
        return reply.replayed

    async def _on_output(self, call: Callable[[], Awaitable[T]]) -> T:
        """A monitor call about an output, retried while the output has not reached the
        monitor; a refusal as the gateway's error naming ``feedback``."""
        waits = iter(OUTPUT_WAITS_S)
        while True:
            try:
                return await call()
            except grpc.aio.AioRpcError as err:
                if err.code() != grpc.StatusCode.NOT_FOUND:
                    raise http_error(err, "feedback") from None
            wait = next(waits, None)
            if wait is None:
                raise Upstream("", "the card's output is not recorded yet; retry")
            await asyncio.sleep(wait)

    async def model_version(
        self, version: str, timeout_s: float | None = None
    ) -> tpb.GetModelVersionResponse:
        """The registry's entry of ``version`` with its gate decisions (the model card's
        facts), read with the gateway's own credential: no person is involved."""
        try:
            return await self.clients.trainer.GetModelVersion(
                tpb.GetModelVersionRequest(version=version), timeout=timeout_s or self.timeout_s
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFound("version", f"no model version {version!r} in the registry") from None
            raise http_error(err, "version") from None
