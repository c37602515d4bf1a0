"""The demonstration's steps, each a call (or many) to the real services over gRPC.

    foundation ─SFT job─▶ sft ─GenerateCandidates─▶ pairs ─simulated panel, labelling queue─▶
    snapshot ─reward_model job─▶ rm-1 ─gate─▶ served ─PPO job─▶ rlhf-1 ─gate─▶ served
    ─EHR traffic─▶ monitor ─simulated clinicians flag, a second one reviews─▶ preference store
    ─EvaluateRetraining─▶ snapshot ─▶ rm-2 ─▶ rlhf-2 ─gate─▶ served

The simulated clinicians are `clinalign.simulation.SimulatedPanel`: a simulation standing
in for people, driven by the rubric in `clinalign/simulation/RUBRIC.md`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from clinalign.common.v1 import common_pb2
from clinalign.demo.peers import DemoError, Echo, Peers
from clinalign.foundation.corpus import QAExample, iter_qa_examples
from clinalign.generation.v1 import generation_pb2
from clinalign.monitor.v1 import monitor_pb2
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.simulation.panel import Judgement, SimulatedPanel
from clinalign.trainer import prompt_sets
from clinalign.trainer.v1 import trainer_pb2

GUIDELINE_VERSION = "rubric-2026-11"
PAIRS_BATCH = "demo-candidate-pairs"
FLAGGED_BATCH = "flagged-outputs"  # the monitor's default labelling batch for flags
TRAFFIC_SEED = 23  # EHR questions: train phrasings, a stream apart from every other set
CONTRAST_SEED = 31  # contrast pairs: train phrasings, a stream of their own
# The clinical error types a safety team writes contrast pairs for: a complete answer against
# the same answer with one fault. Doubled doses are left out: telling a doubled dose from the
# right one needs each medicine's limits, which a small reward model cannot learn from a few
# hundred pairs, and pairs it cannot tell apart teach it only that stating a dose is risky.
# Padding is in because a reward model without it preferred an answer repeated three times
# (97 % of probes), a length bias PPO exploits. (Answers meant for another question were
# tried and left out too: with 60 such pairs the reward model still told them apart from
# the right answer no better than chance, 50 % of probes.)
CONTRAST_AUTHOR = "synthetic:contrast-fault"
CONTRAST_FAULTS = (
    "drop_escalation",
    "drop_dose",
    "drop_follow_up",
    "overclaim",
    "reassure_contraindicated",
    "repeat_sentences",
)
CHUNK = 64  # records per Submit* call


@dataclass(frozen=True)
class Plan:
    """Sizes of every step; `full()` is `clinalign demo`, `quick()` the end-to-end test's."""

    demonstrations: int
    sft: dict[str, str]
    pair_prompts: int
    reference_pairs: int  # demonstrations also paired against an SFT answer to their prompt
    overlap: int
    max_new_tokens: int
    reward: dict[str, str]
    ppo: dict[str, str]
    traffic: int
    correction_share: float  # flags that carry the corpus answer as the correction
    eval_prompts: int
    min_new_pairs: int  # the monitor's retraining threshold in the demo
    eval_fraction: float = 0.1  # of prompts held out in snapshots, for the reward gate
    eval_samples: int = 1  # answers per held-out prompt and policy in the final evaluation
    contrast_pairs: int = 0  # curated answers against a copy with one clinical fault
    # the loop's reward-model job: `reward` with these changes (it continues the served
    # reward model)
    retrain_reward: dict[str, str] = field(default_factory=dict)
    # the loop's PPO job: `ppo` with these changes (it continues from the served policy)
    retrain_ppo: dict[str, str] = field(default_factory=dict)

    @property
    def loop_reward(self) -> dict[str, str]:
        return {**self.reward, **self.retrain_reward}

    @property
    def loop_ppo(self) -> dict[str, str]:
        return {**self.ppo, **self.retrain_ppo}

    @classmethod
    def full(cls) -> Plan:
        return cls(
            demonstrations=400,
            sft={"epochs": "2", "learning_rate": "2e-4", "batch_size": "8"},
            # Two SFT answers to one prompt differ little, and the panel's labels on them
            # are mostly noise to a small reward model (held-out accuracy 0.52-0.58 on
            # those alone); every demonstration against an SFT answer to its prompt shows
            # it what a complete, safe answer looks like.
            pair_prompts=256,
            reference_pairs=400,
            # and a curated answer against itself with one clinical fault (a dropped
            # escalation, dose or follow-up, a certain diagnosis, reassurance despite a
            # caution, padding) shows it which part of an answer matters
            contrast_pairs=360,
            overlap=3,
            max_new_tokens=96,
            # One epoch over every annotator's label (2,119 in one run's snapshot): held-out
            # accuracy 0.772 on all 771 held-out labels, against 0.752 for two epochs over
            # the same snapshot deduplicated (884 records: two of three agreeing labels
            # dropped, the dissent kept), about as many steps (265 and 221). Deduplicated:
            # 0.616 after one epoch, 0.640 after two, 0.643 after three.
            reward={"epochs": "1", "learning_rate": "1e-4", "batch_size": "8"},
            # Four answers to each of 16 prompts an iteration, each judged against the other
            # three (the rloo estimator): the between-prompt spread of the reward is half its
            # variance, and the critic, started from the reward model, never learned it in
            # 20 iterations (explained variance -16 rising to -1), so its advantages were
            # mostly noise. Offline on one SFT policy and reward model (k=2 evaluation): win
            # rate 0.547 [0.520, 0.576] after 20 iterations and 0.540 [0.511, 0.570] after
            # 14, against 0.514 [0.487, 0.542] after 20 with the critic (32 answers an
            # iteration). In full runs: 0.536 [0.507, 0.564] after 20, 0.518 [0.489,
            # 0.546] after 16.
            ppo={
                "iterations": "20",
                "advantage_estimator": "rloo",
                "samples_per_prompt": "4",
                "rollout_batch_size": "64",
                "minibatches": "2",
                "ppo_epochs": "2",
                "response_length": "96",
                "learning_rate": "1e-4",
                "kl_controller": "fixed",
                "kl_coef": "0.1",
                "checkpoint_every": "10",
            },
            # The loop's reward model continues the served one for half an epoch over the
            # new snapshot (old and new labels). With deduplicated snapshots, on one full
            # run's loop snapshot (403 held-out pairs): the served model 0.638; trained
            # afresh for two epochs 0.638 (a tie, 111 s); continued for one epoch at 1e-4
            # 0.650 (60 s), at 3e-5 0.640. On the next run's (380): served 0.671; afresh
            # 0.668; continued 0.666 at either rate, so refused. With every label and half
            # an epoch: passed at 0.7216 against 0.7206 once, refused at 0.7154 against
            # 0.7165 and 0.7156 against 0.7167; a run whose reward model is refused trains
            # the policy against the served one.
            retrain_reward={"epochs": "0.5"},
            # the second round continues from the first round's policy, on the prompts of
            # the loop's snapshot (the flagged ones among them)
            retrain_ppo={"iterations": "10"},
            traffic=128,
            correction_share=0.2,
            eval_prompts=384,
            # Two answers a prompt and policy: one draw of 384 answers put the same RLHF
            # policy's win rate at 0.542 and another at 0.496, so one is not enough.
            eval_samples=2,
            min_new_pairs=40,
            eval_fraction=0.25,
        )

    @classmethod
    def quick(cls) -> Plan:
        # The tiny model's own answer pairs are noise to the panel; the reward model learns
        # from the demonstration-vs-answer pairs, enough to clear the gate.
        return cls(
            demonstrations=64,
            sft={"epochs": "1", "learning_rate": "1e-3", "batch_size": "8", "max_length": "256"},
            pair_prompts=8,
            reference_pairs=64,
            overlap=3,
            max_new_tokens=24,
            reward={
                "epochs": "4",
                "learning_rate": "1e-3",
                "batch_size": "8",
                "max_length": "256",
                "norm_prompts": "8",
                "norm_max_new_tokens": "16",
            },
            ppo={
                "iterations": "2",
                "advantage_estimator": "rloo",
                "samples_per_prompt": "2",
                "rollout_batch_size": "8",
                "minibatches": "2",
                "ppo_epochs": "1",
                "response_length": "24",
                "learning_rate": "1e-4",
                "checkpoint_every": "0",
            },
            retrain_reward={"epochs": "2"},
            traffic=24,
            correction_share=0.5,
            eval_prompts=16,
            min_new_pairs=1,
            # enough held-out pairs for the reward gate's interval to clear chance
            eval_fraction=0.3,
        )


