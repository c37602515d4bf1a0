"""``clinalign demo``: the whole closed loop from nothing, through the real services over
gRPC, on two CPU cores.

1. bootstrap the foundation model; start the five services; SFT the foundation model on
   the shipped clinical demonstrations (a trainer job);
2. sample candidate pairs from the SFT policy (GenerationService.GenerateCandidates); a
   SIMULATED clinician panel (`clinalign.simulation`, a simulation standing in for people)
   labels them through the preference store's labelling queue;
3. train the reward model on a snapshot, promote it through the gate; promote SFT over the
   foundation model; PPO the SFT policy against the served reward model; promote it;
4. serve it; a SIMULATED EHR (`clinalign.demo.ehr`) sends patients' messages through the
   CDS Hooks gateway, and simulated clinicians accept each card or override it with a
   reason (feedback the gateway turns into a flag) by the same rubric; a second one
   reviews each flag; the monitor turns confirmed
   flags into preference data, and its retraining policy retrains (reward model, then PPO)
   and promotes again through the gate;
5. evaluate the foundation, SFT and RLHF policies on held-out prompts and write the report
   (``<data_dir>/demo/report.md``, ``report.json`` and PNG plots).

`Plan.full()` is meant to run in 15 minutes on two cores (on 2026-12-07 it took 21 with
issue 20's gate, then 37 on a slower afternoon once it trained at 192 tokens, and 25 that
evening with its traffic through the CDS Hooks gateway: docs/experiments.md);
`Plan.quick()` is the shortened loop the end-to-end test runs on a tiny model.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clinalign.common.auth import Role, ensure_principals
from clinalign.common.config import CommonSettings
from clinalign.demo.ehr import EhrCalls, SimulatedEhr
from clinalign.demo.peers import LABELLING_TOOL
from clinalign.demo.pipeline import FLAGGED_BATCH, GUIDELINE_VERSION, Figures, Pipeline, Plan

__all__ = ["Plan", "run_demo"]


def stack_env(plan: Plan, threads: int) -> dict[str, str]:
    """Settings of the demo's stack: the monitor's feedback and retraining policy sized for
    the demo, and a CPU budget per process so that the jobs and services do not
    oversubscribe the cores."""
    return {
        "CLINALIGN_MONITOR_FEEDBACK_INTERVAL_S": "1",
        "CLINALIGN_MONITOR_FEEDBACK_GUIDELINE_VERSION": GUIDELINE_VERSION,
        "CLINALIGN_MONITOR_FEEDBACK_BATCH_ID": FLAGGED_BATCH,
        "CLINALIGN_MONITOR_FEEDBACK_OVERLAP": "3",
        "CLINALIGN_MONITOR_FEEDBACK_MAX_NEW_TOKENS": str(plan.max_new_tokens),
        "CLINALIGN_MONITOR_RETRAIN_MIN_NEW_PAIRS": str(plan.min_new_pairs),
        "CLINALIGN_MONITOR_RETRAIN_POLL_S": "1",
        "CLINALIGN_MONITOR_RETRAIN_EVAL_FRACTION": str(plan.eval_fraction),
        # the second reward model continues the first on the new snapshot (a warm start):
        # trained afresh, from the PPO policy or from the SFT policy the first came from,
        # a new seed's noise outweighed a few dozen new pairs and the gate refused it
        # (see docs/experiments.md, 2026-12-06)
        "CLINALIGN_MONITOR_RETRAIN_REWARD_BASE_MODEL": "served-reward",
        "CLINALIGN_MONITOR_RETRAIN_REWARD_HYPERPARAMETERS": json.dumps(plan.loop_reward),
        "CLINALIGN_MONITOR_RETRAIN_PPO_HYPERPARAMETERS": json.dumps(plan.loop_ppo),
        # the loop retrains the cost model on the confirmed flags too (issue 21)
        "CLINALIGN_MONITOR_RETRAIN_COST_MODEL": "true"
        if plan.cost and plan.retrain_cost
        else "false",
        "CLINALIGN_MONITOR_RETRAIN_COST_HYPERPARAMETERS": json.dumps(plan.cost),
        # the gate's judges: the formulary's rule checks, the SIMULATED panel, seeded
        # apart from the panels that label and that judge the reported evaluation, and the
        # served cost model (no_harm; nothing before one serves); never the reward model a
        # policy was optimised against
        "CLINALIGN_TRAINER_GATE_JUDGES": json.dumps(
            ["clinical-rules", "clinalign.simulation.judge:panel_judge", "cost-model"]
        ),
        "CLINALIGN_TRAINER_WORKER_THREADS": str(threads),
        "CLINALIGN_GENERATION_TORCH_THREADS": str(threads),
        # PPO waits for its scores, so the reward service may use the cores meanwhile
        "CLINALIGN_REWARD_TORCH_THREADS": str(threads),
        "CLINALIGN_GENERATION_DEVICE": "cpu",
        "CLINALIGN_REWARD_DEVICE": "cpu",
        # the EHR's traffic comes through the CDS Hooks gateway: patients' questions as
        # messages, drafted as the traffic was before (sampled, the demo's budget) and from
        # the message alone, as the embedded model was trained to answer questions
        "CLINALIGN_CDS_HOOKS_MESSAGE_CONTEXT": "message-only",
        "CLINALIGN_CDS_HOOKS_TEMPERATURE": "1.0",
        "CLINALIGN_CDS_HOOKS_MAX_NEW_TOKENS": str(plan.max_new_tokens),
        # as long a deadline for each draft as the traffic had when it called Generate
        "CLINALIGN_CDS_HOOKS_CALL_TIMEOUT_S": "300",
    }


def _timed(echo: Callable[[str], Any], started: float) -> Callable[[str], Any]:
    """``echo`` that puts the seconds since ``started`` before each step's heading."""

    def timed(line: str) -> Any:
        if line.startswith("== "):
            line = f"== [{time.monotonic() - started:5.0f} s] {line[3:]}"
        return echo(line)

    return timed


