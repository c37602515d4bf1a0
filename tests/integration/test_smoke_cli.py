"""`clinalign smoke`, the Helm chart's `helm test` check, as a real process against a real
generation service on the tiny model: a pass over TLS with the settings a pod has
(CLINALIGN_GENERATION_TARGET, CLINALIGN_TOKENS_FILE, CLINALIGN_TLS_CA_FILE), the human
output, and exit status 1 with the gRPC status for a wrong token and an unreachable target."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from clinalign.cli.generate import SMOKE_PROVENANCE, smoke_problems
from clinalign.common.config import CommonSettings
from clinalign.common.hashing import weights_hash
from clinalign.common.v1 import common_pb2
from clinalign.generation.config import GenerationSettings
from clinalign.generation.server import GenerationApp
from clinalign.generation.v1 import generation_pb2 as pb
from tests.conftest import free_port, serving
from tests.e2e.test_reward_pipeline import _cli
from tests.integration import test_tls

pki = test_tls.pki  # the throwaway CA and server certificate of the TLS tests


def _env(tmp_path: Path, target: str, tokens: Path, **extra: str) -> dict[str, str]:
    """What the `helm test` pod sets; its data directory holds no tokens of its own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLINALIGN_")}
    return env | {
        "CLINALIGN_DATA_DIR": str(tmp_path / "pod"),
        "CLINALIGN_GENERATION_TARGET": target,
        "CLINALIGN_TOKENS_FILE": str(tokens),
        **extra,
    }


def _app(common: CommonSettings, model: Path) -> GenerationApp:
    settings = GenerationSettings(port=0, model_path=model, device="cpu", report_to_monitor=False)
    return GenerationApp(common, settings)


async def test_smoke_passes_over_tls_and_reports_the_provenance(
    common: CommonSettings, tmp_path: Path, tiny_model_dir: Path, pki: dict[str, Path]
) -> None:
    server_common = common.model_copy(
        update={"tls_cert_file": pki["server_cert"], "tls_key_file": pki["server_key"]}
    )
    async with serving(_app(server_common, tiny_model_dir), server_common) as running:
        target = f"localhost:{running.port}"
        env = _env(
            tmp_path, target, common.resolved_tokens_file, CLINALIGN_TLS_CA_FILE=str(pki["ca"])
        )
        code, out, err = await _cli(env, "smoke", "--json", "--deadline", "60")
    assert code == 0, err
    result = json.loads(out)
    assert result["ok"] is True and result["missing"] == [] and "error" not in result
    assert result["target"] == target
    assert result["completion_tokens"] > 0
    assert result["finish_reason"] in ("length", "eos")
    p = result["provenance"]
    assert set(p) == set(SMOKE_PROVENANCE) and all(p.values())
    assert p["model_name"] == "clinalign-policy" and p["model_version"] == "foundation"
    assert p["weights_hash"] == weights_hash(tiny_model_dir)
    assert p["output_id"].startswith("out-")


async def test_smoke_prints_one_line_without_json(
    common: CommonSettings, tmp_path: Path, tiny_model_dir: Path
) -> None:
    async with serving(_app(common, tiny_model_dir), common) as running:
        env = _env(tmp_path, f"127.0.0.1:{running.port}", common.resolved_tokens_file)
        code, out, err = await _cli(env, "smoke", "--max-new-tokens", "4")
    assert code == 0, err
    assert out.startswith("smoke ok: 127.0.0.1:")
    assert "model clinalign-policy foundation" in out and "4 tokens" in out


async def test_smoke_fails_with_unauthenticated_for_an_unknown_token(
    common: CommonSettings, tmp_path: Path, tiny_model_dir: Path
) -> None:
    wrong = tmp_path / "wrong-tokens.json"
    wrong.write_text(
        json.dumps({"tokens": [{"principal": "x", "role": "ehr-client", "token": "not-issued"}]})
    )
    async with serving(_app(common, tiny_model_dir), common) as running:
        env = _env(tmp_path, f"127.0.0.1:{running.port}", wrong)
        code, out, err = await _cli(env, "smoke", "--json")
    assert code == 1
    result = json.loads(out)
    assert result["ok"] is False and result["error"]["code"] == "UNAUTHENTICATED"
    assert "smoke FAILED" in err and "UNAUTHENTICATED" in err


@pytest.mark.parametrize("as_json", [True, False])
async def test_smoke_fails_with_the_grpc_status_for_an_unreachable_target(
    common: CommonSettings, tmp_path: Path, as_json: bool
) -> None:
    target = f"127.0.0.1:{free_port()}"  # nothing listens there
    env = _env(tmp_path, target, common.resolved_tokens_file)
    args = ["smoke", "--deadline", "2", *(["--json"] if as_json else [])]
    code, out, err = await _cli(env, *args)
    assert code == 1
    assert f"smoke FAILED ({target}): Generate failed: " in err
    assert "UNAVAILABLE" in err or "DEADLINE_EXCEEDED" in err
    if as_json:
        assert json.loads(out)["error"]["code"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
    else:
        assert out == ""


async def test_smoke_fails_without_an_ehr_client_token(
    common: CommonSettings, tmp_path: Path
) -> None:
    tokens = tmp_path / "service-only.json"
    tokens.write_text(json.dumps({"tokens": [{"principal": "s", "role": "service", "token": "t"}]}))
    env = _env(tmp_path, f"127.0.0.1:{free_port()}", tokens)
    code, out, err = await _cli(env, "smoke", "--json")
    assert code == 1
    assert json.loads(out)["error"]["code"] == "CLIENT_SETUP"
    assert "holds no token with role 'ehr-client'" in err


def _completion(**provenance: str) -> pb.Completion:
    full = dict.fromkeys(SMOKE_PROVENANCE, "x") | provenance
    return pb.Completion(
        text="draft", finish_reason=pb.FINISH_REASON_EOS, provenance=common_pb2.Provenance(**full)
    )


def test_smoke_problems_names_each_missing_field() -> None:
    assert smoke_problems(_completion()) == []
    assert smoke_problems(_completion(weights_hash="", notice="")) == [
        "provenance.weights_hash",
        "provenance.notice",
    ]
    # An empty text is healthy when the model stopped for a reason (an immediate EOS).
    assert smoke_problems(pb.Completion(finish_reason=pb.FINISH_REASON_EOS)) == [
        f"provenance.{f}" for f in SMOKE_PROVENANCE
    ]
    assert smoke_problems(pb.Completion(provenance=_completion().provenance)) == [
        "text or finish_reason"
    ]
