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
