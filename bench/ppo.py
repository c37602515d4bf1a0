"""PPO iteration benchmark: ClinAlign's PPO against TRL 0.29.1's PPOTrainer.

In one run, on the same policy, reward model, prompts, rollout batch size, response
length, PPO epochs, minibatches, sampling temperature, learning rate, fixed KL coefficient
and missing-EOS penalty, with the same seed:

(a) ``clinalign``: :func:`clinalign.trainer.methods.ppo.trainer.train_ppo`, full fine-tuning, a
    separate critic initialised from the reward model, scored in process by
    :class:`clinalign.reward.scorer.Scorer` on the same reward model;
(b) ``trl``: ``trl.experimental.ppo.PPOTrainer`` from TRL 0.29.1 (``bench/ppo_trl.py``)
    with the same four models: the policy, a copy as reference, the reward model, and a
    value model initialised from it.

Each side runs in its own process, so each has its own peak RSS: (a) in the project's
python, (b) in a virtual environment of its own (``<data_dir>/bench/trl-0.29.1-venv``,
made on first use and reused) holding ``trl==0.29.1`` with the project's versions of
torch, transformers, accelerate and datasets, so that only the PPO code differs.

An iteration is one rollout batch and the PPO epochs on it. Both sides time it the same
way: the interval between two consecutive end-of-iteration callbacks (ClinAlign's
``progress``, TRL's ``on_step_end``), the first iteration dropped as a warm-up (model
loading is outside every interval); a run's figure is the median over the rest.
``*_cpu_s_per_iter`` is the same for the process's CPU time (all its threads).
``peak_rss_mb`` is ClinAlign's process's peak resident memory, ``trl_peak_rss_mb`` TRL's
(``ru_maxrss``, models included).

These machines are shared, and other work can make one iteration tens of times slower
(CPU time too: a virtual CPU's stolen time is counted as the process's). So with
``--rounds R`` each side runs R times, alternating which goes first, and a side's figure
is the lowest of its rounds' medians, since disturbance only ever adds time; every
round's per-iteration figures are in the JSON (``clinalign.rounds``, ``trl.rounds``) to
show how steady they were. Use three rounds or more for a figure worth quoting.

The work each side does per iteration differs in a few places; two matter for reading
the figures: ClinAlign scores only responses that ended (the others get the missing-EOS
score without a reward-model pass) while TRL scores every response, and TRL takes the
rollout log-probabilities from ``generate``'s scores where ClinAlign recomputes them with
a forward pass. ``ended_frac`` (ClinAlign) and ``eos_per_response`` (TRL) show how many
responses ended. An untrained model rarely ends one, so the default policy is the
embedded foundation model (``make bootstrap`` builds it; ``--model PATH`` for another,
such as an SFT policy); without one a tiny untrained model is built, and ``model`` says
so.

Last line JSON:
{"name": "ppo", "clinalign_s_per_iter", "trl_s_per_iter", "ratio" (clinalign / trl),
 "peak_rss_mb", "trl_peak_rss_mb", "cpu_ratio", "config", "device", ...}
Target: ratio at most 1.0 with no more memory than TRL.

    .venv/bin/python bench/ppo.py [--batch 8] [--response-length 32] [--ppo-epochs 2]
        [--minibatches 2] [--iterations 6] [--rounds 1] [--model PATH]
        [--device cpu|cuda] [--bf16] [--threads N] [--only clinalign|trl]

Outputs (models, prompts, settings, the TRL venv's install log) go to
``<data_dir>/bench/ppo/``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from clinalign.common.config import CommonSettings
from clinalign.foundation import build_tiny_model, iter_qa_pairs

TRL_VERSION = "0.29.1"
# Installed into TRL's venv at the project's versions, so that only the PPO code differs.
SHARED_LIBRARIES = (
    "torch",
    "transformers",
    "accelerate",
    "datasets",
    "tokenizers",
    "safetensors",
    "huggingface-hub",
)
HEAD_SEED = 0
TARGETS = {"ratio_max": 1.0, "peak_rss_max": "trl_peak_rss_mb"}
HERE = Path(__file__).resolve().parent
# Per-iteration figures each side reports, echoed under its name in the JSON line.
SIDE_DETAILS = (
    "s_per_iter",
    "cpu_s_per_iter",
    "peak_rss_mb",
    "torch_threads",
    "iteration_s",  # iterations 2.. (the timed ones)
    "iteration_cpu_s",
    "first_iteration_s",
    "trainer_iteration_s",  # ClinAlign's own figure (its metrics' iteration_s)
    "ended_frac",  # ClinAlign: responses that ended with EOS
    "eos_per_response",  # TRL: val/num_eos_tokens over the batch
    "response_length",
    "scores",
    "peak_gpu_mb",
)


def log(message: str) -> None:
    print(f"[ppo bench] {message}", file=sys.stderr, flush=True)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def finite(value: Any, digits: int) -> float | None:
    """A metric rounded for the JSON line, or None where it is missing or not finite."""
    if value is None or not math.isfinite(float(value)):
        return None
    return round(float(value), digits)


# -- set-up


def trl_venv(path: Path, log_file: Path) -> Path:
    """The python of a virtual environment with TRL_VERSION, made (or repaired) if needed."""
    python = path / "bin" / "python"
    check = f"import sys, trl; sys.exit(trl.__version__ != {TRL_VERSION!r})"
    if (
        python.exists()
        and subprocess.run([python, "-c", check], capture_output=True).returncode == 0
    ):
        return python
    if not python.exists():
        log(f"creating {path}")
        subprocess.run([sys.executable, "-m", "venv", path], check=True)
    # A local version tag (2.13.0+cpu) is left off: pip resolves the plain version to the
    # build on this machine's disk, where an unpinned torch would pull a CUDA build.
    pins = [f"{name}=={version(name).split('+')[0]}" for name in SHARED_LIBRARIES]
    log(f"installing trl=={TRL_VERSION} with {', '.join(pins)} (log: {log_file})")
    with log_file.open("w") as out:
        subprocess.run(
            [python, "-m", "pip", "install", f"trl=={TRL_VERSION}", *pins],
            check=True,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return python


def build_models(args: argparse.Namespace, data_dir: Path, out: Path) -> tuple[Path, Path, str]:
    """(policy dir, reward-model dir, a name for the policy). The reward model is a seeded,
    untrained sequence-classification head on the policy: scoring costs the same whatever
    the head's weights."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if args.model is not None:
        policy, name = args.model.resolve(), str(args.model)
    elif (data_dir / "models" / "foundation" / "config.json").is_file():
        policy, name = (data_dir / "models" / "foundation").resolve(), "foundation"
    else:
        log("no foundation model (`make bootstrap` builds it): using a tiny untrained model")
        policy, name = out / "tiny-policy", "tiny"
        build_tiny_model(policy, seed=args.seed)
    reward = out / "reward-model"
    shutil.rmtree(reward, ignore_errors=True)
    torch.manual_seed(HEAD_SEED)
    model = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(reward)
    tokenizer.save_pretrained(reward)
    return policy, reward, name


