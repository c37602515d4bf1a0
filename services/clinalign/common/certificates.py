"""A private CA and one certificate for every name the services are called by, for
platform teams without cert-manager (``clinalign tls new``; the Helm chart generates the
same itself). ECDSA P-256; the certificate serves and, for mutual TLS, identifies the
services to each other (server and client auth)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICES = ("generation", "reward", "preference", "trainer", "monitor")
FRONT_DOORS = ("console",)  # HTTPS behind the Ingress, with the same certificate


def service_names(release: str, namespace: str, cluster_domain: str = "cluster.local") -> list[str]:
    """The names the chart's Services have: each in every DNS form, and the headless one."""
    names = []
    for service in SERVICES:
        base = f"{release}-{service}"
        names += [
            base,
            f"{base}.{namespace}",
            f"{base}.{namespace}.svc",
            f"{base}.{namespace}.svc.{cluster_domain}",
            f"{base}-headless",
        ]
    for door in FRONT_DOORS:
        base = f"{release}-{door}"
        names += [base, f"{base}.{namespace}", f"{base}.{namespace}.svc"]
        names.append(f"{base}.{namespace}.svc.{cluster_domain}")
    return names


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def issue(
    out: Path, names: Sequence[str], ca_days: int = 3650, cert_days: int = 825
) -> dict[str, Path]:
    """Writes ca.crt, tls.crt and tls.key (mode 0600) into ``out``; returns their paths."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "clinalign-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=ca_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=cert_days))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    paths = {"ca.crt": out / "ca.crt", "tls.crt": out / "tls.crt", "tls.key": out / "tls.key"}
    paths["ca.crt"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["tls.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(paths["tls.key"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(_pem_key(key))
    return paths
