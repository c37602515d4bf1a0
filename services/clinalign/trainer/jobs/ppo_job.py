"""The ``ppo`` job kind: checking its spec at submission, and running it in the worker.

Submission resolves what the run depends on into the job's ``inputs``: the policy to start
from (a model directory, a registered full-weight policy, or the served one), the reward
model version it scores against (named, or the served one) and that version's directory
(the critic starts from it), the prompts (a named prompt set, or the ``train`` split of a
preference snapshot), the hyperparameters and LoRA settings, and the KL anchor the run's
reference will be (``_kl_anchor``: the base's own anchor when the base is a PPO output, so
every round of the loop stays bounded in KL to the SFT policy, not to the round before;
else the base itself). A resumed job
(``spec.resume_job_id``) copies the inputs of the job it continues, so it trains exactly
what that one trained.

The run scores responses through ``RewardService.Score`` over gRPC (``RemoteScorer``), so
the reward model runs, batches and scales in its own service, and refuses to mix reward
models: every answer must come from the version the job was submitted with. A run under a
cost constraint with ``cost_source: model`` is costed in the same calls by the cost model
the service serves beside the reward model, pinned the same way (the served cost version
at submission, ``inputs["cost_model_version"]``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from sqlalchemy.orm import Session

from clinalign.common.artefacts import COST, MANIFEST_NAME, REWARD
from clinalign.common.channels import Clients
from clinalign.common.config import CommonSettings
from clinalign.common.errors import FailedPrecondition, InvalidArgument
from clinalign.trainer import prompt_sets
from clinalign.trainer.jobs import specs
from clinalign.trainer.methods.ppo.anchor import kl_anchor
from clinalign.trainer.methods.ppo.config import PPOHyperparameters
from clinalign.trainer.registry.versions import ModelVersionRow, Registry

if TYPE_CHECKING:  # scoring loads torch, which the trainer service loads only in jobs
    from clinalign.trainer.methods.ppo.scoring import ScoreFn

log = logging.getLogger("clinalign.trainer.jobs.ppo_job")
SCORE_CHUNK = 64  # pairs per Score request; chunks go out concurrently
SCORE_TIMEOUT_S = 120.0
SCORE_ATTEMPTS = 6  # RESOURCE_EXHAUSTED / UNAVAILABLE are retried with backoff
RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


# -- submission ---------------------------------------------------------------------------


def _reward_version(session: Session, named: str) -> tuple[str, str]:
    """(version, model directory) of the reward model PPO scores against."""
    if named:
        row = session.get(ModelVersionRow, named)
        if row is None or row.kind != REWARD:
            raise InvalidArgument(
                "spec.reward_model_version", f"{named!r} is not a registered reward version"
            )
    else:
        found = Registry(Path(".")).served(session, REWARD)
        if found is None:
            raise InvalidArgument(
                "spec.reward_model_version",
                "is required while no reward model is served: train and promote one, or "
                "name a registered reward version",
            )
        row = session.get(ModelVersionRow, found.version)
        assert row is not None
    if row.adapter_path or not (Path(row.artifact_uri) / "config.json").is_file():
        raise InvalidArgument(
            "spec.reward_model_version",
            f"{row.version} is not a full-weight reward model; PPO's critic starts from it",
        )
    return row.version, row.artifact_uri


def _cost_version(session: Session, hyperparameters: dict[str, Any]) -> str:
    """The served cost version a ``cost_source: model`` run is constrained by ("" for the
    other sources); refused while no cost model is served."""
    if hyperparameters.get("cost_source") != "model":
        return ""
    found = Registry(Path(".")).served(session, COST)
    if found is None:
        raise InvalidArgument(
            "spec.hyperparameters[cost_source]",
            "is model, but no cost model is served: train one with a cost_model job and "
            "promote it, or constrain by the clinical rules (cost_source=rules)",
        )
    return found.version


def inherited_budget(
    base_dir: Path, hyperparameters: dict[str, Any], given: dict[str, str]
) -> dict[str, Any]:
    """``hyperparameters`` with, for a run under the cost model's constraint that names no
    ``cost_budget``, the budget of the constrained run its base policy came from: a
    retraining round continues the served policy, and its cost stays within the budget
    the first round was given (SFT's expected cost in the demo), as its KL stays anchored
    to SFT (``_kl_anchor``). Unchanged otherwise."""
    if hyperparameters.get("cost_source") != "model" or "cost_budget" in given:
        return hyperparameters
    try:
        manifest = json.loads((base_dir / MANIFEST_NAME).read_text())
        earlier = manifest["config"]["hyperparameters"]
    except (OSError, ValueError, KeyError, TypeError):
        return hyperparameters
    if earlier.get("cost_source") != "model" or "cost_budget" not in earlier:
        return hyperparameters
    return {**hyperparameters, "cost_budget": float(earlier["cost_budget"])}


def _kl_anchor(session: Session, base_dir: str, parent: str) -> tuple[str, str]:
    """(version, model directory) of the run's KL anchor (``anchor.kl_anchor``): the
    registered version's directory when the anchor is registered, else the recorded path.
    Refuses an anchor that is no longer a model directory."""
    found = kl_anchor(Path(base_dir), parent)
    row = session.get(ModelVersionRow, found.version) if found.version else None
    path = Path(row.artifact_uri) if row is not None else found.path
    if not (path / "config.json").is_file():
        raise InvalidArgument(
            "spec.base_model",
            f"{parent or base_dir} was trained with the KL anchor "
            f"{found.version or found.path}, which is no longer a model directory at {path}; "
            "start from a policy whose anchor is still registered",
        )
    return found.version, str(path)


def check_ppo_spec(session: Session, spec: dict[str, Any]) -> dict[str, Any]:
    """Checks a ppo spec (protobuf JSON form); returns the job's inputs."""
    if spec.get("resume_job_id"):
        return specs.resume_inputs(session, spec, "ppo")
    prompt_set, snapshot_id = str(spec.get("prompt_set", "")), str(spec.get("snapshot_id", ""))
    if bool(prompt_set) == bool(snapshot_id):
        raise InvalidArgument(
            "spec.prompt_set",
            "name exactly one source of prompts: a prompt set "
            f"({', '.join(prompt_sets.BUILTIN)} or a .jsonl file) or a snapshot_id",
        )
    if prompt_set:
        prompt_sets.check(prompt_set)
    base_dir, parent = specs.resolve_base_model(session, str(spec.get("base_model", "")))
    reward_version, reward_dir = _reward_version(session, str(spec.get("reward_model_version", "")))
    anchor_version, anchor_dir = _kl_anchor(session, base_dir, parent)
    given = dict(spec.get("hyperparameters", {}))
    hyperparameters = inherited_budget(
        Path(base_dir),
        specs.parse_fields(given, int(spec.get("seed", 0)), PPOHyperparameters),
        given,
    )
    return {
        "base_model_dir": base_dir,
        "parent_version": parent,
        "kl_anchor_version": anchor_version,
        "kl_anchor_dir": anchor_dir,
        "reward_model_version": reward_version,
        "reward_model_dir": reward_dir,
        "cost_model_version": _cost_version(session, hyperparameters),
        "prompt_set": prompt_set,
        "hyperparameters": hyperparameters,
        "lora": specs.parse_lora(dict(spec.get("lora", {}))),
    }


# -- scoring over gRPC ----------------------------------------------------------------------


@dataclass(frozen=True)
class Scores:
    """What ``RewardService.Score`` answered for a list of pairs."""

    scores: list[float]
    version: str  # the reward version that scored them
    costs: list[float] | None = None  # with include_cost: the cost model's
    cost_version: str = ""


async def score_remote(
    common: CommonSettings, prompts: list[str], responses: list[str], include_cost: bool = False
) -> Scores:
    """The pairs' scores (and with ``include_cost`` their costs) from
    ``RewardService.Score``: the pairs go out in concurrent chunks (the service batches
    across them and other callers), and overload and restarts are retried with backoff.
    The chunks must agree on the versions."""
    from clinalign.reward.v1 import reward_pb2

    async with Clients(common, service="trainer-job") as clients:
        stub = clients.reward

        async def chunk(start: int) -> Scores:
            items = [
                reward_pb2.ScoreItem(prompt=p, response=r)
                for p, r in zip(
                    prompts[start : start + SCORE_CHUNK],
                    responses[start : start + SCORE_CHUNK],
                    strict=True,
                )
            ]
            request = reward_pb2.ScoreRequest(items=items, truncate=True, include_cost=include_cost)
            for attempt in range(SCORE_ATTEMPTS):
                try:
                    got = await stub.Score(request, timeout=SCORE_TIMEOUT_S)
                    costs = [r.cost for r in got.results] if include_cost else None
                    return Scores(
                        [r.score for r in got.results],
                        got.model_version,
                        costs,
                        got.cost_model_version,
                    )
                except grpc.aio.AioRpcError as err:
                    if err.code() not in RETRYABLE or attempt == SCORE_ATTEMPTS - 1:
                        raise FailedPrecondition(
                            f"reward service: {err.code().name}: {err.details()}"
                        ) from None
                    await asyncio.sleep(min(0.2 * 2**attempt, 5.0))
            raise AssertionError("unreachable")

        parts = await asyncio.gather(*(chunk(s) for s in range(0, len(prompts), SCORE_CHUNK)))
    versions = {(p.version, p.cost_version) for p in parts}
    if len(versions) > 1:
        listed = ", ".join(sorted("/".join(filter(None, v)) for v in versions))
        raise FailedPrecondition(f"the reward service changed versions while scoring ({listed})")
    version, cost_version = versions.pop() if versions else ("", "")
    return Scores(
        [s for p in parts for s in p.scores],
        version,
        [c for p in parts for c in p.costs or ()] if include_cost else None,
        cost_version,
    )


class RemoteScorer:
    """PPO's ``ScoreFn`` through the reward service (``score_remote``) that refuses to mix
    reward models: every answer must name ``expected_version``. With
    ``expected_cost_version`` (a job under a cost constraint with ``cost_source: model``)
    each call also asks for the cost model's costs, which must name that version, and
    keeps them for ``cost``, the run's ``CostFn``: PPO costs the pairs it has just scored,
    so one Score call serves both."""

    def __init__(
        self, common: CommonSettings, expected_version: str, expected_cost_version: str = ""
    ) -> None:
        self.common = common
        self.expected_version = expected_version
        self.expected_cost_version = expected_cost_version
        self.calls = 0
        self.pairs = 0
        self._costs: dict[tuple[str, str], float] = {}
        self._loop = asyncio.new_event_loop()

    def _ask(self, prompts: Sequence[str], responses: Sequence[str]) -> Scores:
        self.calls += 1
        self.pairs += len(prompts)
        got = self._loop.run_until_complete(
            score_remote(
                self.common, list(prompts), list(responses), bool(self.expected_cost_version)
            )
        )
        if got.version != self.expected_version:
            raise FailedPrecondition(
                f"the reward service serves {got.version or 'no version'}, but this job scores "
                f"against {self.expected_version}; a PPO run never mixes reward models"
            )
        if got.cost_version != self.expected_cost_version:
            raise FailedPrecondition(
                f"the reward service costs with {got.cost_version or 'no cost model'}, but this "
                f"job is constrained by {self.expected_cost_version}; a PPO run never mixes "
                "cost models"
            )
        if got.costs is not None:
            self._costs = dict(zip(zip(prompts, responses, strict=True), got.costs, strict=True))
        return got

    def __call__(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return self._ask(prompts, responses).scores

    def cost(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """The costs of pairs, kept from the Score call that scored them (asked again for
        any pair it did not)."""
        pairs = list(zip(prompts, responses, strict=True))
        if any(pair not in self._costs for pair in pairs):
            self._ask(prompts, responses)
        return [self._costs[pair] for pair in pairs]

    def close(self) -> None:
        self._loop.close()


# -- the run --------------------------------------------------------------------------------


def with_rule_term(score: ScoreFn, penalty: float) -> ScoreFn:
    """``score`` less ``penalty`` times each response's shortfall on the clinical rule
    checks (``clinalign.common.clinical_rules.rule_reward``: 1 with no violation, 0 with a
    critical one), or ``score`` itself when ``penalty`` is 0. PPO asks it about finished
    responses only."""
    if penalty == 0:
        return score
    from clinalign.common.clinical_rules import rule_reward

    def scored(prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        return [
            float(s) - penalty * (1.0 - rule_reward(p, r))
            for s, p, r in zip(score(prompts, responses), prompts, responses, strict=True)
        ]

    return scored


def snapshot_prompts(snapshot: Path) -> tuple[list[str], str, str]:
    """(unique prompts of the snapshot's train split, its content hash, hash source)."""
    from clinalign.trainer.methods.reward_model.commands import read_snapshot

    data = read_snapshot(snapshot)
    prompts = list(
        dict.fromkeys(
            str(r["prompt"])
            for r in data.records
            if r.get("split", "train") == "train" and r.get("prompt")
        )
    )
    if not prompts:
        raise FailedPrecondition("the snapshot's train split holds no prompts")
    return prompts, data.snapshot_hash, data.hash_source


def train_ppo_job(
    job_dir: Path,
    snapshot: Path | None,
    inputs: dict[str, Any],
    progress: specs.ProgressFn,
    common: CommonSettings,
) -> tuple[Path, dict[str, Any]]:
    """PPO into ``<job_dir>/model``, checkpointing under ``<job_dir>/checkpoints``;
    (directory, manifest)."""
    from clinalign.common.artefacts import LoraSettings
    from clinalign.trainer.methods.ppo.trainer import Anchor, last_checkpoint, train_ppo

    lineage: dict[str, Any] = {
        "base_model": inputs["base_model_dir"],
        "parent_version": inputs.get("parent_version", ""),
        "reward_model_version": inputs["reward_model_version"],
        "cost_model_version": inputs.get("cost_model_version", ""),
        "prompt_set": inputs.get("prompt_set", ""),
    }
    if inputs.get("prompt_set"):
        prompts = prompt_sets.load(inputs["prompt_set"])
        lineage.update(snapshot_hash="", snapshot_hash_source="")
    else:
        if snapshot is None:
            raise FailedPrecondition("a snapshot-prompted ppo job ran without its snapshot")
        prompts, content_hash, source = snapshot_prompts(snapshot)
        lineage.update(snapshot_hash=content_hash, snapshot_hash_source=source)
    resume_from = specs.resume_checkpoint(job_dir, inputs, last_checkpoint)
    if resume_from is not None:
        lineage["resumed_from"] = f"{resume_from.parent.parent.name}/{resume_from.name}"
    lora = inputs.get("lora")
    if lora and isinstance(lora.get("target_modules"), list):
        lora = {**lora, "target_modules": tuple(lora["target_modules"])}
    anchor = None  # a job accepted before anchors were resolved: train_ppo derives it
    if inputs.get("kl_anchor_dir"):
        anchor = Anchor(str(inputs.get("kl_anchor_version", "")), Path(inputs["kl_anchor_dir"]))
    scorer = RemoteScorer(
        common, inputs["reward_model_version"], str(inputs.get("cost_model_version", ""))
    )
    hyper = PPOHyperparameters(**inputs["hyperparameters"])
    out = job_dir / specs.MODEL_DIR
    started = time.monotonic()
    try:
        manifest = train_ppo(
            prompts,
            Path(inputs["base_model_dir"]),
            out,
            hyper,
            with_rule_term(scorer, hyper.rule_penalty),
            critic_dir=Path(inputs["reward_model_dir"]),
            lora=LoraSettings(**lora) if lora else None,
            checkpoint_dir=job_dir / specs.CHECKPOINT_DIR,
            resume_from=resume_from,
            progress=progress,
            lineage=lineage,
            anchor=anchor,
            cost=scorer.cost if hyper.cost_source == "model" else None,
        )
    finally:
        scorer.close()
    # a succeeded job cannot be resumed; its optimiser state is as large as the model twice
    shutil.rmtree(job_dir / specs.CHECKPOINT_DIR, ignore_errors=True)
    log.info(
        "ppo finished",
        extra={
            "fields": {
                "score_calls": scorer.calls,
                "scored_pairs": scorer.pairs,
                "wall_s": round(time.monotonic() - started, 1),
            }
        },
    )
    return out, manifest
