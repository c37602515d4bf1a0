"""The demonstration's closed loop: simulated EHR traffic through the served policy,
simulated clinicians flagging its outputs and a second one reviewing each flag, the
monitor feeding confirmed flags back as preference data, and the retraining run its policy
starts (reward model, then PPO, each through the gate)."""

from __future__ import annotations

import asyncio

from clinalign.common.v1 import common_pb2
from clinalign.demo.labelling import LabellingSteps
from clinalign.demo.peers import DemoError
from clinalign.demo.plan import FLAGGED_BATCH
from clinalign.demo.steps import bounded
from clinalign.foundation.corpus import QAExample, iter_qa_examples
from clinalign.generation.v1 import generation_pb2
from clinalign.monitor.v1 import monitor_pb2
from clinalign.trainer.v1 import trainer_pb2

TRAFFIC_SEED = 23  # EHR questions: train phrasings, a stream apart from every other set


class LoopSteps(LabellingSteps):
    """Steps 8 and 9, and what the report needs afterwards (model paths, a lineage)."""

    async def traffic_and_flags(self) -> None:
        self.echo("== 8. simulated EHR traffic → Generate; simulated clinicians flag outputs")
        examples = self._traffic_examples()
        outputs = await bounded([self._ask(e) for e in examples], limit=32)
        self.figures.traffic = len(outputs)
        await self._wait_recorded(len(outputs))
        flagged = confirmed = dismissed = corrected = 0
        for i, (example, text, output_id) in enumerate(outputs):
            decision = self.panel.flag(example.question, text, example)
            if decision is None:
                continue
            with_correction = (i % 100) < self.plan.correction_share * 100
            flag = (
                await self.peers.clinicians[decision.annotator_id].FlagOutput(
                    monitor_pb2.FlagOutputRequest(
                        output_id=output_id,
                        category=common_pb2.ErrorCategory.Value(decision.category),
                        severity=monitor_pb2.Severity.Value(decision.severity),
                        comment=decision.comment,
                        corrected_text=(decision.corrected_text or "") if with_correction else "",
                    )
                )
            ).flag
            flagged += 1
            corrected += bool(flag.corrected_text)
            # A second simulated clinician reviews: cosmetic flags are dismissed.
            reviewer = self._reviewer(decision.annotator_id)
            low = decision.severity == "SEVERITY_LOW"
            await self.peers.clinicians[reviewer].ResolveFlag(
                monitor_pb2.ResolveFlagRequest(
                    flag_id=flag.id,
                    resolution=(
                        monitor_pb2.RESOLUTION_DISMISS if low else monitor_pb2.RESOLUTION_CONFIRM
                    ),
                    reason="cosmetic only" if low else "confirmed on review (simulated)",
                )
            )
            dismissed += low
            confirmed += not low
        self.figures.flags = {
            "outputs": len(outputs),
            "flagged": flagged,
            "confirmed": confirmed,
            "dismissed": dismissed,
            "with_correction": corrected,
        }
        self.echo(
            f"   {len(outputs)} outputs; {flagged} flagged ({corrected} with a correction), "
            f"{confirmed} confirmed, {dismissed} dismissed on review"
        )

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

    async def _ask(self, e: QAExample) -> tuple[QAExample, str, str]:
        """The served policy's answer to `e` as the EHR asks it, with its output id."""
        resp = await self.peers.ehr.Generate(
            generation_pb2.GenerateRequest(
                input=generation_pb2.GenerationInput(prompt=e.question),
                sampling=generation_pb2.SamplingParams(
                    temperature=1.0, max_new_tokens=self.plan.max_new_tokens
                ),
            ),
            timeout=600,
        )
        return e, resp.completion.text, resp.completion.provenance.output_id

    def _reviewer(self, flagger: str) -> str:
        names = [a.annotator_id for a in self.panel.annotators]
        return names[(names.index(flagger) + 1) % len(names)]

    async def _wait_recorded(self, n: int) -> None:
        for _ in range(240):
            stats = await self.peers.monitor.GetStats(monitor_pb2.GetStatsRequest(), timeout=10)
            if sum(v.outputs for v in stats.versions) >= n:
                return
            await asyncio.sleep(0.25)
        raise DemoError(f"the monitor did not record the {n} outputs within a minute")

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
