"""The ``aws`` connector type: temporary, least-privilege AWS credentials per resource."""

from broker.providers.aws.provider import AwsProvider
from broker.providers.aws.spec import SPEC

__all__ = ["SPEC", "AwsProvider"]
