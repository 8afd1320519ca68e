"""What the ``aws`` connector type declares: four resource types, six auth methods.

Attribute names follow the AWS CLI's own (``aws_access_key_id``, ``region``)
so values copied from ``~/.aws`` need no translation. Expiration bounds come
from STS: AssumeRole sessions last 900 s up to the role's maximum (at most
12 h); GetSessionToken / GetFederationToken sessions 900 s to 36 h.
"""

from __future__ import annotations

from broker.model import (
    AttributeSpec,
    AttrKind,
    AuthMethodSpec,
    ConnectorTypeSpec,
    ResourceTypeSpec,
)

CONNECTOR_TYPE = "aws"

RT_GENERIC = "aws-generic"
RT_S3 = "s3-bucket"
RT_EKS = "kubernetes-cluster"
RT_ECR = "docker-registry"

AUTH_IMPLICIT = "implicit"
AUTH_SECRET_KEY = "secret-key"
AUTH_STS_TOKEN = "sts-token"
AUTH_IAM_ROLE = "iam-role"
AUTH_SESSION_TOKEN = "session-token"
AUTH_FEDERATION_TOKEN = "federation-token"

#: STS bounds (seconds).
MIN_SESSION = 900
ROLE_MAX_SESSION = 43200
ROLE_DEFAULT_SESSION = 3600
USER_MAX_SESSION = 129600
USER_DEFAULT_SESSION = 43200
#: Sessions the container endpoint mints from a secret-key connector (renewed by the cache).
SDK_DEFAULT_SESSION = 3600

GENERIC_RESOURCE = ResourceTypeSpec(
    resource_type=RT_GENERIC,
    name="Generic AWS resource",
    description=(
        "Any AWS service in the connector's region, reached with plain AWS credentials. "
        "The one resource is the region itself."
    ),
    supports_instances=False,
    id_formats=("the region (canonical), e.g. us-east-1",),
)

S3_RESOURCE = ResourceTypeSpec(
    resource_type=RT_S3,
    name="S3 bucket",
    description=(
        "One S3 bucket. Minting methods issue tokens limited to that bucket (plus "
        "s3:ListAllMyBuckets)."
    ),
    supports_instances=True,
    id_formats=(
        "s3://BUCKET (canonical)",
        "arn:aws:s3:::BUCKET",
        "BUCKET (dots allowed)",
    ),
)

EKS_RESOURCE = ResourceTypeSpec(
    resource_type=RT_EKS,
    name="EKS Kubernetes cluster",
    description=(
        "One EKS cluster in the connector's region, handed out as a Kubernetes token "
        "credential (a presigned STS GetCallerIdentity URL, as aws eks get-token makes)."
    ),
    supports_instances=True,
    id_formats=(
        "the cluster name (canonical)",
        "arn:aws:eks:REGION:ACCOUNT:cluster/NAME",
    ),
)

ECR_RESOURCE = ResourceTypeSpec(
    resource_type=RT_ECR,
    name="ECR container registry",
    description=(
        "The account's ECR registry in the connector's region (every repository in it), "
        "handed out as a Docker username/password credential."
    ),
    supports_instances=False,
    id_formats=(
        "ACCOUNT.dkr.ecr.REGION.amazonaws.com (canonical)",
        "https://ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY (scheme and repository dropped)",
        "arn:aws:ecr:REGION:ACCOUNT:repository[/NAME]",
    ),
)

_REGION = AttributeSpec(
    "region",
    "AWS region the connector works in, e.g. us-east-1. Resources of other regions are refused.",
    required=True,
)
_ENDPOINT = AttributeSpec(
    "endpoint_url",
    "Custom endpoint for every AWS service the connector calls (STS included): "
    "S3-compatible stores, local emulators. Also handed to clients.",
    kind=AttrKind.URL,
)
_ACCESS_KEY = AttributeSpec("aws_access_key_id", "AWS access key ID.", required=True)
_SECRET_KEY = AttributeSpec(
    "aws_secret_access_key", "AWS secret access key.", required=True, secret=True
)
_SESSION_TOKEN = AttributeSpec(
    "aws_session_token", "AWS STS session token.", required=True, secret=True
)
_ROLE_ARN_REQUIRED = AttributeSpec(
    "role_arn", "IAM role to assume, arn:aws:iam::ACCOUNT:role/NAME.", required=True
)
_ROLE_ARN_OPTIONAL = AttributeSpec(
    "role_arn",
    "IAM role to assume on top of the daemon's credentials (recommended).",
)
_POLICY_ARNS = AttributeSpec(
    "policy_arns",
    "IAM managed policy ARNs to use as session policies (at most 10). Ignored when "
    "'policy' is set. Neither: a least-privilege policy is generated per resource.",
    kind=AttrKind.LIST,
)
_POLICY = AttributeSpec(
    "policy",
    "Inline IAM session policy (JSON). Wins over 'policy_arns'. Neither: a "
    "least-privilege policy is generated per resource.",
    kind=AttrKind.JSON,
)

