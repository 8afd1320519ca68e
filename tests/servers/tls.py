"""Throw-away certificate authorities and certificates for TLS test servers.

Every TLS test server (registry, Kubernetes API stand-in, daemon TCP port)
needs a CA the client can be told to trust and a server certificate valid for
loopback (SAN ``DNS:localhost, IP:127.0.0.1``), sometimes client certificates
for mTLS. EC P-256 keys keep generation fast (~1 ms) and every client here
(Go, OpenSSL, aiohttp) accepts them.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: Backdate validity so a clock a little behind never sees a "not yet valid" cert.
_BACKDATE = timedelta(hours=1)
_VALIDITY = timedelta(days=2)


def self_signed_builder(
    key: CertificatePublicKeyTypes, common_name: str
) -> x509.CertificateBuilder:
    """A certificate named ``common_name`` issued by itself for ``key``, valid from an hour
    ago for two days: what a CA or a bare self-signed certificate starts from."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
    )


def private_key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> str:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


@dataclass(frozen=True)
class CertificateAuthority:
    """A self-signed CA that can issue server and client certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> str:
        return _cert_pem(self.cert)

    @property
    def cert_pem_base64(self) -> str:
        """The CA as base64-encoded PEM, the other form PEM attributes accept."""
        return base64.b64encode(self.cert_pem.encode()).decode()

    def write(self, directory: Path, name: str = "ca") -> Path:
        path = directory / f"{name}.pem"
        path.write_text(self.cert_pem)
        return path


@dataclass(frozen=True)
class IssuedCert:
    """A certificate with its private key, issued by :attr:`ca`."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    ca: CertificateAuthority

    @property
    def cert_pem(self) -> str:
        return _cert_pem(self.cert)

    @property
    def key_pem(self) -> str:
        return private_key_pem(self.key)

    @property
    def cert_der_base64(self) -> str:
        """Standard base64 of the DER certificate (a JWS ``x5c`` entry)."""
        return base64.b64encode(self.cert.public_bytes(serialization.Encoding.DER)).decode()

    def write(self, directory: Path, name: str) -> tuple[Path, Path]:
        """Write ``NAME.crt`` and ``NAME.key`` (0600); return their paths."""
        cert_path = directory / f"{name}.crt"
        key_path = directory / f"{name}.key"
        cert_path.write_text(self.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_text(self.key_pem)
        return cert_path, key_path


def make_ca(common_name: str = "broker test CA") -> CertificateAuthority:
    """A fresh self-signed CA, valid for two days."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        self_signed_builder(key.public_key(), common_name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(key=key, cert=cert)


def issue_cert(
    ca: CertificateAuthority,
    common_name: str = "localhost",
    *,
    dns_names: tuple[str, ...] = ("localhost",),
    ip_addresses: tuple[str, ...] = ("127.0.0.1", "::1"),
    client: bool = False,
    uris: tuple[str, ...] = (),
) -> IssuedCert:
    """A leaf certificate signed by ``ca``: a server cert, or a client cert if ``client``."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if not client:
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    elif uris:  # a workload identity, e.g. a SPIFFE ID
        san = [x509.UniformResourceIdentifier(u) for u in uris]
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return IssuedCert(key=key, cert=cert, ca=ca)


def issue_client_cert(
    ca: CertificateAuthority, common_name: str = "broker-client", *, uris: tuple[str, ...] = ()
) -> IssuedCert:
    """A client certificate for mTLS, the user named by ``common_name`` (or a URI SAN)."""
    return issue_cert(ca, common_name, client=True, uris=uris)
