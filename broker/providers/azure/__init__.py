"""The ``azure`` connector type."""

from broker.providers.azure.provider import AzureProvider

__all__ = ["AzureProvider"]