def run_demo(
    common: CommonSettings,
    echo: Callable[[str], Any] = print,
    *,
    plan: Plan | None = None,
    bootstrap_model: bool = True,
    threads: int = 2,
) -> dict[str, Any]:
    """Runs the demonstration and returns the report's figures (also written to
    ``<data_dir>/demo/report.json``)."""
    from clinalign.cli.main import bootstrap, console_sign_in_hint, foundation_dir, model_env
    from clinalign.cli.stack import Stack, ensure_tokens
    from clinalign.demo.report import summarise, write_report
    from clinalign.simulation import SimulatedPanel

    plan = plan or Plan.full()
    started = time.monotonic()
    echo = _timed(echo, started)
    model_dir = foundation_dir(common).resolve()
    out_dir = common.data_dir / "demo"
    echo("== 1. foundation model")
    if bootstrap_model or not (model_dir / "config.json").exists():
        bootstrap(data_dir=common.data_dir, seed=plan.seed)
    panel = SimulatedPanel(n_annotators=5, seed=plan.labelling_seed)
    ensure_tokens(common)
    # Each simulated clinician, and the labelling tool that stores prompts and drafts for
    # them, has a credential of its own.
    clinician_tokens = ensure_principals(
        common.resolved_tokens_file,
        {a.annotator_id: Role.CLINICIAN for a in panel.annotators} | {LABELLING_TOOL: Role.SERVICE},
    )
    echo("== 2. starting the five services")
    ehr = SimulatedEhr()
    with ehr.serving_jwks():
        env = {**model_env(common), **stack_env(plan, threads), **ehr.trust()}
        stack = Stack(common, extra_env=env)
        stack.start()
        try:
            for r in stack.wait_ready():
                echo(f"   {r.service:<11} {r.target:<17} {r.process}")
            for name, url in stack.front_doors.items():
                echo(f"   {name:<11} {url}")
            echo(f"   {console_sign_in_hint()}")
            common = common.model_copy(
                update={f"{ep.service}_target": ep.target for ep in stack.endpoints}
            )
            gateway = stack.front_doors["cds-hooks"]
            figures = asyncio.run(
                _pipeline(common, plan, panel, clinician_tokens, model_dir, echo, (ehr, gateway))
            )
        finally:
            echo("== stopping services")
            stack.stop()
    echo("== 10. held-out evaluation (foundation, SFT, RLHF) judged by the simulated panel")
    summary = summarise(figures, plan, common, model_dir, echo)
    summary["wall_s"] = round(time.monotonic() - started, 1)
    write_report(summary, figures, out_dir)
    echo(f"== report: {out_dir / 'report.md'} ({summary['wall_s']} s in all)")
    return summary


