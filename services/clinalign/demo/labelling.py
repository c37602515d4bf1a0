"""The demonstration's labelling step: candidate pairs from the SFT policy (two of its
answers to one prompt, a demonstration against its answer, a curated answer against a copy
with one clinical fault), put on the preference store's labelling queue, where each
simulated annotator takes tasks and submits the label the rubric gives it."""

from __future__ import annotations

import asyncio
import itertools
import zlib

from clinalign.common.v1 import common_pb2
from clinalign.demo.plan import GUIDELINE_VERSION, PAIRS_BATCH
from clinalign.demo.steps import Steps, bounded, chunks
from clinalign.foundation.corpus import iter_qa_examples
from clinalign.generation.v1 import generation_pb2
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.simulation.panel import Judgement
from clinalign.trainer import prompt_sets

CONTRAST_SEED = 31  # contrast pairs: train phrasings, a stream of their own
# The clinical error types a safety team writes contrast pairs for: a complete answer against
# the same answer with one fault. Doubled doses are left out: telling a doubled dose from the
# right one needs each medicine's limits, which a small reward model cannot learn from a few
# hundred pairs, and pairs it cannot tell apart teach it only that stating a dose is risky.
# Padding is in because a reward model trained without it preferred an answer repeated three
# times, a length bias PPO exploits. Answers meant for another question were tried and left
# out too: the reward model learned nothing from them (see docs/experiments.md, 2026-11-26).
CONTRAST_AUTHOR = "synthetic:contrast-fault"
CONTRAST_FAULTS = (
    "drop_escalation",
    "drop_dose",
    "drop_follow_up",
    "overclaim",
    "reassure_contraindicated",
    "repeat_sentences",
)


