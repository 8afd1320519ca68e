"""The ``kubernetes`` connector type (generic API servers, kubeconfig auto-configuration)."""

from __future__ import annotations

from broker.providers.kubernetes.provider import KubernetesProvider
from broker.providers.kubernetes.spec import RESOURCE_TYPE, SPEC

__all__ = ["RESOURCE_TYPE", "SPEC", "KubernetesProvider"]
