"""``broker serve`` with another design of the peer-credential relay (``BENCH_RELAY``):
``asyncio``, ``thread`` (the daemon's own), ``splice`` or ``heldgil`` (see
:mod:`fakeprovider.relays`). Only for ``bench/bench_relay.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # bench/, for fakeprovider

from broker.identity.attestors.attestation import Attestation
from broker.rpc import server
from broker.rpc.acceptor import PeerAcceptor
from fakeprovider.relays import DESIGNS

_FACTORY = DESIGNS[os.environ["BENCH_RELAY"]]


class DesignAcceptor(PeerAcceptor):
    def __init__(self, attestation: Attestation | None = None) -> None:
        super().__init__(attestation, relay=_FACTORY)


server.PeerAcceptor = DesignAcceptor  # type: ignore[misc, assignment]

if __name__ == "__main__":
    from broker.cli.main import main

    main()
