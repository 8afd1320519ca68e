"""Azurite (Microsoft's storage emulator, npm ``azurite``) and the Entra/ARM stand-ins over TLS.

:func:`start_azurite` runs ``azurite-blob`` from tests/node on a free loopback
port with HTTPS (a certificate from the given test CA) and ``--oauth basic``:
Azurite then takes Entra bearer tokens (it checks issuer, audience and expiry,
not the signature) and serves user-delegation keys, and it checks the SAS it
is shown (user-delegation SAS included) against what it signed. The emulator
account is ``devstoreaccount1`` with its well-known key, at ``URL/devstoreaccount1``.

:class:`AzureStandIn` serves the Entra token endpoint, ARM and ACR from one
TLS loopback server (``/acr/NAME/...`` for registries), for daemons and
providers that talk over the network.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from tests.servers.azure_arm import AzureCloud
from tests.servers.azure_entra import EntraAuthority
from tests.servers.ports import free_port
from tests.servers.threaded import ThreadedAiohttpServer
from tests.servers.tls import CertificateAuthority, issue_cert

NODE_DIR = Path(__file__).resolve().parent.parent / "node"
AZURITE = NODE_DIR / "node_modules" / ".bin" / "azurite-blob"
ACCOUNT = "devstoreaccount1"
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
START_TIMEOUT = 30.0


@dataclass(frozen=True)
class Azurite:
    port: int
    ca: CertificateAuthority
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def account_url(self) -> str:
        return f"{self.url}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=https;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.account_url};"
        )

    def seed(self, directory: Path, containers: Mapping[str, Mapping[str, bytes]]) -> None:
        """Create ``containers`` (name -> blobs, name -> content) with the account key,
        trusting the test CA (written into ``directory``)."""
        from azure.storage.blob import BlobServiceClient

        ca_file = self.ca.write(directory)
        admin = BlobServiceClient.from_connection_string(
            self.connection_string, connection_verify=str(ca_file)
        )
        try:
            for name, blobs in containers.items():
                container = admin.create_container(name)
                for blob, content in blobs.items():
                    container.upload_blob(blob, content)
        finally:
            admin.close()


@contextmanager
def start_azurite(directory: Path, ca: CertificateAuthority) -> Iterator[Azurite]:
    cert_path, key_path = issue_cert(ca, "azurite").write(directory, "azurite")
    port = free_port()
    log = directory / "azurite.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                str(AZURITE),
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(port),
                "--location",
                str(directory / "data"),
                "--cert",
                str(cert_path),
                "--key",
                str(key_path),
                "--oauth",
                "basic",
                "--skipApiVersionCheck",
                "--disableTelemetry",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"azurite exited: {log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"azurite not listening: {log.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.05)
        yield Azurite(port, ca, log)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


class AzureStandIn(ThreadedAiohttpServer):
    """Entra + ARM + ACR on one TLS loopback port; ARM's audience is this server's URL."""

    thread_name = "azure stand-in"

    def __init__(
        self,
        ca: CertificateAuthority,
        entra: EntraAuthority | None = None,
        *,
        hosts: tuple[str, ...] = (),
    ) -> None:
        """``hosts``: more names the certificate covers (registry hosts reached by proxy)."""
        self.ca = ca
        self.entra = entra or EntraAuthority()
        self.cloud = AzureCloud(self.entra)
        self.port = 0
        self._cert = issue_cert(ca, "azure-stand-in", dns_names=("localhost", *hosts))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def connector_config(self) -> dict[str, str]:
        """The endpoint attributes that point a connector here."""
        return {
            "authority_host": self.url,
            "arm_endpoint": self.url,
            "acr_endpoint": f"{self.url}/acr/{{name}}",
            "certificate_authority": self.ca.cert_pem,
        }

    async def _serve(self) -> None:
        import ssl

        app = web.Application()
        self.entra.routes(app)
        self.cloud.routes(app)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        with tempfile.TemporaryDirectory(prefix="azure-stand-in-") as tmp:
            cert_path, key_path = self._cert.write(Path(tmp), "server")
            context.load_cert_chain(cert_path, key_path)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.cloud.arm_audience = self.url
        self.entra.resources.add(self.url)