def prompts(n: int, seed: int) -> list[str]:
    """n synthetic clinical questions from the training split (no patient text)."""
    return [q for q, _ in itertools.islice(iter_qa_pairs(seed=seed, split="train"), n)]


# -- the two sides


def run_side(name: str, command: list[str], device: str, threads: int | None) -> dict[str, Any]:
    """Runs one side's process; its stderr passes through, its last stdout line is JSON."""
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # both trainers take a GPU when they see one
    if threads is not None:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    log(f"running {name}")
    started = time.perf_counter()
    proc = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        sys.exit(f"the {name} side failed (exit {proc.returncode})")
    lines = proc.stdout.strip().splitlines()
    if not lines:
        sys.exit(f"the {name} side printed no result")
    result: dict[str, Any] = json.loads(lines[-1])
    log(f"{name}: {result['s_per_iter']:.3f} s/iteration ({time.perf_counter() - started:.0f}s)")
    return result


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """One side's figures over its rounds: the lowest of the rounds' medians (on a shared
    machine other work only ever adds time, so the least disturbed round is the best
    estimate), the largest peak RSS, and each round's per-iteration figures."""
    summary: dict[str, Any] = {
        "s_per_iter": min(r["s_per_iter"] for r in results),
        "cpu_s_per_iter": min(r["cpu_s_per_iter"] for r in results),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in results),
    }
    if all("peak_gpu_mb" in r for r in results):
        summary["peak_gpu_mb"] = max(r["peak_gpu_mb"] for r in results)
    summary["rounds"] = [{k: r[k] for k in SIDE_DETAILS if k in r} for r in results]
    return summary


