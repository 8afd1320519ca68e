"""`broker store migrate`: copy every connector from one store to another.

Typically an existing SQLite store into the PostgreSQL database a fleet will
share::

    broker store migrate --from sqlite:/var/lib/broker/broker.db \\
        --to 'postgresql://broker@db.internal/broker?sslmode=verify-full&sslrootcert=/etc/ca.pem'

Runs without a daemon, reading the stores directly with the daemon's key
(``BROKER_SECRET_KEY`` / ``BROKER_SECRET_KEY_FILE`` / ``--config``), which is
also the key the destination is sealed with (or ``--new-key-file``: the way
to rotate the key): rows keep their ids, names, revisions, timestamps and
secrets exactly. The destination must hold no
connector yet (never a merge); a tampered row in the source stops the copy
before anything is written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from broker.cli.options import Output, OutputOpt
from broker.cli.shapes import print_data
from broker.errors import FailedPrecondition, InvalidArgument

app = typer.Typer(no_args_is_help=True, help="Move a connector store (SQLite <-> PostgreSQL).")


@app.command("migrate")
def migrate(
    source: Annotated[
        str, typer.Option("--from", help="sqlite:PATH, a file path, or postgresql://...")
    ],
    target: Annotated[str, typer.Option("--to", help="postgresql://... or sqlite:PATH")],
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML config (data_dir, key file)")
    ] = None,
    new_key_file: Annotated[
        Path | None,
        typer.Option(
            "--new-key-file",
            help="Seal the copy with this key instead (key rotation: base64 of 32 bytes, 0600)",
        ),
    ] = None,
    output: OutputOpt = Output.table,
) -> None:
    """Copy every connector and setting into an empty store, secrets sealed as before
    (or with a new key: --new-key-file)."""
    import anyio

    from broker.config import load_settings
    from broker.store.crypto import load_secret_key
    from broker.store.factory import SQLITE_PREFIX
    from broker.store.postgres_dsn import is_postgres_url

    settings = load_settings(config)
    if not is_postgres_url(source):
        path = Path(source.removeprefix(SQLITE_PREFIX)).expanduser()
        if not path.is_file():  # never create an empty store and "copy" nothing
            raise InvalidArgument(f"--from: no SQLite store at {path}", field="from")
    key = load_secret_key(settings.data_dir, os.environ, key_file=settings.secret_key_file)
    new_key = None
    if new_key_file is not None:
        new_key = load_secret_key(settings.data_dir, {}, key_file=new_key_file)
    copied, kept, shown = anyio.run(_migrate, source, target, key, new_key)
    if output is Output.table:
        print(f"copied {copied} connector(s) and {kept} setting(s) from {shown[0]} to {shown[1]}")
    else:
        print_data(
            output, {"connectors": copied, "settings": kept, "from": shown[0], "to": shown[1]}
        )


async def _migrate(
    source: str, target: str, key: bytes, new_key: bytes | None = None
) -> tuple[int, int, tuple[str, str]]:
    """The copy itself; ``new_key``: the key the destination is sealed with, if not ``key``."""
    from broker.clock import SystemClock
    from broker.store.crypto import SecretBox
    from broker.store.factory import make_store

    clock = SystemClock()
    src = make_store(source, SecretBox(key), clock)
    dst = make_store(target, SecretBox(new_key or key), clock)
    if src.location == dst.location:
        raise InvalidArgument("--from and --to name the same store", field="to")
    await src.open()
    try:
        contents = await src.export()
        await dst.open()
        try:
            present = await dst.list()
            if present:
                raise FailedPrecondition(
                    f"{dst.location} already holds {len(present)} connector(s) "
                    f"({', '.join(c.name for c in present[:5])}): migrate only into an empty "
                    "store (nothing was copied)"
                )
            for connector, secret_names in contents.connectors:
                await dst.create(connector, secret_names)
            for name, value in contents.settings.items():
                await dst.set_setting(name, value)
        finally:
            await dst.close()
    finally:
        await src.close()
    return len(contents.connectors), len(contents.settings), (src.location, dst.location)
