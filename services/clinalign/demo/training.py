"""The demonstration's training steps, each a trainer job over gRPC: register the
foundation model and the panel, SFT on the shipped demonstrations, the reward model on a
snapshot of the panel's labels, PPO against the served reward model, and the gate between
each model and the services that serve it."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from clinalign.common.v1 import common_pb2
from clinalign.demo.peers import DemoError
from clinalign.demo.plan import GUIDELINE_VERSION
from clinalign.demo.steps import Steps
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.trainer.v1 import trainer_pb2


def demonstrations(limit: int) -> list[dict[str, str]]:
    """The shipped synthetic clinical demonstrations (`data/demonstrations.jsonl`)."""
    text = resources.files("clinalign.demo").joinpath("data/demonstrations.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()][:limit]


class TrainingSteps(Steps):
    """Steps 3, 4, 6 and 7: set-up, SFT, the reward model, the gate, PPO."""

    async def setup(self, foundation_dir: Path) -> None:
        self.echo("== 3. registry, guidelines, annotators")
        registered = await self.peers.trainer.RegisterModel(
            trainer_pb2.RegisterModelRequest(
                path=str(foundation_dir), kind=common_pb2.MODEL_KIND_POLICY, serve_if_none=True
            ),
            timeout=120,
        )
        self.figures.versions["foundation"] = registered.version.ref.version
        self.echo(f"   foundation model registered as {registered.version.ref.version}")
        from clinalign.simulation import rubric_text

        # Publishing the same text again is a no-op, so a second demo run may repeat it.
        await self.peers.preference_admin.PublishGuidelines(
            ppb.PublishGuidelinesRequest(version=GUIDELINE_VERSION, text=rubric_text())
        )
        # Each record is linked to the simulated clinician's own principal, so each labels
        # as themselves and no one else can (the labelling tool, a service, links them).
        for annotator in self.panel.annotators:
            await self.peers.preference.RegisterAnnotator(
                ppb.RegisterAnnotatorRequest(
                    annotator=ppb.Annotator(
                        id=annotator.annotator_id,
                        role="simulated-clinician",
                        specialty="general",
                        subject=annotator.annotator_id,
                    )
                )
            )
        self.echo(
            f"   guidelines {GUIDELINE_VERSION} published; {len(self.panel.annotators)} "
            "SIMULATED clinicians registered (a simulation standing in for people)"
        )

    async def sft(self) -> str:
        self.echo("== 4. SFT on the shipped clinical demonstrations")
        demos = demonstrations(self.plan.demonstrations)
        prompt_ids = await self.store_prompts(
            [d["prompt"] for d in demos], ppb.PROMPT_SOURCE_CURATED, ["demonstration"]
        )
        response_ids = await self.store_responses(
            [(pid, d["completion"], "") for pid, d in zip(prompt_ids, demos, strict=True)]
        )
        self._demonstrations = [
            (pid, rid, d["prompt"])
            for pid, rid, d in zip(prompt_ids, response_ids, demos, strict=True)
        ]
        snap = await self.snapshot([ppb.PROMPT_SOURCE_CURATED])
        self.echo(f"   snapshot {snap.id}: {snap.sft_records} demonstrations")
        job = await self.peers.run_job(
            trainer_pb2.JobSpec(
                kind=trainer_pb2.JOB_KIND_SFT,
                snapshot_id=snap.id,
                base_model=self.figures.versions["foundation"],
                hyperparameters=self.plan.sft,
                display_name="demo sft",
            ),
            self.echo,
            "sft",
        )
        self._record_job("sft", job)
        self.figures.versions["sft"] = job.model_version
        return job.model_version

    async def reward_model(self, base: str, label: str) -> str:
        snap = await self.snapshot([])
        self.echo(f"   snapshot {snap.id}: {snap.train_pairs} train / {snap.eval_pairs} eval pairs")
        job = await self.peers.run_job(
            trainer_pb2.JobSpec(
                kind=trainer_pb2.JOB_KIND_REWARD_MODEL,
                snapshot_id=snap.id,
                base_model=base,
                hyperparameters=self.plan.reward,
                display_name=f"demo {label}",
            ),
            self.echo,
            label,
        )
        self._record_job(label, job)
        self.figures.versions[label] = job.model_version
        accuracy = job.metrics.get("eval_accuracy")
        if accuracy is not None:
            self.figures.rm_accuracy[job.model_version] = accuracy
            self.echo(f"   {job.model_version}: held-out pair accuracy {accuracy:.3f}")
        return job.model_version

    async def cost_model(self, base: str, label: str) -> str:
        """A cost model on the snapshot of the panel's labels and error annotations; ""
        when the job fails (a snapshot with no harmful or no clean answer), and the run goes
        on without one."""
        snap = await self.snapshot([])
        self.echo(f"== 6b. cost model on {snap.harm_records} judged answers (snapshot {snap.id})")
        try:
            job = await self.peers.run_job(
                trainer_pb2.JobSpec(
                    kind=trainer_pb2.JOB_KIND_COST_MODEL,
                    snapshot_id=snap.id,
                    base_model=base,
                    hyperparameters=self.plan.cost,
                    display_name=f"demo {label}",
                ),
                self.echo,
                label,
            )
        except DemoError as err:
            self.echo(f"   no cost model: {err}")
            return ""
        figures = self._record_cost_model(label, job)
        if "eval_auroc" in figures:
            self.echo(
                f"   {job.model_version}: held-out AUROC {figures['eval_auroc']:.3f} "
                f"[{figures['eval_auroc_low']:.3f}, {figures['eval_auroc_high']:.3f}], "
                f"{figures.get('eval_harmful', 0):.0f} harmful of "
                f"{figures.get('eval_records', 0):.0f}"
            )
        return job.model_version

    async def sft_expected_cost(self) -> float:
        """The served cost model's mean cost of the SFT policy's labelled answers: the
        budget that keeps an RLHF policy no more harmful than SFT."""
        from clinalign.reward.v1 import reward_pb2

        costs: list[float] = []
        answers = [(p, t) for p, t in self._sft_answers if t.strip()]
        for start in range(0, len(answers), 64):
            items = [reward_pb2.ScoreItem(prompt=p, response=t) for p, t in answers[start:][:64]]
            got = await self.peers.reward.Score(
                reward_pb2.ScoreRequest(items=items, truncate=True, include_cost=True),
                timeout=300,
            )
            costs += [r.cost for r in got.results]
        budget = sum(costs) / len(costs) if costs else 0.0
        self.figures.cost_budget = budget
        self.echo(f"   SFT's expected cost on its {len(costs)} labelled answers: {budget:.3f}")
        return budget

    async def promote_and_activate(self, version: str, kind: str) -> bool:
        promoted = await self.peers.promote(version, self.echo)
        self.figures.gate.append({"version": version, "kind": kind, "promoted": promoted})
        if not promoted:
            return False
        self.figures.promoted_versions.append(version)
        if kind in ("reward", "cost"):  # the reward service serves both, by kind
            await self.peers.activate_reward(version)
        else:
            await self.peers.activate_policy(version)
        service = "generation" if kind == "policy" else "reward"
        self.echo(f"   {version} now served by the {service} service")
        return True

    def ppo_settings(self) -> dict[str, str]:
        """PPO's hyperparameters: the plan's, under the cost constraint once a cost model
        serves (its budget SFT's expected cost unless the plan sets one)."""
        if self.figures.cost_budget is None or not self.plan.cost_constraint:
            return dict(self.plan.ppo)
        budget = {"cost_budget": f"{self.figures.cost_budget:.4f}"}
        return {**self.plan.ppo, **budget, **self.plan.cost_constraint}

    async def ppo(self, base: str, reward: str, label: str) -> str:
        job = await self.peers.run_job(
            trainer_pb2.JobSpec(
                kind=trainer_pb2.JOB_KIND_PPO,
                base_model=base,
                reward_model_version=reward,
                prompt_set="clinical-train",
                hyperparameters=self.ppo_settings(),
                display_name=f"demo {label}",
            ),
            self.echo,
            label,
        )
        self._record_job(label, job)
        self.figures.versions[label] = job.model_version
        return job.model_version