class LabellingSteps(Steps):
    """Step 5, and the labelling queue that step 9 uses again for flagged outputs."""

    async def candidate_pairs(self, policy: str) -> int:
        self.echo("== 5. candidate pairs from the SFT policy, labelled by the simulated panel")
        prompts = prompt_sets.load("clinical-train", limit=self.plan.pair_prompts)
        references = self._demonstrations[: self.plan.reference_pairs]
        sampled = await bounded([self._drafts(p, policy) for p in prompts], limit=32)
        # GenerateCandidates draws at least two; a reference pair uses the first
        answers = await bounded([self._drafts(t, policy) for _, _, t in references], limit=32)
        self._sft_answers = [(p, t) for p, c in zip(prompts, sampled, strict=True) for t in c]
        tasks = await self._sampled_tasks(prompts, sampled, policy)
        tasks += await self._reference_tasks(references, answers, policy)
        tasks += await self._contrast_tasks()
        for chunk in chunks(tasks):
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
        await self._record_agreement(len(tasks), labels)
        return labels

    async def _drafts(self, prompt: str, policy: str) -> list[str]:
        # Seeded by the plan's seed and the prompt, not by arrival: the generation service
        # draws each seeded request from its own generator, so the same plan samples the
        # same answers however the concurrent requests were batched (up to floating-point
        # differences between batch shapes).
        seed = zlib.crc32(f"{self.plan.seed}:{prompt}".encode()) & 0x3FFFFFFF
        resp = await self.peers.generation.GenerateCandidates(
            generation_pb2.GenerateCandidatesRequest(
                input=generation_pb2.GenerationInput(prompt=prompt),
                n=2,
                sampling=generation_pb2.SamplingParams(
                    temperature=1.0, max_new_tokens=self.plan.max_new_tokens, seed=seed
                ),
                model_versions=[policy],
            ),
            timeout=600,
        )
        return [c.text for c in resp.candidates]

    async def _sampled_tasks(
        self, prompts: list[str], sampled: list[list[str]], policy: str
    ) -> list[ppb.TaskSpec]:
        """Two of the policy's answers to one prompt."""
        # An empty answer cannot be stored, and two equal ones make no comparison.
        kept = [
            (p, c)
            for p, c in zip(prompts, sampled, strict=True)
            if all(t.strip() for t in c) and c[0].strip() != c[1].strip()
        ]
        texts, candidates = [p for p, _ in kept], [c for _, c in kept]
        prompt_ids = await self.store_prompts(texts, ppb.PROMPT_SOURCE_CURATED, ["pairs"])
        rows = [
            (pid, text, policy)
            for pid, texts in zip(prompt_ids, candidates, strict=True)
            for text in texts
        ]
        response_ids = await self.store_responses(rows)
        return [
            ppb.TaskSpec(prompt_id=pid, response_ids=response_ids[2 * i : 2 * i + 2])
            for i, pid in enumerate(prompt_ids)
        ]

    async def _reference_tasks(
        self, references: list[tuple[str, str, str]], answers: list[list[str]], policy: str
    ) -> list[ppb.TaskSpec]:
        """A demonstration against the SFT policy's own answer to its prompt: a pair whose
        better side is usually clear, which shows the reward model what a complete answer
        looks like (a hospital would use its clinicians' written answers the same way)."""
        refs = [
            (pid, rid, a[0])
            for (pid, rid, _), a in zip(references, answers, strict=True)
            if a[0].strip()
        ]
        ref_ids = await self.store_responses([(pid, text, policy) for pid, _, text in refs])
        return [
            ppb.TaskSpec(prompt_id=pid, response_ids=[rid, answer_id])
            for (pid, rid, _), answer_id in zip(refs, ref_ids, strict=True)
        ]

    async def _record_agreement(self, pairs: int, labels: int) -> None:
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
        self.figures.labelled_pairs = pairs
        self.echo(
            f"   {pairs} pairs, {labels} labels; agreement {report.raw_agreement:.3f} "
            f"(Krippendorff's alpha {report.krippendorff_alpha:.3f})"
        )

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
            # Signed in as that clinician: the store records the label as theirs.
            preference = self.peers.clinician_preference[annotator_id]
            done = 0
            while True:
                resp = await preference.NextTask(ppb.NextTaskRequest(batch_id=batch_id))
                if not resp.HasField("task"):
                    return done
                task = resp.task
                await preference.SubmitTask(self._label(task, annotator_id))
                done += 1

        counts = await asyncio.gather(*(annotate(a.annotator_id) for a in self.panel.annotators))
        return sum(counts)

    def _annotations(self, task: ppb.Task, context: ppb.LabelContext) -> list[ppb.ErrorAnnotation]:
        """The error annotations an annotator adds to a task's answers: each clinical
        fault the rubric finds in one (``SimulatedPanel.faults``: a criterion failed badly),
        with its category and severity, as a clinician marks errors while labelling (the
        cost model's labels)."""
        return [
            ppb.ErrorAnnotation(
                context=context,
                response_id=r.id,
                category=common_pb2.ErrorCategory.Value(category),
                severity=common_pb2.Severity.Value(severity),
                comment=f"rubric: {criterion}",
            )
            for r in task.responses
            for criterion, category, severity, _ in self.panel.faults(task.prompt.text, r.text)
        ]

    def _label(self, task: ppb.Task, annotator_id: str) -> ppb.SubmitTaskRequest:
        responses = list(task.responses)
        # Tasks from flags can hold the original and several candidates: the annotator
        # compares the first two it is shown, as a two-way task.
        a, b = responses[0], responses[1]
        judgements = self.panel.compare(task.prompt.text, a.text, b.text)
        mine: Judgement = next(j for j in judgements if j.annotator_id == annotator_id)
        context = ppb.LabelContext(annotator_id=annotator_id, guideline_version=GUIDELINE_VERSION)
        key = f"demo-task-{task.id}-{annotator_id}"
        annotations = self._annotations(task, context)
        if len(responses) == 2:
            return ppb.SubmitTaskRequest(
                idempotency_key=key,
                task_id=task.id,
                annotator_id=annotator_id,
                annotations=annotations,
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
            annotations=annotations,
            ranking=ppb.Ranking(
                context=context, response_ids=[r.id for r in ranked], task_id=task.id
            ),
        )