async def _pipeline(
    common: CommonSettings,
    plan: Plan,
    panel: Any,
    clinician_tokens: dict[str, str],
    foundation: Path,
    echo: Callable[[str], Any],
    ehr: tuple[SimulatedEhr, str],
) -> Figures:
    from clinalign.demo.peers import Peers

    peers = Peers(common, clinician_tokens, cds=EhrCalls(*ehr))
    p = Pipeline(peers, plan, panel, echo)
    try:
        await p.setup(foundation)
        sft = await p.sft()
        await p.candidate_pairs(sft)
        echo("== 6. reward model on the panel's labels; gate; serve")
        rm = await p.reward_model(sft, "rm-1")
        rm_served = await p.promote_and_activate(rm, "reward")
        if plan.cost:  # the cost model learns from the same labels' error annotations
            cost = await p.cost_model(sft, "cm-1")
            if cost and await p.promote_and_activate(cost, "cost") and rm_served:
                await p.sft_expected_cost()
        if rm_served:
            echo("== 7. SFT through the policy gate; PPO against the served reward model")
            await p.promote_and_activate(sft, "policy")
            rlhf = await p.ppo(sft, rm, "rlhf-1")
            await p.promote_and_activate(rlhf, "policy")
        else:
            # The gate did its job: no policy is trained against, or judged by, a reward
            # model it refused. The loop below may still train one that passes.
            echo(
                f"== 7. skipped: the gate refused {rm}, so no PPO runs against it and the "
                f"foundation model keeps serving"
            )
        await p.traffic_and_flags()
        await p.feedback_and_retrain()
        v = p.figures.versions
        served = v.get("rlhf-2") or v.get("rlhf-1") or v["foundation"]
        example = await _an_output_of(peers, served)
        if example:
            p.figures.lineage_example = await p.lineage(example)
        await p.resolve_paths()
        return p.figures
    finally:
        await peers.close()


async def _an_output_of(peers: Any, version: str) -> str:
    """Generates one answer with the served policy and returns its output id, whose lineage
    the report shows."""
    import grpc

    from clinalign.generation.v1 import generation_pb2
    from clinalign.monitor.v1 import monitor_pb2

    resp = await peers.ehr.Generate(
        generation_pb2.GenerateRequest(
            input=generation_pb2.GenerationInput(
                prompt="I have had a fever and a dry cough for three days. What should I do?"
            ),
            sampling=generation_pb2.SamplingParams(max_new_tokens=48),
        ),
        timeout=300,
    )
    for _ in range(80):
        output_id = resp.completion.provenance.output_id
        try:
            await peers.monitor.GetLineage(monitor_pb2.GetLineageRequest(output_id=output_id))
            return str(output_id)
        except grpc.aio.AioRpcError as err:  # NOT_FOUND until the monitor has recorded it
            if err.code() != grpc.StatusCode.NOT_FOUND:
                raise
            await asyncio.sleep(0.25)
    return ""
