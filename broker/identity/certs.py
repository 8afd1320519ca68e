"""The identity in a client certificate the TLS handshake already verified.

Order: a SPIFFE ID (``spiffe://`` URI SAN), else the first DNS SAN, else the
subject CN. The chain was checked against ``tls_client_ca`` by gRPC before
the call reaches us; this only reads the name out of the leaf.
"""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.x509.oid import NameOID


@functools.lru_cache(maxsize=1024)
def cert_identity(pem: bytes) -> str | None:
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith("spiffe://"):
                return uri
        dns = san.get_values_for_type(x509.DNSName)
        if dns:
            return dns[0]
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if cns:
        value = cns[0].value
        return value if isinstance(value, str) else value.decode(errors="replace")
    return None
