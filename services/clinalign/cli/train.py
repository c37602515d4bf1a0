"""``clinalign snapshot``, ``clinalign train`` and ``clinalign eval``: the ML engineer's
commands for data, training and evaluation, mounted on the main ``clinalign`` app."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from clinalign.cli.options import DataDir, rpc

if TYPE_CHECKING:
    from clinalign.common.channels import Clients

snapshot_app = typer.Typer(no_args_is_help=True, help="Preference-store snapshots.")
train_app = typer.Typer(no_args_is_help=True, help="Train a model (runs in this process).")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a model and check the gate.")

REFUSED_EXIT = 3  # `clinalign eval` exit status when the promotion gate refuses the model


@snapshot_app.command("export")
def snapshot_export(
    snapshot_id: Annotated[str, typer.Argument(help="Snapshot id or content hash.")],
    out: Annotated[Path, typer.Option(help="JSONL file to write (both splits).")],
    data_dir: DataDir = None,
) -> None:
    """Export a snapshot's preference pairs as JSONL, with its manifest beside it
    (`<out>.manifest.json`) so training records the snapshot's content hash."""
    from clinalign.preference.v1 import preference_pb2 as pb
    from clinalign.trainer.methods.reward_model.commands import MANIFEST_SUFFIX

    async def fetch(clients: Clients) -> tuple[bytes, str, int]:
        stub = clients.preference
        got = await stub.GetSnapshot(pb.GetSnapshotRequest(id=snapshot_id), timeout=30)
        chunks, records = [], 0
        request = pb.ExportSnapshotRequest(
            id=snapshot_id, format=pb.EXPORT_FORMAT_JSONL, kind=pb.EXPORT_KIND_PREFERENCE
        )
        async for part in stub.ExportSnapshot(request, timeout=600):
            chunks.append(part.chunk)
            records = records or part.records
        return b"".join(chunks), got.snapshot.manifest_json, records

    data, manifest, records = rpc(data_dir, fetch)
    out.write_bytes(data)
    out.with_name(out.name + MANIFEST_SUFFIX).write_text(manifest)
    typer.echo(f"{records} preference records -> {out} (manifest beside it)")


@train_app.command("reward-model")
def train_reward_model(
    snapshot: Annotated[Path, typer.Option(help="Snapshot export (`clinalign snapshot export`).")],
    base_model: Annotated[Path, typer.Option(help="The policy's model directory.")],
    out: Annotated[Path, typer.Option(help="New model directory to write.")],
    epochs: Annotated[float, typer.Option(help="Passes over the training pairs.")] = 1.0,
    learning_rate: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-5,
    batch_size: Annotated[int, typer.Option(help="Pairs per optimiser step.")] = 8,
    max_length: Annotated[int, typer.Option(help="Longest pair in tokens.")] = 1024,
    seed: Annotated[int, typer.Option(help="Seed for data order, init and sampling.")] = 0,
    lora_r: Annotated[int, typer.Option(help="LoRA rank; 0 trains all weights.")] = 0,
    lora_alpha: Annotated[int | None, typer.Option(help="LoRA alpha; default 2 x rank.")] = None,
    lora_dropout: Annotated[float, typer.Option(help="LoRA dropout.")] = 0.0,
) -> None:
    """Fit a Bradley-Terry reward model to a snapshot's train split (TRL RewardTrainer)."""
    from rich.progress import Progress

    from clinalign.common.errors import ClinAlignError
    from clinalign.trainer.methods.reward_model.commands import train_command

    with Progress(transient=True) as bar:
        task = bar.add_task("reward model", total=None)

        def progress(step: int, total: int, metrics: Mapping[str, float]) -> None:
            loss = metrics.get("loss", float("nan"))
            bar.update(task, completed=step, total=total, description=f"loss {loss:.4f}")

        try:
            manifest = train_command(
                snapshot,
                base_model,
                out,
                lora_r=lora_r,
                lora_alpha=lora_alpha,
                lora_dropout=lora_dropout,
                epochs=epochs,
                learning_rate=learning_rate,
                batch_size=batch_size,
                max_length=max_length,
                seed=seed,
                progress=progress,
            )
        except ClinAlignError as err:
            typer.echo(f"error: {err}", err=True)
            raise typer.Exit(1) from None
    metrics: dict[str, Any] = manifest.get("metrics", {})
    typer.echo(f"reward model -> {out}")
    typer.echo(json.dumps(metrics, indent=2, sort_keys=True))


@eval_app.command("reward-model")
def eval_reward_model(
    model: Annotated[Path, typer.Option(help="Reward-model directory to evaluate.")],
    snapshot: Annotated[Path, typer.Option(help="Snapshot export; its eval split is used.")],
    baseline: Annotated[
        Path | None, typer.Option(help="The model it would replace, scored on the same pairs.")
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(
            help="Non-inferiority margin against --baseline, in pairwise accuracy; default: "
            "the trainer's CLINALIGN_TRAINER_GATE_REWARD_MARGIN, as the promotion gate uses."
        ),
    ] = None,
    report: Annotated[Path | None, typer.Option(help="Also write the report here (.md)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Held-out accuracy with a bootstrap CI, per category and tag, calibration, the
    annotators' own agreement, the paired difference to the baseline, and the promotion
    verdict (exit 3 when refused)."""
    from clinalign.common.errors import ClinAlignError
    from clinalign.trainer.config import TrainerSettings
    from clinalign.trainer.methods.reward_model.commands import eval_command
    from clinalign.trainer.methods.reward_model.evaluation import promotion_check

    if margin is None and baseline is not None:
        margin = TrainerSettings().gate_reward_margin
    try:
        result = eval_command(model, snapshot, baseline, margin=margin)
    except ClinAlignError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(1) from None
    if report is not None:
        report.write_text(result.to_markdown())
    typer.echo(result.to_json() if as_json else result.to_markdown())
    if promotion_check(result):
        raise typer.Exit(REFUSED_EXIT)
