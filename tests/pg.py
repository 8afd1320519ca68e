"""A real PostgreSQL server for the tests: Debian's package, initdb into a temp dir.

The server runs as an unprivileged user (initdb refuses root): ``postgres``
when the Debian package created it, otherwise one made here. It listens on
127.0.0.1 on a free port (password auth, TLS with a CA of its own) and on a
Unix socket in its directory (trust, for the tests' own SQL), and is stopped
by the PID in ``postmaster.pid``. ``make test`` installs the package when it
is missing (Makefile ``test-deps``).
"""

from __future__ import annotations

import datetime as dt
import glob
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

#: The superuser's password, with characters that need quoting in a URL: tests check
#: it never shows up in logs, ``broker status`` or ``broker config show``.
PASSWORD = "pg-Pa55:w/rd@" + "7c1e"
#: Who runs the server when the tests run as root.
SERVER_USER = "postgres"
FALLBACK_USER = "broker-pgtest"


def bindir() -> Path:
    """The newest installed server's binaries (Debian keeps them off PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=_version_key)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    raise RuntimeError(
        "PostgreSQL server binaries not found: install the Debian package 'postgresql' "
        "(make test-deps does)"
    )


def _version_key(path: str) -> int:
    part = Path(path).parts[-3]
    return int(part) if part.isdigit() else 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """The account to run the server as; None when the tests are not root."""
    if os.geteuid() != 0:
        return None
    for name in (SERVER_USER, FALLBACK_USER):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", FALLBACK_USER],
        check=True,
    )
    return pwd.getpwnam(FALLBACK_USER)


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs. pg_ctl daemonizes the postmaster, so once it exits it
    stays a zombie until PID 1 reaps it (up to ~1.5 s in this sandbox); a zombie holds
    no port, socket or file any more."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class PostgresServer:
    """One initdb'd cluster in a temp dir; start, stop (by PID) and restart it."""

    def __init__(self) -> None:
        self.bin = bindir()
        self.user = _server_user()
        self.root = Path(tempfile.mkdtemp(prefix="broker-pg-"))
        os.chmod(self.root, 0o700)
        self.data = self.root / "data"
        self.log_path = self.root / "server.log"
        self.port = free_port()
        self.ca_path = self.root / "ca.pem"
        if self.user is not None:
            os.chown(self.root, self.user.pw_uid, self.user.pw_gid)
        self._initdb()
        self._make_certs()

    # -- setup -------------------------------------------------------------------
    def _run(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = list(args)
        if self.user is not None:
            cmd = [
                "setpriv",
                f"--reuid={self.user.pw_uid}",
                f"--regid={self.user.pw_gid}",
                "--clear-groups",
                *cmd,
            ]
        return subprocess.run(
            cmd, capture_output=True, text=True, check=False, cwd=self.root, timeout=60
        )

    def _initdb(self) -> None:
        pwfile = self.root / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.user is not None:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        done = self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}",
            "--no-sync",
            "-E",
            "UTF8",
            "--locale=C",
        )
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}\n{done.stderr}")

    def _make_certs(self) -> None:
        """A CA and a server certificate for 127.0.0.1 / localhost (sslmode=verify-full)."""
        now = dt.datetime.now(dt.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "broker test PostgreSQL CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        self.ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        os.chmod(self.ca_path, 0o644)
        for name, data in (
            ("server.crt", cert.public_bytes(serialization.Encoding.PEM)),
            (
                "server.key",
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            ),
        ):
            path = self.data / name
            path.write_bytes(data)
            os.chmod(path, 0o600)
            if self.user is not None:
                os.chown(path, self.user.pw_uid, self.user.pw_gid)

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> None:
        options = " ".join(
            [
                "-c listen_addresses=127.0.0.1",
                f"-p {self.port}",
                f"-k {self.root}",
                "-c fsync=off",
                "-c max_connections=300",
                "-c ssl=on",
                "-c ssl_cert_file=server.crt",
                "-c ssl_key_file=server.key",
            ]
        )
        done = self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log_path),
            "-o",
            options,
            "-w",
            "-t",
            "30",
            "start",
        )
        if done.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start:\n{done.stdout}\n{self.log()}")

    @property
    def pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (OSError, ValueError):
            return None

    def stop(self, *, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT to the postmaster, by PID): sessions are cut, data kept."""
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGINT)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not _running(pid):
                return
            time.sleep(0.02)
        os.kill(pid, signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    # -- use -------------------------------------------------------------------------
    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL over the Unix socket as the superuser; the unaligned output."""
        done = subprocess.run(
            [
                str(self.bin / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.root),
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout.strip()

    def create_database(self) -> str:
        name = "t_" + secrets.token_hex(6)
        self.psql(f"CREATE DATABASE {name}")
        return name

    def url(self, database: str, *, password: bool = True, tls: bool = False) -> str:
        auth = f"postgres:{quote(PASSWORD, safe='')}" if password else "postgres"
        url = f"postgresql://{auth}@127.0.0.1:{self.port}/{database}"
        if tls:
            url += f"?sslmode=verify-full&sslrootcert={self.ca_path}"
        return url


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One server for the whole session; each test takes a database of its own."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_database(postgres: PostgresServer) -> str:
    return postgres.create_database()


@pytest.fixture
def pg_url(postgres: PostgresServer, pg_database: str) -> str:
    return postgres.url(pg_database)
