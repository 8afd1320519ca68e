"""The ``docker`` connector type: registry username/password credentials."""

from broker.providers.docker.ids import DOCKER_HUB, canonical_registry
from broker.providers.docker.provider import DockerProvider

__all__ = ["DOCKER_HUB", "DockerProvider", "canonical_registry"]
