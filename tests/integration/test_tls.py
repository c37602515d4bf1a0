"""TLS and mutual TLS from certificate files, with a throwaway CA made in the test."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from clinalign.common.auth import Role, token_for_role
from clinalign.common.channels import open_channel
from clinalign.common.config import CommonSettings
from clinalign.monitor.config import MonitorSettings
from clinalign.monitor.server import MonitorApp
from clinalign.monitor.v1 import monitor_pb2, monitor_pb2_grpc
from tests.conftest import serving


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer: str,
    *,
    ca: bool = False,
    san: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture
def pki(tmp_path: Path) -> dict[str, Path]:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("clinalign-test-ca", ca_key, ca_key, "clinalign-test-ca", ca=True)
    files = {"ca": _write(tmp_path / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))}
    for name in ("server", "client"):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(name, key, ca_key, "clinalign-test-ca", san=name == "server")
        files[f"{name}_cert"] = _write(
            tmp_path / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM)
        )
        files[f"{name}_key"] = _write(tmp_path / f"{name}.key", _pem_key(key))
    return files


async def _stats(target: str, settings: CommonSettings, **kw: object) -> None:
    token = token_for_role(settings.resolved_tokens_file, Role.ML_ENGINEER)
    async with open_channel(target, settings, token, **kw) as ch:  # type: ignore[arg-type]
        await monitor_pb2_grpc.MonitorServiceStub(ch).GetStats(
            monitor_pb2.GetStatsRequest(), timeout=5
        )


async def test_tls_server_accepts_clients_that_trust_its_ca(
    common: CommonSettings, pki: dict[str, Path]
) -> None:
    server_common = common.model_copy(
        update={"tls_cert_file": pki["server_cert"], "tls_key_file": pki["server_key"]}
    )
    app = MonitorApp(server_common, MonitorSettings(port=0))
    async with serving(app, server_common) as running:
        target = f"localhost:{running.port}"
        await _stats(target, common.model_copy(update={"tls_ca_file": pki["ca"]}))
        # A plaintext client cannot talk to a TLS port.
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _stats(target, common)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mtls_rejects_a_client_without_a_certificate(
    common: CommonSettings, pki: dict[str, Path]
) -> None:
    server_common = common.model_copy(
        update={
            "tls_cert_file": pki["server_cert"],
            "tls_key_file": pki["server_key"],
            "tls_client_ca_file": pki["ca"],
        }
    )
    app = MonitorApp(server_common, MonitorSettings(port=0))
    async with serving(app, server_common) as running:
        target = f"localhost:{running.port}"
        client_settings = common.model_copy(update={"tls_ca_file": pki["ca"]})
        await _stats(target, client_settings, client_cert=(pki["client_cert"], pki["client_key"]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _stats(target, client_settings)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_renewed_certificate_files_serve_without_a_restart(
    common: CommonSettings, pki: dict[str, Path], tmp_path: Path
) -> None:
    """The server's files are replaced by a certificate from another CA (as a renewal
    from cert-manager or an updated Secret would): new connections get it at once."""
    import os

    from clinalign.common.certificates import issue

    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    cert.write_bytes(pki["server_cert"].read_bytes())
    key.write_bytes(pki["server_key"].read_bytes())
    server_common = common.model_copy(update={"tls_cert_file": cert, "tls_key_file": key})
    app = MonitorApp(server_common, MonitorSettings(port=0))
    async with serving(app, server_common) as running:
        target = f"localhost:{running.port}"
        await _stats(target, common.model_copy(update={"tls_ca_file": pki["ca"]}))
        renewed = issue(tmp_path / "renewed", ["localhost"])
        # Write to a temporary name and rename over, as Kubernetes swaps a Secret volume.
        for src, dst in ((renewed["tls.crt"], cert), (renewed["tls.key"], key)):
            tmp = dst.with_suffix(".new")
            tmp.write_bytes(src.read_bytes())
            os.replace(tmp, dst)
        await _stats(target, common.model_copy(update={"tls_ca_file": renewed["ca.crt"]}))
        with pytest.raises(grpc.aio.AioRpcError):
            await _stats(target, common.model_copy(update={"tls_ca_file": pki["ca"]}))


async def test_the_charts_generated_and_the_clis_certificates_carry_mutual_tls(
    common: CommonSettings, tmp_path: Path
) -> None:
    """The CA and certificate the Helm chart generates (and `clinalign tls new`'s) work
    for real: a service serves with it, another presents it as its client certificate,
    under the Service's DNS name; a client without one is refused."""
    import base64

    from typer.testing import CliRunner

    from clinalign.cli import app as cli
    from tests.helm_support import FULLNAME, named, render

    secret = named(render("default"), "Secret", f"{FULLNAME}-tls")
    chart_dir = tmp_path / "chart"
    chart_dir.mkdir()
    for name in ("ca.crt", "tls.crt", "tls.key"):
        (chart_dir / name).write_bytes(base64.b64decode(secret["data"][name]))
    cli_dir = tmp_path / "cli"
    made = CliRunner().invoke(cli, ["tls", "new", str(cli_dir), "--release", FULLNAME])
    assert made.exit_code == 0, made.output
    for files in (chart_dir, cli_dir):
        tls = {
            "tls_cert_file": files / "tls.crt",
            "tls_key_file": files / "tls.key",
            "tls_client_ca_file": files / "ca.crt",
            "tls_ca_file": files / "ca.crt",
        }
        server_common = common.model_copy(update=tls)
        app = MonitorApp(server_common, MonitorSettings(port=0))
        async with serving(app, server_common) as running:
            target = f"127.0.0.1:{running.port}"
            name = f"{FULLNAME}-monitor"  # the Service's name, as the services call it
            await _stats(target, server_common, server_name=name)
            await _stats(target, server_common, server_name=f"{name}.clinalign.svc")
            anonymous = common.model_copy(update={"tls_ca_file": files / "ca.crt"})
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _stats(target, anonymous, server_name=name)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_pod_whose_certificate_is_renewed_keeps_serving_and_calling(
    common: CommonSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One certificate per pod serves and, for mutual TLS, identifies it when it calls
    (as the chart mounts it). Renewed under another CA while the service runs, both sides
    take it up without a restart: the server at the next handshake, ClinAlign's clients
    by opening their channels again."""
    import asyncio
    import os

    from clinalign.common import server as server_module
    from clinalign.common.certificates import issue
    from clinalign.common.channels import Clients

    # Connections live a second (300 s in production), so the renewed certificate must
    # carry the next handshake on both sides, as it must after a real renewal.
    monkeypatch.setattr(server_module, "MAX_CONNECTION_AGE_S", 1)
    monkeypatch.setattr(server_module, "MAX_CONNECTION_AGE_GRACE_S", 1)
    live = tmp_path / "live"
    first = issue(tmp_path / "first", ["localhost"])
    live.mkdir()
    for name, path in first.items():
        (live / name).write_bytes(path.read_bytes())
    pod = common.model_copy(
        update={
            "tls_cert_file": live / "tls.crt",
            "tls_key_file": live / "tls.key",
            "tls_client_ca_file": live / "ca.crt",
            "tls_ca_file": live / "ca.crt",
        }
    )
    app = MonitorApp(pod, MonitorSettings(port=0))
    async with serving(app, pod) as running:
        caller = pod.model_copy(update={"monitor_target": f"localhost:{running.port}"})
        token = token_for_role(common.resolved_tokens_file, Role.ML_ENGINEER)
        async with Clients(caller, token=token) as clients:
            await clients.monitor.GetStats(monitor_pb2.GetStatsRequest(), timeout=5)
            renewed = issue(tmp_path / "renewed", ["localhost"])
            for name, path in renewed.items():
                tmp = live / f"{name}.new"
                tmp.write_bytes(path.read_bytes())
                os.replace(tmp, live / name)
            await asyncio.sleep(2.5)  # the old connection is gone
            await clients.monitor.GetStats(monitor_pb2.GetStatsRequest(), timeout=5)
