"""The one-cluster kubeconfig document, for every writer of one (``broker exec``'s temp
KUBECONFIG, ``[[outputs]]`` format ``kubeconfig``): the same shape kubectl reads.

Standard library only: the CLI's fast path imports it.
"""

from __future__ import annotations

from typing import Any


def single_context(name: str, cluster: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """A kubeconfig with one cluster, one user and one context, all called ``name``, and
    that context current."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
    }
