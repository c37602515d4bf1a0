"""End to end through the public surfaces: clinician comparisons go into a real preference
service over gRPC, a snapshot is cut, and the `clinalign` command (real processes) exports
it, trains a reward model on it from the tiny policy, evaluates it, and refuses an
untrained model at the promotion gate."""

from __future__ import annotations

import asyncio
import json
import os
import random
import sys
from collections.abc import Callable
from pathlib import Path

from clinalign.common.auth import Role
from clinalign.common.config import CommonSettings
from clinalign.preference.config import PreferenceSettings
from clinalign.preference.server import PreferenceApp
from clinalign.preference.v1 import preference_pb2 as pb
from clinalign.preference.v1 import preference_pb2_grpc
from tests.conftest import client, serving

Token = Callable[[Role], str]
COMPLAINTS = ("chest pain", "a headache", "a fever", "shortness of breath", "a rash")
DURATIONS = ("since this morning", "for two days", "for a week", "since last night")
ADVICE = ("Rest and drink plenty of fluids.", "Keep a diary of your symptoms.")
SAFE = ("If it gets worse, seek urgent care.", "See a doctor today if it does not settle.")
UNSAFE = ("There is nothing to worry about.", "No need to see anyone about this.")


async def _populate(stub: preference_pb2_grpc.PreferenceServiceStub, prompts: int) -> str:
    """Clinician comparisons where the safety-netted answer is always preferred."""
    await stub.RegisterAnnotator(
        pb.RegisterAnnotatorRequest(annotator=pb.Annotator(id="ann-0", role="physician"))
    )
    await stub.PublishGuidelines(
        pb.PublishGuidelinesRequest(version="g1", text="Prefer the safer answer.")
    )
    rng = random.Random(0)
    texts = [
        f"I have had {rng.choice(COMPLAINTS)} {rng.choice(DURATIONS)}. What should I do? ({i})"
        for i in range(prompts)
    ]
    pids = (
        await stub.SubmitPrompts(
            pb.SubmitPromptsRequest(
                idempotency_key="e2e-prompts",
                prompts=[pb.PromptInput(text=t, source=pb.PROMPT_SOURCE_CURATED) for t in texts],
            )
        )
    ).ids
    answers = [
        (pid, f"{advice} {tail}", good)
        for pid in pids
        for advice in ADVICE
        for tail, good in ((rng.choice(SAFE), True), (rng.choice(UNSAFE), False))
    ]
    rids = (
        await stub.SubmitResponses(
            pb.SubmitResponsesRequest(
                idempotency_key="e2e-responses",
                responses=[
                    pb.ResponseInput(prompt_id=p, text=t, model_version="policy-v1")
                    for p, t, _ in answers
                ],
            )
        )
    ).ids
    by_prompt: dict[str, dict[bool, list[str]]] = {}
    for (pid, _, good), rid in zip(answers, rids, strict=True):
        by_prompt.setdefault(pid, {True: [], False: []})[good].append(rid)
    context = pb.LabelContext(annotator_id="ann-0", guideline_version="g1")
    comparisons = [
        pb.Comparison(
            context=context,
            response_a_id=bad if flip else good,
            response_b_id=good if flip else bad,
            preference=pb.PREFERENCE_B if flip else pb.PREFERENCE_A,
        )
        for pid, sides in by_prompt.items()
        for flip, (good, bad) in enumerate(zip(sides[True], sides[False], strict=True))
    ]
    await stub.SubmitComparisons(
        pb.SubmitComparisonsRequest(idempotency_key="e2e-comparisons", comparisons=comparisons)
    )
    created = await stub.CreateSnapshot(
        pb.CreateSnapshotRequest(filter=pb.SnapshotFilter(eval_fraction=0.3))
    )
    return created.snapshot.id


async def _cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "clinalign.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_snapshot_to_trained_and_gated_reward_model(
    common: CommonSettings,
    token: Token,
    tmp_path: Path,
    tiny_model_dir: Path,
    tiny_reward_dir: Path,
) -> None:
    app = PreferenceApp(common, PreferenceSettings(port=0))
    async with serving(app, common) as running:
        async with client(running, common, token(Role.ADMIN)) as ch:
            snapshot_id = await _populate(preference_pb2_grpc.PreferenceServiceStub(ch), 60)
        env = dict(
            os.environ,
            CLINALIGN_DATA_DIR=str(common.data_dir),
            CLINALIGN_PREFERENCE_TARGET=f"127.0.0.1:{running.port}",
        )
        export = tmp_path / "snapshot.jsonl"
        code, out, err = await _cli(env, "snapshot", "export", snapshot_id, "--out", str(export))
        assert code == 0, err
    model = tmp_path / "reward-model"
    train = ("train", "reward-model", "--snapshot", str(export), "--base-model")
    code, out, err = await _cli(
        env,
        *train,
        str(tiny_model_dir),
        "--out",
        str(model),
        "--epochs",
        "2",
        "--learning-rate",
        "1e-3",
        "--batch-size",
        "16",
    )
    assert code == 0, err
    manifest = json.loads((model / "clinalign_manifest.json").read_text())
    snapshot_manifest = json.loads(export.with_name(export.name + ".manifest.json").read_text())
    assert manifest["snapshot_hash"] == snapshot_manifest["content_hash"]
    assert manifest["snapshot_hash_source"] == "manifest"

    code, out, err = await _cli(
        env, "eval", "reward-model", "--model", str(model), "--snapshot", str(export), "--json"
    )
    assert code == 0, out + err
    report = json.loads(out)
    assert report["accuracy"] >= 0.8 and report["ci_low"] > 0.5

    refused = await _cli(
        env,
        "eval",
        "reward-model",
        "--model",
        str(tiny_reward_dir),
        "--snapshot",
        str(export),
        "--baseline",
        str(model),
    )
    assert refused[0] == 3
    assert "not above chance" in refused[1] or "below" in refused[1]
