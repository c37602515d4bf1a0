"""PPO's KL anchor: the policy whose distribution the KL penalty keeps the trained one near
(Ziegler et al. 2019 §2: the pretrained or SFT model rho; Ouyang et al. 2022 eq. 2: π^SFT).

Every retraining round of the loop starts PPO from the served policy, itself a PPO output.
Were the reference the policy a round starts from, each round would bound the KL to the
previous round only, and the drift from SFT would compound (issue 20: KL to SFT 2.90 → 5.40
over two rounds). So the anchor passes down the lineage: a PPO output records its anchor in
its manifest (``kl_anchor_version``, ``kl_anchor_path``), and a run that starts from it
takes that anchor again; a run from anything else (an SFT or DPO policy, a foundation
model) anchors to the model it starts from. No field of the job contract is needed: the
anchor follows from the base model.

Imports nothing heavy: the trainer service resolves the anchor when it accepts a job.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from clinalign.common.artefacts import MANIFEST_NAME

VERSION_KEY = "kl_anchor_version"  # the anchor's registry version ("" for a bare directory)
PATH_KEY = "kl_anchor_path"  # the anchor's model directory


@dataclass(frozen=True)
class Anchor:
    version: str  # registry version, "" when the anchor was given as a directory
    path: Path  # model directory


def kl_anchor(base_dir: Path, base_version: str = "") -> Anchor:
    """The KL anchor of a PPO run that starts from the model at ``base_dir`` (registry
    version ``base_version``, or ""): the anchor its manifest records, if it is a PPO
    output that records one, else the base itself."""
    manifest_path = Path(base_dir) / MANIFEST_NAME
    manifest = (
        json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    )
    recorded = manifest.get(PATH_KEY) if isinstance(manifest, dict) else None
    if recorded:
        return Anchor(str(manifest.get(VERSION_KEY, "")), Path(str(recorded)))
    return Anchor(base_version, Path(base_dir).resolve())