def clinalign_worker(config_file: Path) -> None:
    """ClinAlign's side, in a process of its own (``--clinalign-worker CONFIG``)."""
    from clinalign.reward.scorer import Scorer
    from clinalign.trainer.methods.ppo.config import PPOHyperparameters
    from clinalign.trainer.methods.ppo.trainer import train_ppo

    config = json.loads(config_file.read_text())
    device = config["device"]
    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda, but torch sees no GPU")
    hyper = PPOHyperparameters(
        iterations=config["iterations"],
        rollout_batch_size=config["batch_size"],
        minibatches=config["minibatches"],
        gradient_accumulation_steps=1,
        ppo_epochs=config["ppo_epochs"],
        response_length=config["response_length"],
        temperature=config["temperature"],
        # ClinAlign gives an unfinished response this score; TRL subtracts the penalty.
        missing_eos_penalty=-config["missing_eos_penalty"],
        kl_controller="fixed",
        kl_coef=config["kl_coef"],
        learning_rate=config["learning_rate"],
        critic="separate",
        seed=config["seed"],
        checkpoint_every=0,
        bf16=bool(config["bf16"]),
        activation_checkpointing=False,
    )
    scorer = Scorer(Path(config["reward_dir"]), "bench", device)

    def score(prompts: Any, responses: Any) -> list[float]:
        pairs = list(zip(prompts, responses, strict=True))
        return [r.score for r in scorer.score(pairs, truncate=True)]

    marks: list[tuple[float, float]] = []  # (wall, CPU) seconds at the end of each iteration
    figures: list[dict[str, float]] = []

    def progress(iteration: int, iterations: int, metrics: Any) -> None:
        marks.append((time.perf_counter(), time.process_time()))
        figures.append(dict(metrics))
        took = marks[-1][0] - marks[-2][0] if len(marks) > 1 else metrics["iteration_s"]
        print(
            f"[ppo bench: clinalign] iteration {iteration}/{iterations}: {took:.2f}s, "
            f"rss {peak_rss_mb():.0f} MB; score={metrics.get('score', math.nan):.4g}, "
            f"kl={metrics.get('kl', math.nan):.4g}, "
            f"ended={metrics.get('ended_frac', math.nan):.2f}",
            file=sys.stderr,
            flush=True,
        )

    questions = json.loads(Path(config["prompts_file"]).read_text())
    run_dir = Path(config["output_dir"])
    shutil.rmtree(run_dir, ignore_errors=True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    train_ppo(
        questions,
        Path(config["policy_dir"]),
        run_dir,
        hyper,
        score,
        critic_dir=Path(config["reward_dir"]),
        lora=None,
        checkpoint_dir=None,
        resume_from=None,
        progress=progress,
    )
    if len(marks) != config["iterations"]:
        sys.exit(f"ClinAlign ran {len(marks)} iterations, not {config['iterations']}")
    # Iteration k (k >= 2) is the interval between callbacks k-1 and k; the first
    # iteration, a warm-up, would start before loading, so only the trainer's own figure.
    wall = [b[0] - a[0] for a, b in itertools.pairwise(marks)]
    cpu = [b[1] - a[1] for a, b in itertools.pairwise(marks)]
    result: dict[str, Any] = {
        "name": "ppo_clinalign",
        "s_per_iter": round(statistics.median(wall), 4),
        "cpu_s_per_iter": round(statistics.median(cpu), 4),
        "iterations": len(wall),
        "iteration_s": [round(s, 4) for s in wall],
        "iteration_cpu_s": [round(s, 4) for s in cpu],
        "first_iteration_s": round(figures[0]["iteration_s"], 4),
        "trainer_iteration_s": [finite(f.get("iteration_s"), 4) for f in figures],
        "ended_frac": [finite(f.get("ended_frac"), 3) for f in figures],
        "response_length": [finite(f.get("response_length"), 1) for f in figures],
        "scores": [finite(f.get("score"), 4) for f in figures],
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "torch_threads": torch.get_num_threads(),
        "device": device,
    }
    if device == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    print(json.dumps(result), flush=True)


# -- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=8, help="prompts per PPO iteration")
    parser.add_argument("--response-length", type=int, default=32, help="max new tokens")
    parser.add_argument("--ppo-epochs", type=int, default=2)
    parser.add_argument("--minibatches", type=int, default=2, help="per PPO epoch")
    parser.add_argument(
        "--iterations", type=int, default=6, help="PPO iterations, the first a warm-up"
    )
    parser.add_argument("--temperature", type=float, default=0.7, help="TRL's default")
    parser.add_argument("--learning-rate", type=float, default=3e-6)
    parser.add_argument("--kl-coef", type=float, default=0.05, help="fixed β (TRL's default)")
    parser.add_argument(
        "--missing-eos-penalty",
        type=float,
        default=1.0,
        help="TRL subtracts it from an unfinished response's score; ClinAlign scores it -P",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="the policy; default: <data_dir>/models/foundation, else a tiny untrained model",
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides")
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of each side, alternating which goes first"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="OMP/MKL threads for both sides (default: torch's)",
    )
    parser.add_argument(
        "--only", choices=("clinalign", "trl"), default=None, help="run one side (development)"
    )
    parser.add_argument("--clinalign-worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clinalign_worker is not None:
        clinalign_worker(args.clinalign_worker)
        return
    if args.iterations < 2:
        parser.error("--iterations must be at least 2: the first is a warm-up")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    data_dir = CommonSettings().data_dir
    out = (data_dir / "bench" / "ppo").resolve()
    out.mkdir(parents=True, exist_ok=True)
    trl_python = None
    if args.only != "clinalign":
        trl_python = trl_venv(
            data_dir.resolve() / "bench" / f"trl-{TRL_VERSION}-venv", out / "trl-venv-install.log"
        )
    policy, reward, model_name = build_models(args, data_dir, out)
    prompts_file = out / "prompts.json"
    prompts_file.write_text(json.dumps(prompts(args.iterations * args.batch, args.seed)))
    settings = {
        "batch_size": args.batch,
        "response_length": args.response_length,
        "ppo_epochs": args.ppo_epochs,
        "minibatches": args.minibatches,
        "iterations": args.iterations,
        "temperature": args.temperature,
        "learning_rate": args.learning_rate,
        "kl_coef": args.kl_coef,
        "missing_eos_penalty": args.missing_eos_penalty,
        "seed": args.seed,
        "device": args.device,
        "bf16": args.bf16,
        "rounds": args.rounds,
        "threads": args.threads,
    }
    common = {
        **settings,
        "policy_dir": str(policy),
        "reward_dir": str(reward),
        "prompts_file": str(prompts_file),
    }
    commands: dict[str, list[str]] = {}
    if args.only != "trl":
        config_file = out / "clinalign.json"
        config_file.write_text(json.dumps({**common, "output_dir": str(out / "clinalign-run")}))
        me = str(Path(__file__).resolve())
        commands["clinalign"] = [sys.executable, me, "--clinalign-worker", str(config_file)]
    if trl_python is not None:
        config_file = out / "trl.json"
        config_file.write_text(json.dumps({**common, "output_dir": str(out / "trl-run")}))
        commands["trl"] = [str(trl_python), str(HERE / "ppo_trl.py"), "--config", str(config_file)]
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in commands}
    for r in range(args.rounds):
        # Alternate which side goes first, so drift in the machine's speed hits both.
        for side in list(commands)[:: 1 if r % 2 == 0 else -1]:
            log(f"round {r + 1}/{args.rounds}")
            runs[side].append(run_side(side, commands[side], args.device, args.threads))

    line: dict[str, Any] = {"name": "ppo"}
    summary = {side: summarise(results) for side, results in runs.items()}
    a, b = summary.get("clinalign"), summary.get("trl")
    if a is not None:
        line["clinalign_s_per_iter"] = a["s_per_iter"]
    if b is not None:
        line["trl_s_per_iter"] = b["s_per_iter"]
    if a is not None and b is not None:
        line["ratio"] = round(a["s_per_iter"] / b["s_per_iter"], 3)
    if a is not None:
        line["peak_rss_mb"] = a["peak_rss_mb"]
    if b is not None:
        line["trl_peak_rss_mb"] = b["peak_rss_mb"]
    if a is not None and b is not None:
        line["cpu_ratio"] = round(a["cpu_s_per_iter"] / b["cpu_s_per_iter"], 3)
        line["targets_met"] = {
            "ratio": line["ratio"] <= TARGETS["ratio_max"],
            "memory": a["peak_rss_mb"] <= b["peak_rss_mb"],
        }
    line.update(summary)
    line.update(
        {
            "config": settings,
            "device": args.device,
            "model": model_name,
            "versions": {
                "trl": TRL_VERSION,
                **{name: version(name) for name in ("torch", "transformers", "accelerate")},
            },
            "cpu_count": os.cpu_count(),
            "targets": TARGETS,
        }
    )
    print(json.dumps(line))


if __name__ == "__main__":
    main()
