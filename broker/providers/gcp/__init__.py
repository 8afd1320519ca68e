"""The ``gcp`` connector type: Google Cloud credentials handing out short-lived access tokens."""

from broker.providers.gcp.provider import GcpProvider

__all__ = ["GcpProvider"]
