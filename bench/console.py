"""Console benchmark (issue 24): clinicians labelling through the console's HTTP interface,
against the running services.

The preference and monitor services and the console run as real processes on loopback
(SQLite, as the embedded default), with a real OpenID provider (``oidc-provider-mock``) as
the issuer: each simulated clinician signs in through the authorization-code flow, so every
page's gRPC calls carry a person's JWT that the services verify, as in production.
``--clinicians`` clinicians (20) each loop: open the labelling page (the next task, the
guidelines, their progress), think ``--think`` seconds (uniform, 2-5), submit a label,
think again; each starts after a think time of its own, as people do not all arrive at
once. Then the same with no think time, for the maximum throughput.

The figures are the server's own time (the console's ``Server-Timing`` header: the whole
request, the services' calls included), p50 and p95 for the labelling page and for a
submission, and labels per second. Target: p95 under 200 ms for both, with think time, on
two cores. Rounds: ``--rounds`` fresh stacks; the JSON holds each round and the medians.

    .venv/bin/python bench/console.py [--clinicians 20] [--seconds 60] [--rounds 3]

Last line JSON: {"name": "console", "p95_page_ms": ..., "p95_submit_ms": ..., ...}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the tests' helpers

from tests.conftest import free_port, wait_http_ok
from tests.oidc_idp import running_idp

from clinalign.common.auth import Role, generate_tokens, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.preference.v1 import preference_pb2 as ppb
from clinalign.preference.v1 import preference_pb2_grpc

CSRF = re.compile(r'name="csrf" value="([^"]+)"')
TASK = re.compile(r'action="/label/([^"/]+)" id="label-form"')
SHOWN = re.compile(r'name="shown" value="([^"]+)"')
GUIDE = "rubric-2026-11"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


@contextmanager
def stack(root: Path, issuer: str) -> Iterator[tuple[str, CommonSettings]]:
    """Preference, monitor and console processes; yields the console's URL."""
    from clinalign.cli.stack import ensure_delegation_keys

    data = root / "data"
    data.mkdir(parents=True)
    ports = {name: free_port() for name in ("preference", "monitor", "console", "trainer")}
    common = CommonSettings(
        data_dir=data,
        **{f"{n}_target": f"127.0.0.1:{p}" for n, p in ports.items() if n != "console"},  # type: ignore[arg-type]
    )
    generate_tokens(common.resolved_tokens_file)
    keys = ensure_delegation_keys(common)
    secret = root / "client-secret"
    secret.write_text("bench-secret")
    env = {
        **os.environ,
        "CLINALIGN_DATA_DIR": str(data),
        "CLINALIGN_DELEGATION_KEYS_FILE": str(keys),
        "CLINALIGN_OIDC_ISSUER": issuer,
        "CLINALIGN_OIDC_AUDIENCE": "clinalign",
        "CLINALIGN_CONSOLE_OIDC_CLIENT_ID": "clinalign",
        "CLINALIGN_CONSOLE_OIDC_CLIENT_SECRET_FILE": str(secret),
        "CLINALIGN_CONSOLE_PUBLIC_URL": f"http://127.0.0.1:{ports['console']}",
        **{f"CLINALIGN_{n.upper()}_PORT": str(p) for n, p in ports.items()},
        **{f"CLINALIGN_{n.upper()}_TARGET": f"127.0.0.1:{p}" for n, p in ports.items()},
        **{f"CLINALIGN_{n.upper()}_METRICS_PORT": str(free_port()) for n in ports},
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", f"clinalign.{name}"],
            env=env,
            stdout=(root / f"{name}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for name in ("preference", "monitor", "console")
    ]
    url = f"http://127.0.0.1:{ports['console']}"
    try:
        wait_http_ok(f"{url}/healthz", 120, procs)
        yield url, common
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)