@dataclass
class Figures:
    """What the pipeline measured, for the report."""

    versions: dict[str, str] = field(default_factory=dict)  # role -> registry version
    paths: dict[str, str] = field(default_factory=dict)  # role -> model directory
    agreement: float | None = None
    agreement_detail: dict[str, float] = field(default_factory=dict)
    labelled_pairs: int = 0
    rm_accuracy: dict[str, float] = field(default_factory=dict)  # rm version -> eval accuracy
    jobs: list[dict[str, Any]] = field(default_factory=list)
    gate: list[dict[str, Any]] = field(default_factory=list)
    promoted_versions: list[str] = field(default_factory=list)
    traffic: int = 0
    flags: dict[str, int] = field(default_factory=dict)
    flags_fed_back: int = 0
    retraining_runs: list[dict[str, Any]] = field(default_factory=list)
    lineage_example: list[dict[str, str]] = field(default_factory=list)


def demonstrations(limit: int) -> list[dict[str, str]]:
    """The shipped synthetic clinical demonstrations (`data/demonstrations.jsonl`)."""
    text = resources.files("clinalign.demo").joinpath("data/demonstrations.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines() if line.strip()][:limit]


def _chunks(items: Sequence[Any], size: int = CHUNK) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def _bounded(coros: Sequence[Any], limit: int = 16) -> list[Any]:
    gate = asyncio.Semaphore(limit)

    async def one(coro: Any) -> Any:
        async with gate:
            return await coro

    return list(await asyncio.gather(*(one(c) for c in coros)))


class Pipeline:
    def __init__(self, peers: Peers, plan: Plan, panel: SimulatedPanel, echo: Echo) -> None:
        self.peers = peers
        self.plan = plan
        self.panel = panel
        self.echo = echo
        self.figures = Figures()
        self._keys = itertools.count(1)
        self._demonstrations: list[tuple[str, str, str]] = []  # prompt id, response id, text

    def key(self, what: str) -> str:
        return f"demo-{what}-{next(self._keys):05d}"

    # -- preference store helpers ------------------------------------------------------------

    async def store_prompts(
        self, texts: Sequence[str], source: ppb.PromptSource.ValueType, tags: list[str]
    ) -> list[str]:
        ids: list[str] = []
        for chunk in _chunks(texts):
            resp = await self.peers.preference.SubmitPrompts(
                ppb.SubmitPromptsRequest(
                    idempotency_key=self.key("prompts"),
                    prompts=[ppb.PromptInput(text=t, source=source, tags=tags) for t in chunk],
                )
            )
            ids += resp.ids
        return ids

    async def store_responses(self, rows: Sequence[tuple[str, str, str]]) -> list[str]:
        """rows: (prompt id, text, model version; empty for a human demonstration)."""
        ids: list[str] = []
        for chunk in _chunks(rows):
            resp = await self.peers.preference.SubmitResponses(
                ppb.SubmitResponsesRequest(
                    idempotency_key=self.key("responses"),
                    responses=[
                        ppb.ResponseInput(prompt_id=p, text=t, model_version=v) for p, t, v in chunk
                    ],
                )
            )
            ids += resp.ids
        return ids

    async def snapshot(self, sources: Sequence[ppb.PromptSource.ValueType]) -> ppb.Snapshot:
        return (
            await self.peers.preference.CreateSnapshot(
                ppb.CreateSnapshotRequest(
                    filter=ppb.SnapshotFilter(
                        sources=list(sources),
                        tie_handling=ppb.TIE_HANDLING_DROP,
                        # every annotator's label (see the monitor's cut_snapshot)
                        deduplicate=False,
                        eval_fraction=self.plan.eval_fraction,
                    )
                )
            )
        ).snapshot

    # -- steps -------------------------------------------------------------------------------

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
        for annotator in self.panel.annotators:
            await self.peers.preference_admin.RegisterAnnotator(
                ppb.RegisterAnnotatorRequest(
                    annotator=ppb.Annotator(
                        id=annotator.annotator_id, role="simulated-clinician", specialty="general"
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

    async def candidate_pairs(self, policy: str) -> int:
        self.echo("== 5. candidate pairs from the SFT policy, labelled by the simulated panel")
        prompts = prompt_sets.load("clinical-train", limit=self.plan.pair_prompts)
        sampling = generation_pb2.SamplingParams(
            temperature=1.0, max_new_tokens=self.plan.max_new_tokens
        )

        async def drafts(prompt: str) -> list[str]:
            resp = await self.peers.generation.GenerateCandidates(
                generation_pb2.GenerateCandidatesRequest(
                    input=generation_pb2.GenerationInput(prompt=prompt),
                    n=2,
                    sampling=sampling,
                    model_versions=[policy],
                ),
                timeout=600,
            )
            return [c.text for c in resp.candidates]

        references = self._demonstrations[: self.plan.reference_pairs]
        sampled = await _bounded([drafts(p) for p in prompts], limit=32)
        # GenerateCandidates draws at least two; a reference pair uses the first
        answers = await _bounded([drafts(text) for _, _, text in references], limit=32)
        # An empty answer cannot be stored, and two equal ones make no comparison.
        kept = [
            (p, c)
            for p, c in zip(prompts, sampled, strict=True)
            if all(t.strip() for t in c) and c[0].strip() != c[1].strip()
        ]
        prompts, candidates = [p for p, _ in kept], [c for _, c in kept]
        prompt_ids = await self.store_prompts(prompts, ppb.PROMPT_SOURCE_CURATED, ["pairs"])
        rows = [
            (pid, text, policy)
            for pid, texts in zip(prompt_ids, candidates, strict=True)
            for text in texts
        ]
        response_ids = await self.store_responses(rows)
        tasks = [
            ppb.TaskSpec(prompt_id=pid, response_ids=response_ids[2 * i : 2 * i + 2])
            for i, pid in enumerate(prompt_ids)
        ]
        # A demonstration against the SFT policy's own answer to its prompt: a pair whose
        # better side is usually clear, which shows the reward model what a complete answer
        # looks like (a hospital would use its clinicians' written answers the same way).
        refs = [
            (pid, rid, a[0])
            for (pid, rid, _), a in zip(references, answers, strict=True)
            if a[0].strip()
        ]
        ref_ids = await self.store_responses([(pid, text, policy) for pid, _, text in refs])
        tasks += [
            ppb.TaskSpec(prompt_id=pid, response_ids=[rid, answer_id])
            for (pid, rid, _), answer_id in zip(refs, ref_ids, strict=True)
        ]
        tasks += await self._contrast_tasks()
        for chunk in _chunks(tasks):
            await self.peers.preference.CreateTasks(
                ppb.CreateTasksRequest(
                    idempotency_key=self.key("tasks"),
                    batch_id=PAIRS_BATCH,
                    tasks=list(chunk),
                    overlap=self.plan.overlap,
                    guideline_version=GUIDELINE_VERSION,
                )
            )
        labels = await self.label_queue(PAIRS_BATCH)
        report = (
            await self.peers.preference.GetAgreement(ppb.GetAgreementRequest(batch_id=PAIRS_BATCH))
        ).report
        self.figures.agreement = report.raw_agreement
        self.figures.agreement_detail = {
            "items": report.items,
            "annotators": report.annotators,
            "raw_agreement": report.raw_agreement,
            "krippendorff_alpha": report.krippendorff_alpha,
        }
        self.figures.labelled_pairs = len(tasks)
        self.echo(
            f"   {len(tasks)} pairs, {labels} labels; agreement {report.raw_agreement:.3f} "
            f"(Krippendorff's alpha {report.krippendorff_alpha:.3f})"
        )
        return labels

    async def _contrast_tasks(self) -> list[ppb.TaskSpec]:
        """Contrast pairs: a corpus answer against the same answer with one clinical fault
        (`clinalign.simulation.degrade`), for the panel to label like any other pair."""
        from clinalign.simulation.degrade import DEGRADATIONS

        if not self.plan.contrast_pairs:
            return []
        rows: list[tuple[str, str, str]] = []  # question, answer, faulty answer
        # as many of each fault as the stream offers, up to an equal share each
        share, extra = divmod(self.plan.contrast_pairs, len(CONTRAST_FAULTS))
        quota = {fault: share + (i < extra) for i, fault in enumerate(CONTRAST_FAULTS)}
        stream = iter_qa_examples(CONTRAST_SEED, "train")
        for example in itertools.islice(stream, 50 * self.plan.contrast_pairs):
            for fault, left in quota.items():
                faulty = DEGRADATIONS[fault](example) if left else None
                if faulty:
                    rows.append((example.question, example.answer, faulty))
                    quota[fault] -= 1
                    break
            if not any(quota.values()):
                break
        prompt_ids = await self.store_prompts(
            [q for q, _, _ in rows], ppb.PROMPT_SOURCE_CURATED, ["contrast"]
        )
        response_ids = await self.store_responses(
            [
                row
                for pid, (_, answer, faulty) in zip(prompt_ids, rows, strict=True)
                # the faulty copy names an author that is neither a model nor a clinician,
                # so no snapshot takes it for a demonstration
                for row in ((pid, answer, ""), (pid, faulty, CONTRAST_AUTHOR))
            ]
        )
        return [
            ppb.TaskSpec(prompt_id=pid, response_ids=response_ids[2 * i : 2 * i + 2])
            for i, pid in enumerate(prompt_ids)
        ]

    async def label_queue(self, batch_id: str) -> int:
        """Each simulated annotator takes tasks from the real labelling queue until it is
        empty for them, judges each pair with the rubric and submits the label."""

        async def annotate(annotator_id: str) -> int:
            done = 0
            while True:
                resp = await self.peers.preference.NextTask(
                    ppb.NextTaskRequest(annotator_id=annotator_id, batch_id=batch_id)
                )
                if not resp.HasField("task"):
                    return done
                task = resp.task
                await self.peers.preference.SubmitTask(self._label(task, annotator_id))
                done += 1

        counts = await asyncio.gather(*(annotate(a.annotator_id) for a in self.panel.annotators))
        return sum(counts)

    def _label(self, task: ppb.Task, annotator_id: str) -> ppb.SubmitTaskRequest:
        responses = list(task.responses)
        # Tasks from flags can hold the original and several candidates: the annotator
        # compares the first two it is shown, as a two-way task.
        a, b = responses[0], responses[1]
        judgements = self.panel.compare(task.prompt.text, a.text, b.text)
        mine: Judgement = next(j for j in judgements if j.annotator_id == annotator_id)
        context = ppb.LabelContext(annotator_id=annotator_id, guideline_version=GUIDELINE_VERSION)
        key = f"demo-task-{task.id}-{annotator_id}"
        if len(responses) == 2:
            return ppb.SubmitTaskRequest(
                idempotency_key=key,
                task_id=task.id,
                annotator_id=annotator_id,
                comparison=ppb.Comparison(
                    context=context,
                    response_a_id=a.id,
                    response_b_id=b.id,
                    preference=ppb.Preference.Value(mine.preference),
                    strength=mine.strength,
                    task_id=task.id,
                ),
            )
        # More than two responses (a flagged output against fresh drafts): the annotator
        # ranks them by how many of the others each beats in their own judgement.
        wins = {r.id: 0.0 for r in responses}
        for i, x in enumerate(responses):
            for y in responses[i + 1 :]:
                verdict = next(
                    j
                    for j in self.panel.compare(task.prompt.text, x.text, y.text)
                    if j.annotator_id == annotator_id
                ).preferred
                wins[x.id] += {"a": 1.0, "tie": 0.5, "b": 0.0}[verdict]
                wins[y.id] += {"a": 0.0, "tie": 0.5, "b": 1.0}[verdict]
        ranked = sorted(responses, key=lambda r: -wins[r.id])
        return ppb.SubmitTaskRequest(
            idempotency_key=key,
            task_id=task.id,
            annotator_id=annotator_id,
            ranking=ppb.Ranking(
                context=context, response_ids=[r.id for r in ranked], task_id=task.id
            ),
        )

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

    async def promote_and_activate(self, version: str, kind: str) -> bool:
        promoted = await self.peers.promote(version, self.echo)
        self.figures.gate.append({"version": version, "kind": kind, "promoted": promoted})
        if not promoted:
            return False
        self.figures.promoted_versions.append(version)
        if kind == "reward":
            await self.peers.activate_reward(version)
        else:
            await self.peers.activate_policy(version)
        self.echo(f"   {version} now served by the {kind} service")
        return True

    async def ppo(self, base: str, reward: str, label: str) -> str:
        job = await self.peers.run_job(
            trainer_pb2.JobSpec(
                kind=trainer_pb2.JOB_KIND_PPO,
                base_model=base,
                reward_model_version=reward,
                prompt_set="clinical-train",
                hyperparameters=self.plan.ppo,
                display_name=f"demo {label}",
            ),
            self.echo,
            label,
        )
        self._record_job(label, job)
        self.figures.versions[label] = job.model_version
        return job.model_version

    def _record_job(self, label: str, job: trainer_pb2.Job) -> None:
        wall = job.end_time.ToSeconds() - job.start_time.ToSeconds() if job.start_time else 0
        self.figures.jobs.append(
            {
                "label": label,
                "id": job.id,
                "kind": trainer_pb2.JobKind.Name(job.spec.kind),
                "model_version": job.model_version,
                "wall_s": wall,
                "report": job.report_uri,
            }
        )

    # -- production ----------------------------------------------------------------------

    async def traffic_and_flags(self) -> None:
        self.echo("== 8. simulated EHR traffic → Generate; simulated clinicians flag outputs")
        examples: list[QAExample] = []
        seen: set[str] = set()
        for e in iter_qa_examples(TRAFFIC_SEED, "train"):
            if e.question not in seen:
                seen.add(e.question)
                examples.append(e)
            if len(examples) == self.plan.traffic:
                break

        async def ask(e: QAExample) -> tuple[QAExample, str, str]:
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

        outputs = await _bounded([ask(e) for e in examples], limit=32)
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 300
        while True:
            feedback = await self._feedback_states()
            if not feedback.get("FEEDBACK_STATE_PENDING") or loop.time() > deadline:
                break
            await asyncio.sleep(0.5)
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
