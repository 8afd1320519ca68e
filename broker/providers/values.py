"""Reading connector attributes and echoing bad input the same way in every provider.

Error messages name the attribute and quote what was given, clipped so a pasted key or
a long blob never fills a terminal (secrets are never passed here).
"""

from __future__ import annotations

from collections.abc import Mapping

from broker.errors import InvalidArgument
from broker.model import Value

#: How much of a bad value a message quotes.
ECHO_LIMIT = 80


def clip(text: str, limit: int = ECHO_LIMIT) -> str:
    """``text`` cut to ``limit`` characters, ``...`` marking a cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def optional_text(config: Mapping[str, Value], name: str) -> str | None:
    """The attribute as stripped text, or None when absent, blank or not text."""
    value = config.get(name)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def required_text(config: Mapping[str, Value], name: str, method: str) -> str:
    """The attribute as given (not stripped), which auth method ``method`` needs."""
    value = config.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InvalidArgument(
            f"attribute '{name}' is required for auth method '{method}'", field=name
        )
    return value