IMPLICIT_METHOD = AuthMethodSpec(
    auth_method=AUTH_IMPLICIT,
    name="Implicit (daemon's own AWS credentials)",
    description=(
        "The standard AWS credential chain of the daemon (environment, shared files, "
        "instance or container role), optionally assuming role_arn on top. Disabled "
        "unless the daemon runs with BROKER_ENABLE_IMPLICIT_AUTH_METHODS=true."
    ),
    attributes=(
        _REGION,
        _ENDPOINT,
        AttributeSpec("profile_name", "Profile of the daemon's AWS config files to use."),
        _ROLE_ARN_OPTIONAL,
        _POLICY_ARNS,
        _POLICY,
    ),
    min_expiration_seconds=MIN_SESSION,
    max_expiration_seconds=ROLE_MAX_SESSION,
    default_expiration_seconds=ROLE_DEFAULT_SESSION,
    implicit=True,
)

SECRET_KEY_METHOD = AuthMethodSpec(
    auth_method=AUTH_SECRET_KEY,
    name="AWS secret key",
    description=(
        "A long-lived access key, handed to clients as is (which needs a long-lived-secrets "
        "rule). The AWS container endpoint (`broker env aws`) never hands it out: SDKs get "
        "GetSessionToken sessions minted from it, expiration_seconds long. Prefer "
        "session-token, federation-token or iam-role, which hand out temporary keys to "
        "every client."
    ),
    attributes=(_REGION, _ENDPOINT, _ACCESS_KEY, _SECRET_KEY),
    # GetSessionToken's bounds: they apply to the container endpoint's sessions only.
    min_expiration_seconds=MIN_SESSION,
    max_expiration_seconds=USER_MAX_SESSION,
    default_expiration_seconds=SDK_DEFAULT_SESSION,
)

STS_TOKEN_METHOD = AuthMethodSpec(
    auth_method=AUTH_STS_TOKEN,
    name="AWS STS token",
    description=(
        "Temporary credentials someone else obtained, handed to clients as is until "
        "they expire; the connector needs expires_at and an update before then."
    ),
    attributes=(_REGION, _ENDPOINT, _ACCESS_KEY, _SECRET_KEY, _SESSION_TOKEN),
    requires_expires_at=True,
)

IAM_ROLE_METHOD = AuthMethodSpec(
    auth_method=AUTH_IAM_ROLE,
    name="AWS IAM role",
    description=(
        "Access keys allowed to assume role_arn; clients receive "
        "temporary, down-scoped AssumeRole credentials."
    ),
    attributes=(
        _REGION,
        _ENDPOINT,
        _ACCESS_KEY,
        _SECRET_KEY,
        _ROLE_ARN_REQUIRED,
        _POLICY_ARNS,
        _POLICY,
    ),
    min_expiration_seconds=MIN_SESSION,
    max_expiration_seconds=ROLE_MAX_SESSION,
    default_expiration_seconds=ROLE_DEFAULT_SESSION,
)

SESSION_TOKEN_METHOD = AuthMethodSpec(
    auth_method=AUTH_SESSION_TOKEN,
    name="AWS session token",
    description=(
        "IAM user keys; clients receive temporary GetSessionToken credentials with the "
        "user's full permissions (GetSessionToken takes no session policy)."
    ),
    attributes=(_REGION, _ENDPOINT, _ACCESS_KEY, _SECRET_KEY),
    min_expiration_seconds=MIN_SESSION,
    max_expiration_seconds=USER_MAX_SESSION,
    default_expiration_seconds=USER_DEFAULT_SESSION,
)

FEDERATION_TOKEN_METHOD = AuthMethodSpec(
    auth_method=AUTH_FEDERATION_TOKEN,
    name="AWS federation token",
    description=(
        "IAM user keys allowed sts:GetFederationToken; clients receive temporary "
        "federated-user credentials limited by a session policy (required for "
        "aws-generic, generated for the other resource types)."
    ),
    attributes=(_REGION, _ENDPOINT, _ACCESS_KEY, _SECRET_KEY, _POLICY_ARNS, _POLICY),
    min_expiration_seconds=MIN_SESSION,
    max_expiration_seconds=USER_MAX_SESSION,
    default_expiration_seconds=USER_DEFAULT_SESSION,
)

SPEC = ConnectorTypeSpec(
    connector_type=CONNECTOR_TYPE,
    name="Amazon Web Services",
    description=(
        "AWS credentials that issue temporary, least-privilege keys per resource: generic "
        "AWS access, S3 buckets, EKS clusters (Kubernetes tokens) and ECR registries "
        "(Docker logins). Auto-configures from the AWS CLI environment."
    ),
    resource_types=(GENERIC_RESOURCE, S3_RESOURCE, EKS_RESOURCE, ECR_RESOURCE),
    auth_methods=(
        IMPLICIT_METHOD,
        SECRET_KEY_METHOD,
        STS_TOKEN_METHOD,
        IAM_ROLE_METHOD,
        SESSION_TOKEN_METHOD,
        FEDERATION_TOKEN_METHOD,
    ),
    supports_auto_configuration=True,
)

#: Methods whose minted sessions accept a session policy.
POLICY_METHODS = frozenset({AUTH_IMPLICIT, AUTH_IAM_ROLE, AUTH_FEDERATION_TOKEN})