async def seed(common: CommonSettings, tasks: int) -> None:
    """``tasks`` two-answer labelling tasks, each for one clinician."""
    admin = token_for_role(common.resolved_tokens_file, Role.ADMIN)
    async with open_channel(common.preference_target, common, admin) as ch:
        stub = preference_pb2_grpc.PreferenceServiceStub(ch)
        for _ in range(60):
            try:
                await stub.PublishGuidelines(
                    ppb.PublishGuidelinesRequest(version=GUIDE, text="Prefer the safer answer.")
                )
                break
            except Exception:
                await asyncio.sleep(1)
        for start in range(0, tasks, 200):
            n = min(200, tasks - start)
            prompts = await stub.SubmitPrompts(
                ppb.SubmitPromptsRequest(
                    idempotency_key=f"bench-prompts-{start}",
                    prompts=[
                        ppb.PromptInput(
                            text=f"Question {start + i}: I have had a sore throat for a week. "
                            "What should I do?",
                            source=ppb.PROMPT_SOURCE_CURATED,
                        )
                        for i in range(n)
                    ],
                )
            )
            answers = await stub.SubmitResponses(
                ppb.SubmitResponsesRequest(
                    idempotency_key=f"bench-answers-{start}",
                    responses=[
                        ppb.ResponseInput(prompt_id=pid, text=text, model_version="policy-v1")
                        for pid in prompts.ids
                        for text in (
                            "A sore throat usually gets better within a week. See a GP if it "
                            "lasts longer or you cannot swallow.",
                            "You definitely have tonsillitis. Take antibiotics.",
                        )
                    ],
                )
            )
            ids = list(answers.ids)
            await stub.CreateTasks(
                ppb.CreateTasksRequest(
                    idempotency_key=f"bench-tasks-{start}",
                    batch_id="bench",
                    tasks=[
                        ppb.TaskSpec(prompt_id=pid, response_ids=ids[2 * i : 2 * i + 2])
                        for i, pid in enumerate(prompts.ids)
                    ],
                    overlap=1,
                    guideline_version=GUIDE,
                )
            )


class Clinician:
    """One simulated clinician's browser: a session cookie kept by hand (the console's
    cookie is Secure, which an HTTP client will not send over plain HTTP on its own)."""

    def __init__(self, url: str, issuer: str, subject: str) -> None:
        self.http = httpx2.AsyncClient(base_url=url, timeout=30)
        self.issuer = issuer
        self.subject = subject
        self.cookies: dict[str, str] = {}

    async def request(self, method: str, path: str, **kw: Any) -> httpx2.Response:
        header = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        resp = await self.http.request(method, path, headers={"cookie": header}, **kw)
        for raw in resp.headers.get_list("set-cookie"):
            name, _, rest = raw.partition("=")
            value = rest.split(";", 1)[0]
            if value and "max-age=0" not in raw.lower():
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return resp

    async def sign_in(self) -> str:
        async with httpx2.AsyncClient(base_url=self.issuer, timeout=30) as idp:
            put = await idp.put(f"/users/{self.subject}", json={"roles": ["clinician"]})
            assert put.status_code == 204, put.text
            await self.request("GET", "/signin")
            login = await self.request("GET", "/auth/login")
            authorize = login.headers["location"]
            granted = await idp.post(authorize, data={"sub": self.subject})
        back = urlsplit(granted.headers["location"])
        query = parse_qs(back.query)
        done = await self.request(
            "GET", "/auth/callback", params={"code": query["code"][0], "state": query["state"][0]}
        )
        assert done.status_code == 303, done.text
        page = await self.request("GET", "/label")
        csrf = CSRF.findall(page.text)[0]
        if "Register as an annotator" in page.text:
            await self.request("POST", "/label/register", data={"csrf": csrf, "role": "physician"})
        return csrf


