"""The TRL half of ``bench/ppo.py``: PPO iterations of TRL 0.29.1's
``trl.experimental.ppo.PPOTrainer``, timed the way ``bench/ppo.py`` times ClinAlign's.

It runs in its own virtual environment (``bench/ppo.py`` creates it, with ``trl==0.29.1``
and the project's torch, transformers, accelerate and datasets), never in the project's
``.venv``, so it imports nothing from ClinAlign. ``bench/ppo.py`` writes the settings as a
JSON file and starts it::

    <trl-venv>/bin/python bench/ppo_trl.py --config CONFIG.json

CONFIG.json: ``policy_dir``, ``reward_dir``, ``prompts_file`` (a JSON list of questions),
``batch_size``, ``response_length``, ``ppo_epochs``, ``minibatches``, ``iterations``,
``seed``, ``temperature``, ``learning_rate``, ``kl_coef``, ``missing_eos_penalty`` (TRL
subtracts it from the score of a response without EOS), ``device`` ("cpu" or "cuda"),
``bf16`` and ``output_dir``.

The models are those ClinAlign's PPO gets: the policy, a copy of it as the reference, the
reward model, and a value model initialised from the reward model (``num_labels=1``).
Prompts are rendered with the tokenizer's chat template and the assistant turn opened, as
ClinAlign renders them. ``total_episodes`` is ``iterations * batch_size``, so
``trainer.train()`` runs exactly ``iterations`` PPO iterations (rollout, then the PPO
epochs). An iteration's time is the interval between two ``on_step_end`` callbacks
(TRL calls it once per iteration, after its optimiser steps and metrics); the first
iteration (from ``on_train_begin``) is a warm-up and is dropped. Model loading is outside
every interval.

Last line JSON: {"name": "ppo_trl", "s_per_iter" (median after the warm-up),
"iterations", "iteration_s", "peak_rss_mb", "trl_version", ...}
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

# Before TRL is imported: no experiment trackers, no warning about experimental APIs.
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("WANDB_DISABLED", "true")


def log(message: str) -> None:
    print(f"[ppo bench: trl] {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("bf16"):
        # PPOTrainer builds its own Accelerator without a mixed-precision argument, and
        # transformers 5 no longer exports TrainingArguments.bf16 to the environment, so
        # accelerate reads this variable or runs in fp32.
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"

    import torch
    import trl
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        PrinterCallback,
        TrainerCallback,
        set_seed,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    class IterationClock(TrainerCallback):
        """Timestamps the end of every PPO iteration and echoes TRL's metrics to stderr."""

        def __init__(self) -> None:
            self.start = (0.0, 0.0)
            self.ends: list[tuple[float, float]] = []  # (wall, CPU) seconds
            self.metrics: list[dict[str, float]] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.start = (time.perf_counter(), time.process_time())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            self.ends.append((time.perf_counter(), time.process_time()))
            previous = self.ends[-2] if len(self.ends) > 1 else self.start
            log(
                f"iteration {len(self.ends)}/{state.max_steps}: "
                f"{self.ends[-1][0] - previous[0]:.2f}s, rss {peak_rss_mb():.0f} MB"
            )

        def on_log(
            self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any
        ) -> None:
            if logs:
                self.metrics.append({k: float(v) for k, v in logs.items()})
                keys = ("objective/scores", "objective/kl", "loss/policy_avg", "val/num_eos_tokens")
                log("  " + ", ".join(f"{k}={logs[k]:.4g}" for k in keys if k in logs))

    device = config["device"]
    if config["iterations"] < 2:
        raise SystemExit("iterations must be at least 2: the first is a warm-up")
    set_seed(config["seed"])
    tokenizer = AutoTokenizer.from_pretrained(config["policy_dir"])
    tokenizer.padding_side = "left"  # TRL generates from left-padded queries
    prompts = json.loads(Path(config["prompts_file"]).read_text())
    rendered = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in prompts
    ]
    # The template renders every special token, so the tokenizer adds none.
    dataset = Dataset.from_dict(
        {"input_ids": tokenizer(rendered, add_special_tokens=False).input_ids}
    )

    policy = AutoModelForCausalLM.from_pretrained(config["policy_dir"])
    ref_policy = AutoModelForCausalLM.from_pretrained(config["policy_dir"])
    reward_model = AutoModelForSequenceClassification.from_pretrained(
        config["reward_dir"], num_labels=1
    )
    value_model = AutoModelForSequenceClassification.from_pretrained(
        config["reward_dir"], num_labels=1
    )

    batch_size = config["batch_size"]
    args = PPOConfig(
        output_dir=config["output_dir"],
        seed=config["seed"],
        # TRL's rollout batch is per_device_train_batch_size * gradient_accumulation_steps,
        # split into num_mini_batches; each minibatch's micro-batches step
        # per_device_train_batch_size apart, so a minibatch is one micro-batch here and
        # each minibatch ends in an optimiser step, as in ClinAlign.
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=config["minibatches"],
        num_ppo_epochs=config["ppo_epochs"],
        total_episodes=config["iterations"] * batch_size,
        # The whole rollout batch in one generate call and one forward pass per model.
        local_rollout_forward_batch_size=batch_size,
        response_length=config["response_length"],
        stop_token="eos",
        temperature=config["temperature"],
        missing_eos_penalty=config["missing_eos_penalty"],
        learning_rate=config["learning_rate"],
        adam_epsilon=1e-5,
        kl_coef=config["kl_coef"],
        # PPOConfig's defaults would turn these on; ClinAlign runs without them.
        gradient_checkpointing=False,
        bf16=bool(config.get("bf16")),
        use_cpu=device == "cpu",
        # No sample tables, evaluation, checkpoints, trackers or progress bars.
        num_sample_generations=0,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
    )
    clock = IterationClock()
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref_policy,
        reward_model=reward_model,
        train_dataset=dataset,
        value_model=value_model,
        callbacks=[clock],
    )
    trainer.remove_callback(PrinterCallback)  # it prints TRL's metrics to stdout
    if str(trainer.accelerator.device).split(":")[0] != device:
        raise SystemExit(f"TRL runs on {trainer.accelerator.device}, not the requested {device}")

    log(
        f"{config['iterations']} iterations of {batch_size} prompts, "
        f"{config['response_length']} new tokens at most, on {device}"
    )
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()

    if len(clock.ends) != config["iterations"]:
        raise SystemExit(f"TRL ran {len(clock.ends)} iterations, not {config['iterations']}")
    # Iteration k (k >= 2) is the interval between on_step_end k-1 and k; the first, a
    # warm-up, runs from on_train_begin.
    wall = [b[0] - a[0] for a, b in itertools.pairwise(clock.ends)]
    cpu = [b[1] - a[1] for a, b in itertools.pairwise(clock.ends)]
    eos = [m.get("val/num_eos_tokens", math.nan) / batch_size for m in clock.metrics]
    result: dict[str, Any] = {
        "name": "ppo_trl",
        "s_per_iter": round(statistics.median(wall), 4),
        "cpu_s_per_iter": round(statistics.median(cpu), 4),
        "iterations": len(wall),
        "iteration_s": [round(s, 4) for s in wall],
        "iteration_cpu_s": [round(s, 4) for s in cpu],
        "first_iteration_s": round(clock.ends[0][0] - clock.start[0], 4),
        # TRL's val/num_eos_tokens over the batch: about the fraction of responses that ended.
        "eos_per_response": [round(x, 3) for x in eos],
        "scores": [round(m.get("objective/scores", math.nan), 4) for m in clock.metrics],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "trl_version": trl.__version__,
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="the settings bench/ppo.py writes")
    args = parser.parse_args()
    if args.config is None:
        # `make bench` runs every bench/*.py with the project's python; this half only
        # runs inside TRL's virtual environment, started by bench/ppo.py.
        log("nothing to do: bench/ppo.py runs this file in its own virtual environment")
        return
    print(json.dumps(run(json.loads(args.config.read_text()))), flush=True)


if __name__ == "__main__":
    main()
