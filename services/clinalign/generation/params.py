"""Sampling parameters as a request asks for them (``SamplingRequest``), validated
(``Sampling``, the domain type), and their checks.

Each check names the protobuf field it guards, so callers see e.g.
``sampling.top_p: must be in (0, 1], got 1.5``.
"""

from __future__ import annotations

from dataclasses import dataclass

from clinalign.common.errors import InvalidArgument

MAX_STOP_SEQUENCES = 8
MAX_STOP_CHARS = 64


@dataclass(frozen=True)
class Sampling:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class SamplingRequest:
    """Sampling as a request asks for it: None where it leaves a value to the default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None

    def validate(self, *, default_max_new_tokens: int, max_new_tokens_limit: int) -> Sampling:
        return validate_sampling(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            stop=list(self.stop),
            seed=self.seed,
            default_max_new_tokens=default_max_new_tokens,
            max_new_tokens_limit=max_new_tokens_limit,
        )


def validate_sampling(
    *,
    temperature: float | None,
    top_p: float | None,
    top_k: int | None,
    max_new_tokens: int | None,
    stop: list[str],
    seed: int | None,
    default_max_new_tokens: int,
    max_new_tokens_limit: int,
    prefix: str = "sampling",
) -> Sampling:
    if temperature is not None and not 0.0 <= temperature <= 2.0:
        raise InvalidArgument(f"{prefix}.temperature", f"must be in [0, 2], got {temperature:g}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise InvalidArgument(f"{prefix}.top_p", f"must be in (0, 1], got {top_p:g}")
    if top_k is not None and not 0 <= top_k <= 1000:
        raise InvalidArgument(f"{prefix}.top_k", f"must be in [0, 1000], got {top_k}")
    if max_new_tokens is not None and not 1 <= max_new_tokens <= max_new_tokens_limit:
        raise InvalidArgument(
            f"{prefix}.max_new_tokens",
            f"must be in [1, {max_new_tokens_limit}], got {max_new_tokens}",
        )
    if len(stop) > MAX_STOP_SEQUENCES:
        raise InvalidArgument(f"{prefix}.stop", f"at most {MAX_STOP_SEQUENCES} sequences")
    for i, s in enumerate(stop):
        if not 1 <= len(s) <= MAX_STOP_CHARS:
            raise InvalidArgument(
                f"{prefix}.stop[{i}]", f"must be 1 to {MAX_STOP_CHARS} characters"
            )
    if seed is not None and seed < 0:
        raise InvalidArgument(f"{prefix}.seed", f"must not be negative, got {seed}")
    return Sampling(
        temperature=1.0 if temperature is None else temperature,
        top_p=1.0 if top_p is None else top_p,
        top_k=0 if top_k is None else top_k,
        max_new_tokens=default_max_new_tokens if max_new_tokens is None else max_new_tokens,
        stop=tuple(stop),
        seed=seed,
    )