async def clinician_loop(
    c: Clinician, csrf: str, until: float, think: tuple[float, float], out: dict[str, list[float]]
) -> None:
    rng = random.Random(c.subject)
    if think[1]:  # clinicians do not all open the page at the same instant
        await asyncio.sleep(rng.uniform(0, think[1]))
    while time.monotonic() < until:
        page = await c.request("GET", "/label")
        out["page"].append(server_ms(page))
        task = TASK.search(page.text)
        if task is None:
            return  # queue empty
        if think[1]:
            await asyncio.sleep(rng.uniform(*think))
        sent = await c.request(
            "POST",
            f"/label/{task.group(1)}",
            data={
                "csrf": csrf,
                "shown": SHOWN.findall(page.text),
                "choice": rng.choice(["left", "right", "tie"]),
                "guideline_version": GUIDE,
            },
        )
        if sent.status_code != 303:
            raise RuntimeError(f"a submission failed: HTTP {sent.status_code}")
        out["submit"].append(server_ms(sent))
        if think[1]:
            await asyncio.sleep(rng.uniform(*think))


def server_ms(resp: httpx2.Response) -> float:
    return float(resp.headers["server-timing"].split("dur=")[1])


async def phase(
    clinicians: list[tuple[Clinician, str]], seconds: float, think: tuple[float, float]
) -> dict[str, Any]:
    out: dict[str, list[float]] = {"page": [], "submit": []}
    started = time.monotonic()
    await asyncio.gather(
        *(clinician_loop(c, csrf, started + seconds, think, out) for c, csrf in clinicians)
    )
    wall = time.monotonic() - started
    return {
        "labels": len(out["submit"]),
        "labels_per_s": round(len(out["submit"]) / wall, 2),
        "p50_page_ms": round(percentile(out["page"], 0.5), 1),
        "p95_page_ms": round(percentile(out["page"], 0.95), 1),
        "p50_submit_ms": round(percentile(out["submit"], 0.5), 1),
        "p95_submit_ms": round(percentile(out["submit"], 0.95), 1),
    }


async def one_round(
    url: str, issuer: str, common: CommonSettings, args: argparse.Namespace
) -> dict[str, Any]:
    await seed(common, args.tasks)
    clinicians = [Clinician(url, issuer, f"u-bench-{i:02d}") for i in range(args.clinicians)]
    signed = [(c, await c.sign_in()) for c in clinicians]
    with_think = await phase(signed, args.seconds, (args.think_min, args.think_max))
    no_think = await phase(signed, args.burst_seconds, (0.0, 0.0))
    for c in clinicians:
        await c.http.aclose()
    return {"think": with_think, "no_think": no_think}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clinicians", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--burst-seconds", type=float, default=20.0)
    parser.add_argument("--think-min", type=float, default=2.0)
    parser.add_argument("--think-max", type=float, default=5.0)
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = []
    for _ in range(args.rounds):
        with running_idp() as issuer, tempfile.TemporaryDirectory() as tmp:
            with stack(Path(tmp), issuer) as (url, common):
                rounds.append(asyncio.run(one_round(url, issuer, common, args)))
        print(json.dumps(rounds[-1]), file=sys.stderr)

    def median(phase_name: str, key: str) -> float:
        return statistics.median(r[phase_name][key] for r in rounds)

    result = {
        "name": "console",
        "clinicians": args.clinicians,
        "think_s": [args.think_min, args.think_max],
        "p50_page_ms": median("think", "p50_page_ms"),
        "p95_page_ms": median("think", "p95_page_ms"),
        "p50_submit_ms": median("think", "p50_submit_ms"),
        "p95_submit_ms": median("think", "p95_submit_ms"),
        "labels_per_s": median("think", "labels_per_s"),
        "max_labels_per_s": median("no_think", "labels_per_s"),
        "no_think_p95_page_ms": median("no_think", "p95_page_ms"),
        "no_think_p95_submit_ms": median("no_think", "p95_submit_ms"),
        "target_p95_ms": 200,
        "rounds": rounds,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
