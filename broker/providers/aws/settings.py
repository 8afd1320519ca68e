"""Reading an aws connector's configuration the same way everywhere in the provider."""

from __future__ import annotations

import json

from broker.errors import InvalidArgument
from broker.model import Connector
from broker.providers.aws.session import Endpoint
from broker.providers.aws.spec import SPEC


def default_duration(method: str) -> int:
    spec = SPEC.auth_method(method)
    assert spec is not None and spec.default_expiration_seconds is not None
    return spec.default_expiration_seconds


def where_of(connector: Connector) -> Endpoint:
    return Endpoint(connector.name, region_of(connector), optional(connector, "endpoint_url"))


def region_of(connector: Connector) -> str:
    return required(connector, "region")


def optional(connector: Connector, name: str) -> str | None:
    value = connector.config.get(name)
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, list):
        return json.dumps(value)
    return str(value).strip() or None


def required(connector: Connector, name: str) -> str:
    value = optional(connector, name)
    if value is None:
        raise InvalidArgument(
            f"attribute '{name}' is required for connector '{connector.name}'", field=name
        )
    return value
