"""The demonstration's closed loop: simulated EHR traffic through the CDS Hooks gateway to
the served policy, simulated clinicians accepting or overriding each draft there (an
override becomes a flag) and a second one reviewing each flag, the
monitor feeding confirmed flags back as preference data, and the retraining run its policy
starts (reward model, then PPO, each through the gate)."""

from __future__ import annotations

import asyncio
from typing import Any

from clinalign.demo.ehr import EhrCalls, draft_text, message_hook, reason_code, verdict
from clinalign.demo.labelling import LabellingSteps
from clinalign.demo.peers import DemoError
from clinalign.demo.plan import FLAGGED_BATCH
from clinalign.demo.steps import bounded
from clinalign.foundation.corpus import QAExample, iter_qa_examples
from clinalign.monitor.v1 import monitor_pb2
from clinalign.simulation.panel import FlagDecision
from clinalign.trainer.v1 import trainer_pb2

TRAFFIC_SEED = 23  # EHR questions: train phrasings, a stream apart from every other set


class LoopSteps(LabellingSteps):
    """Steps 8 and 9, and what the report needs afterwards (model paths, a lineage)."""

    @property
    def ehr(self) -> EhrCalls:
        if self.peers.cds is None:
            raise DemoError("the demo's EHR has no CDS Hooks gateway to call")
        return self.peers.cds

    async def traffic_and_flags(self) -> None:
        self.echo(
            "== 8. simulated EHR traffic → the CDS Hooks gateway; simulated clinicians "
            "accept or override each draft"
        )
        examples = self._traffic_examples()
        clinicians = [a.annotator_id for a in self.panel.annotators]
        # Each patient's message is opened by one clinician, who judges the draft.
        opened = [(e, clinicians[i % len(clinicians)]) for i, e in enumerate(examples)]
        cards = await bounded(
            [self._open_message(i, e, who) for i, (e, who) in enumerate(opened)], limit=16
        )
        self.figures.traffic = len(cards)
        verdicts: list[dict[str, Any]] = []
        overridden: dict[str, tuple[str, FlagDecision]] = {}  # output id -> (who, decision)
        corrected = 0
        for i, ((example, who), card) in enumerate(zip(opened, cards, strict=True)):
            decision = self.panel.flag(example.question, draft_text(card), example)
            if decision is None:
                verdicts.append(verdict(card["uuid"]))
                continue
            with_correction = (i % 100) < self.plan.correction_share * 100
            correction = (decision.corrected_text or "") if with_correction else ""
            reason = reason_code(card, decision.category, decision.severity)
            verdicts.append(verdict(card["uuid"], reason, decision.comment, correction))
            overridden[card["uuid"]] = (who, decision)
            corrected += bool(correction)
        # Each verdict reaches the gateway as the clinician gives it: one feedback call each.
        await bounded([self.ehr.feedback([v]) for v in verdicts], limit=16)
        flags = await self._open_flags(set(overridden))
        confirmed = dismissed = 0
        for output_id, (who, decision) in overridden.items():
            # A second simulated clinician reviews: cosmetic flags are dismissed.
            low = decision.severity == "SEVERITY_LOW"
            await self.peers.clinicians[self._reviewer(who)].ResolveFlag(
                monitor_pb2.ResolveFlagRequest(
                    flag_id=flags[output_id],
                    resolution=(
                        monitor_pb2.RESOLUTION_DISMISS if low else monitor_pb2.RESOLUTION_CONFIRM
                    ),
                    reason="cosmetic only" if low else "confirmed on review (simulated)",
                )
            )
            dismissed += low
            confirmed += not low
        self.figures.flags = {
            "outputs": len(cards),
            "accepted": len(cards) - len(overridden),
            "overridden": len(overridden),
            "flagged": len(flags),
            "confirmed": confirmed,
            "dismissed": dismissed,
            "with_correction": corrected,
            "retried": self.ehr.retries,  # calls the gateway refused for load, then took
        }
        self.echo(
            f"   {len(cards)} drafts (cards); {len(cards) - len(overridden)} accepted, "
            f"{len(overridden)} overridden → {len(flags)} flags ({corrected} with a "
            f"correction), {confirmed} confirmed, {dismissed} dismissed on review"
        )
        await self._cost_on_flags(len(cards))

    async def _cost_on_flags(self, outputs: int) -> None:
        """The served cost model on held-out flags: once the monitor has scored every
        output (or after two minutes), its AUROC on the outputs the clinicians
        flagged (confirmed, moderate or worse) against those they accepted, as GetStats
        measures it. The cost model was trained before any of this traffic."""
        if not self.figures.versions.get("cm-1"):
            return  # no cost model serves: the monitor charges no cost
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 120
        while True:
            stats = await self.peers.monitor.GetStats(monitor_pb2.GetStatsRequest())
            # reward and cost come in one scoring call: every output scored, all are charged
            # (the recorded outputs: an EHR call retried after a 429 may have made two)
            recorded = sum(v.outputs for v in stats.versions)
            scored = sum(v.reward_score.count for v in stats.versions)
            if (recorded >= outputs and scored >= recorded) or loop.time() > deadline:
                break
            await asyncio.sleep(2.0)
        for c in stats.cost_models:
            found: dict[str, Any] = {"harmful": c.harmful, "clean": c.clean}
            for name in ("auroc", "auroc_low", "auroc_high", "calibration_error"):
                if c.HasField(name):
                    found[name] = round(getattr(c, name), 4)
            found["auroc_by_category"] = {k: round(v, 4) for k, v in c.auroc_by_category.items()}
            self.figures.cost_on_flags[c.cost_model_version] = found
            if "auroc" in found:
                self.echo(
                    f"   {c.cost_model_version} on held-out flags: AUROC {found['auroc']:.3f} "
                    f"[{found['auroc_low']:.3f}, {found['auroc_high']:.3f}], {c.harmful} "
                    f"flagged harmful against {c.clean} accepted"
                )

    async def _open_message(self, i: int, e: QAExample, who: str) -> dict[str, Any]:
        """The card the gateway returns when clinician ``who`` opens patient ``i``'s
        message (``e``'s question) in the simulated EHR."""
        hook = message_hook(f"demo-{i:05d}", f"msg-{i:05d}", e.question, f"Practitioner/{who}")
        return await self.ehr.reply_card(hook)

    async def _open_flags(self, output_ids: set[str]) -> dict[str, str]:
        """The open flags on ``output_ids``, by output id: the overrides' flags, which the
        gateway filed before it answered the feedback."""
        found: dict[str, str] = {}
        token = ""
        while True:
            page = await self.peers.monitor.ListFlags(
                monitor_pb2.ListFlagsRequest(
                    status=monitor_pb2.FLAG_STATUS_OPEN, page_size=100, page_token=token
                )
            )
            found |= {f.output_id: f.id for f in page.flags if f.output_id in output_ids}
            token = page.next_page_token
            if not token:
                break
        if len(found) != len(output_ids):
            raise DemoError(f"{len(output_ids)} overrides filed {len(found)} flags")
        return found

    def _traffic_examples(self) -> list[QAExample]:
        """The EHR's questions: the first `plan.traffic` distinct ones of their stream."""
        examples: list[QAExample] = []
        seen: set[str] = set()
        for e in iter_qa_examples(TRAFFIC_SEED, "train"):
            if e.question not in seen:
                seen.add(e.question)
                examples.append(e)
            if len(examples) == self.plan.traffic:
                break
        return examples

    def _reviewer(self, flagger: str) -> str:
        names = [a.annotator_id for a in self.panel.annotators]
        return names[(names.index(flagger) + 1) % len(names)]

    async def feedback_and_retrain(self) -> None:
        self.echo("== 9. confirmed flags become preference data; the loop retrains")
        feedback = await self._settled_feedback()
        self.figures.flags_fed_back = feedback.get("FEEDBACK_STATE_DELIVERED", 0)
        self.figures.flags["feedback_failed"] = feedback.get("FEEDBACK_STATE_FAILED", 0)
        self.echo(
            f"   {self.figures.flags_fed_back} confirmed flags fed back to the preference store"
            + (
                f", {feedback['FEEDBACK_STATE_FAILED']} failed"
                if self.figures.flags["feedback_failed"]
                else ""
            )
        )
        # Flags without a correction became labelling tasks: the panel labels them too.
        labels = await self.label_queue(FLAGGED_BATCH)
        self.echo(f"   {labels} labels on flagged outputs against fresh candidates")
        decision = await self.peers.monitor.EvaluateRetraining(
            monitor_pb2.EvaluateRetrainingRequest(dry_run=False)
        )
        if not decision.triggered:
            raise DemoError("the retraining policy did not fire: " + ", ".join(decision.reasons))
        run = decision.run
        self.echo(f"   retraining run {run.id} started by {', '.join(decision.reasons)}")
        again = await self.peers.monitor.EvaluateRetraining(
            monitor_pb2.EvaluateRetrainingRequest(dry_run=False)
        )
        if again.run.id != run.id:
            raise DemoError("a second evaluation started a second run for the same trigger")
        run = await self._follow(run)
        await self._record_run(run)

    async def _settled_feedback(self) -> dict[str, int]:
        """`_feedback_states` once no confirmed flag is pending (or after five minutes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 300
        while True:
            feedback = await self._feedback_states()
            if not feedback.get("FEEDBACK_STATE_PENDING") or loop.time() > deadline:
                return feedback
            await asyncio.sleep(0.5)

    async def _follow(self, run: monitor_pb2.RetrainingRun) -> monitor_pb2.RetrainingRun:
        """Polls the run until it ends, echoing each step as it is recorded."""
        seen_steps = 0
        while run.state == monitor_pb2.RUN_STATE_RUNNING:
            await asyncio.sleep(2.0)
            runs = await self.peers.monitor.ListRetrainingRuns(
                monitor_pb2.ListRetrainingRunsRequest(page_size=5)
            )
            run = next(r for r in runs.runs if r.id == run.id)
            for step in run.steps[seen_steps:]:
                self.echo(f"      {step.name}: {step.ref} — {step.outcome}")
            seen_steps = len(run.steps)
        return run

    async def _record_run(self, run: monitor_pb2.RetrainingRun) -> None:
        """The ended run's outcome, its jobs and the versions it promoted, in the figures."""
        state = monitor_pb2.RunState.Name(run.state)
        self.figures.retraining_runs.append(
            {
                "id": run.id,
                "trigger": run.trigger,
                "state": state,
                "reason": run.reason,
                "promoted_version": run.promoted_version,
                "steps": [{"name": s.name, "ref": s.ref, "outcome": s.outcome} for s in run.steps],
            }
        )
        self.echo(
            f"   run {run.id}: {state} {run.promoted_version}"
            + (f" ({run.reason})" if run.reason else "")
        )
        for step in run.steps:
            promoted = step.outcome.startswith("promoted")
            if step.name in ("promote_reward_model", "promote_policy") and promoted:
                self.figures.promoted_versions.append(step.ref)
            if step.name == "cost_model_job":
                job = (await self.peers.trainer.GetJob(trainer_pb2.GetJobRequest(id=step.ref))).job
                if job.model_version:
                    self._record_cost_model("cm-2", job)
            if step.name in ("reward_model_job", "ppo_job"):
                job = (await self.peers.trainer.GetJob(trainer_pb2.GetJobRequest(id=step.ref))).job
                label = "rm-2" if step.name == "reward_model_job" else "rlhf-2"
                if job.model_version:
                    self._record_job(label, job)
                    self.figures.versions[label] = job.model_version
                accuracy = job.metrics.get("eval_accuracy")
                if label == "rm-2" and accuracy is not None:
                    self.figures.rm_accuracy[job.model_version] = accuracy
        if run.state != monitor_pb2.RUN_STATE_PROMOTED and "rlhf-2" in self.figures.versions:
            # A refused policy is reported apart from what serves: the evaluation still
            # measures it, labelled as refused.
            self.figures.versions["rlhf-2-refused"] = self.figures.versions.pop("rlhf-2")

    async def _feedback_states(self) -> dict[str, int]:
        """Confirmed flags by the state of their feedback to the preference store."""
        states: dict[str, int] = {}
        token = ""
        while True:
            page = await self.peers.monitor.ListFlags(
                monitor_pb2.ListFlagsRequest(
                    status=monitor_pb2.FLAG_STATUS_CONFIRMED, page_size=100, page_token=token
                )
            )
            for f in page.flags:
                name = monitor_pb2.FeedbackState.Name(f.feedback_state)
                states[name] = states.get(name, 0) + 1
            token = page.next_page_token
            if not token:
                return states

    async def resolve_paths(self) -> None:
        """Model directories of every policy the run made, for the held-out evaluation."""
        for name, version in self.figures.versions.items():
            if version:
                self.figures.paths[name] = (await self.peers.version(version)).artifact_uri

    async def lineage(self, output_id: str) -> list[dict[str, str]]:
        resp = await self.peers.monitor.GetLineage(
            monitor_pb2.GetLineageRequest(output_id=output_id)
        )
        return [
            {"kind": s.kind, "id": s.id, "summary": s.summary, "parent_id": s.parent_id}
            for s in resp.steps
        ]
