import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AttributeSpec(_message.Message):
    __slots__ = ("name", "description", "kind", "required", "secret", "default_value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    kind: str
    required: bool
    secret: bool
    default_value: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., kind: _Optional[str] = ..., required: _Optional[bool] = ..., secret: _Optional[bool] = ..., default_value: _Optional[str] = ...) -> None: ...

class AuthMethod(_message.Message):
    __slots__ = ("auth_method", "name", "description", "attributes", "min_expiration_seconds", "max_expiration_seconds", "default_expiration_seconds", "implicit", "requires_expires_at")
    AUTH_METHOD_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    MIN_EXPIRATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_EXPIRATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_EXPIRATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    IMPLICIT_FIELD_NUMBER: _ClassVar[int]
    REQUIRES_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    auth_method: str
    name: str
    description: str
    attributes: _containers.RepeatedCompositeFieldContainer[AttributeSpec]
    min_expiration_seconds: int
    max_expiration_seconds: int
    default_expiration_seconds: int
    implicit: bool
    requires_expires_at: bool
    def __init__(self, auth_method: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., attributes: _Optional[_Iterable[_Union[AttributeSpec, _Mapping]]] = ..., min_expiration_seconds: _Optional[int] = ..., max_expiration_seconds: _Optional[int] = ..., default_expiration_seconds: _Optional[int] = ..., implicit: _Optional[bool] = ..., requires_expires_at: _Optional[bool] = ...) -> None: ...

class ResourceType(_message.Message):
    __slots__ = ("resource_type", "name", "description", "supports_instances", "id_formats")
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_INSTANCES_FIELD_NUMBER: _ClassVar[int]
    ID_FORMATS_FIELD_NUMBER: _ClassVar[int]
    resource_type: str
    name: str
    description: str
    supports_instances: bool
    id_formats: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, resource_type: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., supports_instances: _Optional[bool] = ..., id_formats: _Optional[_Iterable[str]] = ...) -> None: ...

class ConnectorType(_message.Message):
    __slots__ = ("connector_type", "name", "description", "resource_types", "auth_methods", "supports_auto_configuration")
    CONNECTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPES_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHODS_FIELD_NUMBER: _ClassVar[int]
    SUPPORTS_AUTO_CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    connector_type: str
    name: str
    description: str
    resource_types: _containers.RepeatedCompositeFieldContainer[ResourceType]
    auth_methods: _containers.RepeatedCompositeFieldContainer[AuthMethod]
    supports_auto_configuration: bool
    def __init__(self, connector_type: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., resource_types: _Optional[_Iterable[_Union[ResourceType, _Mapping]]] = ..., auth_methods: _Optional[_Iterable[_Union[AuthMethod, _Mapping]]] = ..., supports_auto_configuration: _Optional[bool] = ...) -> None: ...

class ListConnectorTypesRequest(_message.Message):
    __slots__ = ("connector_type", "resource_type", "auth_method")
    CONNECTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHOD_FIELD_NUMBER: _ClassVar[int]
    connector_type: str
    resource_type: str
    auth_method: str
    def __init__(self, connector_type: _Optional[str] = ..., resource_type: _Optional[str] = ..., auth_method: _Optional[str] = ...) -> None: ...

class ListConnectorTypesResponse(_message.Message):
    __slots__ = ("connector_types",)
    CONNECTOR_TYPES_FIELD_NUMBER: _ClassVar[int]
    connector_types: _containers.RepeatedCompositeFieldContainer[ConnectorType]
    def __init__(self, connector_types: _Optional[_Iterable[_Union[ConnectorType, _Mapping]]] = ...) -> None: ...

class DescribeConnectorTypeRequest(_message.Message):
    __slots__ = ("connector_type", "resource_type", "auth_method")
    CONNECTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHOD_FIELD_NUMBER: _ClassVar[int]
    connector_type: str
    resource_type: str
    auth_method: str
    def __init__(self, connector_type: _Optional[str] = ..., resource_type: _Optional[str] = ..., auth_method: _Optional[str] = ...) -> None: ...

class Connector(_message.Message):
    __slots__ = ("id", "name", "connector_type", "auth_method", "resource_types", "resource_id", "scope", "expiration_seconds", "expires_at", "labels", "config", "secret_attributes", "created_at", "updated_at", "revision", "description")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHOD_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPES_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SECRET_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    connector_type: str
    auth_method: str
    resource_types: _containers.RepeatedScalarFieldContainer[str]
    resource_id: str
    scope: str
    expiration_seconds: int
    expires_at: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    config: _containers.ScalarMap[str, str]
    secret_attributes: _containers.RepeatedScalarFieldContainer[str]
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    revision: int
    description: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., connector_type: _Optional[str] = ..., auth_method: _Optional[str] = ..., resource_types: _Optional[_Iterable[str]] = ..., resource_id: _Optional[str] = ..., scope: _Optional[str] = ..., expiration_seconds: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., config: _Optional[_Mapping[str, str]] = ..., secret_attributes: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[int] = ..., description: _Optional[str] = ...) -> None: ...

class RegisterConnectorRequest(_message.Message):
    __slots__ = ("name", "connector_type", "auth_method", "resource_type", "resource_id", "config", "labels", "expiration_seconds", "expires_at", "no_verify", "description")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHOD_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NO_VERIFY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    connector_type: str
    auth_method: str
    resource_type: str
    resource_id: str
    config: _containers.ScalarMap[str, str]
    labels: _containers.ScalarMap[str, str]
    expiration_seconds: int
    expires_at: _timestamp_pb2.Timestamp
    no_verify: bool
    description: str
    def __init__(self, name: _Optional[str] = ..., connector_type: _Optional[str] = ..., auth_method: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., config: _Optional[_Mapping[str, str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., expiration_seconds: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., no_verify: _Optional[bool] = ..., description: _Optional[str] = ...) -> None: ...

class RegisterConnectorResponse(_message.Message):
    __slots__ = ("connector", "resources")
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    connector: Connector
    resources: _containers.RepeatedCompositeFieldContainer[ResourceResult]
    def __init__(self, connector: _Optional[_Union[Connector, _Mapping]] = ..., resources: _Optional[_Iterable[_Union[ResourceResult, _Mapping]]] = ...) -> None: ...

class UpdateConnectorRequest(_message.Message):
    __slots__ = ("name", "auth_method", "resource_type", "resource_id", "config", "remove_attributes", "labels", "remove_labels", "expiration_seconds", "expires_at", "clear_resource_type", "clear_resource_id", "clear_expiration_seconds", "clear_expires_at", "no_verify", "description", "expected_revision")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHOD_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    REMOVE_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REMOVE_LABELS_FIELD_NUMBER: _ClassVar[int]
    EXPIRATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    CLEAR_RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CLEAR_RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CLEAR_EXPIRATION_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLEAR_EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    NO_VERIFY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_REVISION_FIELD_NUMBER: _ClassVar[int]
    name: str
    auth_method: str
    resource_type: str
    resource_id: str
    config: _containers.ScalarMap[str, str]
    remove_attributes: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    remove_labels: _containers.RepeatedScalarFieldContainer[str]
    expiration_seconds: int
    expires_at: _timestamp_pb2.Timestamp
    clear_resource_type: bool
    clear_resource_id: bool
    clear_expiration_seconds: bool
    clear_expires_at: bool
    no_verify: bool
    description: str
    expected_revision: int
    def __init__(self, name: _Optional[str] = ..., auth_method: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., config: _Optional[_Mapping[str, str]] = ..., remove_attributes: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., remove_labels: _Optional[_Iterable[str]] = ..., expiration_seconds: _Optional[int] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., clear_resource_type: _Optional[bool] = ..., clear_resource_id: _Optional[bool] = ..., clear_expiration_seconds: _Optional[bool] = ..., clear_expires_at: _Optional[bool] = ..., no_verify: _Optional[bool] = ..., description: _Optional[str] = ..., expected_revision: _Optional[int] = ...) -> None: ...

class UpdateConnectorResponse(_message.Message):
    __slots__ = ("connector", "resources")
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    connector: Connector
    resources: _containers.RepeatedCompositeFieldContainer[ResourceResult]
    def __init__(self, connector: _Optional[_Union[Connector, _Mapping]] = ..., resources: _Optional[_Iterable[_Union[ResourceResult, _Mapping]]] = ...) -> None: ...

class DeleteConnectorRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetConnectorRequest(_message.Message):
    __slots__ = ("name", "show_secrets")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SHOW_SECRETS_FIELD_NUMBER: _ClassVar[int]
    name: str
    show_secrets: bool
    def __init__(self, name: _Optional[str] = ..., show_secrets: _Optional[bool] = ...) -> None: ...

class ListConnectorsRequest(_message.Message):
    __slots__ = ("name", "connector_type", "auth_method", "resource_type", "resource_id", "labels", "page_size", "page_token")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHOD_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    name: str
    connector_type: str
    auth_method: str
    resource_type: str
    resource_id: str
    labels: _containers.ScalarMap[str, str]
    page_size: int
    page_token: str
    def __init__(self, name: _Optional[str] = ..., connector_type: _Optional[str] = ..., auth_method: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListConnectorsResponse(_message.Message):
    __slots__ = ("connectors", "next_page_token")
    CONNECTORS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    connectors: _containers.RepeatedCompositeFieldContainer[Connector]
    next_page_token: str
    def __init__(self, connectors: _Optional[_Iterable[_Union[Connector, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class VerifyConnectorRequest(_message.Message):
    __slots__ = ("name", "resource_type", "resource_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    resource_type: str
    resource_id: str
    def __init__(self, name: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ...) -> None: ...

class VerifyConnectorResponse(_message.Message):
    __slots__ = ("resources", "ok")
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.RepeatedCompositeFieldContainer[ResourceResult]
    ok: bool
    def __init__(self, resources: _Optional[_Iterable[_Union[ResourceResult, _Mapping]]] = ..., ok: _Optional[bool] = ...) -> None: ...

class ResourceResult(_message.Message):
    __slots__ = ("connector", "connector_type", "resource_type", "resource_ids", "error")
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    connector: str
    connector_type: str
    resource_type: str
    resource_ids: _containers.RepeatedScalarFieldContainer[str]
    error: str
    def __init__(self, connector: _Optional[str] = ..., connector_type: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_ids: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ...) -> None: ...

class ListResourcesRequest(_message.Message):
    __slots__ = ("connector_type", "resource_type", "resource_id", "labels", "exclude_errors", "timeout_seconds", "refresh", "name")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONNECTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    connector_type: str
    resource_type: str
    resource_id: str
    labels: _containers.ScalarMap[str, str]
    exclude_errors: bool
    timeout_seconds: float
    refresh: bool
    name: str
    def __init__(self, connector_type: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., exclude_errors: _Optional[bool] = ..., timeout_seconds: _Optional[float] = ..., refresh: _Optional[bool] = ..., name: _Optional[str] = ...) -> None: ...

class GetCredentialsRequest(_message.Message):
    __slots__ = ("connector", "resource_type", "resource_id", "hide_secrets")
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    HIDE_SECRETS_FIELD_NUMBER: _ClassVar[int]
    connector: str
    resource_type: str
    resource_id: str
    hide_secrets: bool
    def __init__(self, connector: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., hide_secrets: _Optional[bool] = ...) -> None: ...

class RotateCredentialsRequest(_message.Message):
    __slots__ = ("connector", "resource_type", "resource_id", "hide_secrets")
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    HIDE_SECRETS_FIELD_NUMBER: _ClassVar[int]
    connector: str
    resource_type: str
    resource_id: str
    hide_secrets: bool
    def __init__(self, connector: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., hide_secrets: _Optional[bool] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ("connector", "connector_type", "auth_method", "resource_type", "resource_id", "config", "secret_attributes", "expires_at", "session_policy", "issued_at", "connector_revision")
    class ConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    AUTH_METHOD_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    SECRET_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    SESSION_POLICY_FIELD_NUMBER: _ClassVar[int]
    ISSUED_AT_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_REVISION_FIELD_NUMBER: _ClassVar[int]
    connector: str
    connector_type: str
    auth_method: str
    resource_type: str
    resource_id: str
    config: _containers.ScalarMap[str, str]
    secret_attributes: _containers.RepeatedScalarFieldContainer[str]
    expires_at: _timestamp_pb2.Timestamp
    session_policy: str
    issued_at: _timestamp_pb2.Timestamp
    connector_revision: int
    def __init__(self, connector: _Optional[str] = ..., connector_type: _Optional[str] = ..., auth_method: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., config: _Optional[_Mapping[str, str]] = ..., secret_attributes: _Optional[_Iterable[str]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., session_policy: _Optional[str] = ..., issued_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., connector_revision: _Optional[int] = ...) -> None: ...

class WatchCredentialsRequest(_message.Message):
    __slots__ = ("connector", "resource_type", "resource_id")
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    connector: str
    resource_type: str
    resource_id: str
    def __init__(self, connector: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ...) -> None: ...

class CredentialEvent(_message.Message):
    __slots__ = ("kind", "credential", "error")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[CredentialEvent.Kind]
        ISSUED: _ClassVar[CredentialEvent.Kind]
        RENEWED: _ClassVar[CredentialEvent.Kind]
        UPDATED: _ClassVar[CredentialEvent.Kind]
        DELETED: _ClassVar[CredentialEvent.Kind]
        ERROR: _ClassVar[CredentialEvent.Kind]
    KIND_UNSPECIFIED: CredentialEvent.Kind
    ISSUED: CredentialEvent.Kind
    RENEWED: CredentialEvent.Kind
    UPDATED: CredentialEvent.Kind
    DELETED: CredentialEvent.Kind
    ERROR: CredentialEvent.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    kind: CredentialEvent.Kind
    credential: Credential
    error: str
    def __init__(self, kind: _Optional[_Union[CredentialEvent.Kind, str]] = ..., credential: _Optional[_Union[Credential, _Mapping]] = ..., error: _Optional[str] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Status(_message.Message):
    __slots__ = ("version", "health", "uptime_seconds", "connectors", "cached_credentials", "subscribers", "connector_types", "helper_socket", "degraded", "store")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    UPTIME_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CONNECTORS_FIELD_NUMBER: _ClassVar[int]
    CACHED_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIBERS_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_TYPES_FIELD_NUMBER: _ClassVar[int]
    HELPER_SOCKET_FIELD_NUMBER: _ClassVar[int]
    DEGRADED_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    version: str
    health: str
    uptime_seconds: float
    connectors: int
    cached_credentials: int
    subscribers: int
    connector_types: _containers.RepeatedScalarFieldContainer[str]
    helper_socket: str
    degraded: _containers.RepeatedScalarFieldContainer[str]
    store: str
    def __init__(self, version: _Optional[str] = ..., health: _Optional[str] = ..., uptime_seconds: _Optional[float] = ..., connectors: _Optional[int] = ..., cached_credentials: _Optional[int] = ..., subscribers: _Optional[int] = ..., connector_types: _Optional[_Iterable[str]] = ..., helper_socket: _Optional[str] = ..., degraded: _Optional[_Iterable[str]] = ..., store: _Optional[str] = ...) -> None: ...

class ListOutputsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Output(_message.Message):
    __slots__ = ("index", "connector", "resource_type", "resource_id", "format", "path", "mode", "last_write", "next_renewal", "margin_at", "expires_at", "last_error", "last_error_at", "writes", "write_failures", "hook_runs", "hook_failures", "on_change", "signal")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    LAST_WRITE_FIELD_NUMBER: _ClassVar[int]
    NEXT_RENEWAL_FIELD_NUMBER: _ClassVar[int]
    MARGIN_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_AT_FIELD_NUMBER: _ClassVar[int]
    WRITES_FIELD_NUMBER: _ClassVar[int]
    WRITE_FAILURES_FIELD_NUMBER: _ClassVar[int]
    HOOK_RUNS_FIELD_NUMBER: _ClassVar[int]
    HOOK_FAILURES_FIELD_NUMBER: _ClassVar[int]
    ON_CHANGE_FIELD_NUMBER: _ClassVar[int]
    SIGNAL_FIELD_NUMBER: _ClassVar[int]
    index: int
    connector: str
    resource_type: str
    resource_id: str
    format: str
    path: str
    mode: int
    last_write: _timestamp_pb2.Timestamp
    next_renewal: _timestamp_pb2.Timestamp
    margin_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    last_error: str
    last_error_at: _timestamp_pb2.Timestamp
    writes: int
    write_failures: int
    hook_runs: int
    hook_failures: int
    on_change: str
    signal: str
    def __init__(self, index: _Optional[int] = ..., connector: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., format: _Optional[str] = ..., path: _Optional[str] = ..., mode: _Optional[int] = ..., last_write: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., next_renewal: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., margin_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_error: _Optional[str] = ..., last_error_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., writes: _Optional[int] = ..., write_failures: _Optional[int] = ..., hook_runs: _Optional[int] = ..., hook_failures: _Optional[int] = ..., on_change: _Optional[str] = ..., signal: _Optional[str] = ...) -> None: ...

class ListOutputsResponse(_message.Message):
    __slots__ = ("outputs",)
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    outputs: _containers.RepeatedCompositeFieldContainer[Output]
    def __init__(self, outputs: _Optional[_Iterable[_Union[Output, _Mapping]]] = ...) -> None: ...

class SetPreferredConnectorRequest(_message.Message):
    __slots__ = ("resource_type", "resource_id", "connector")
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    resource_type: str
    resource_id: str
    connector: str
    def __init__(self, resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., connector: _Optional[str] = ...) -> None: ...

class SetPreferredConnectorResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateSdkEndpointRequest(_message.Message):
    __slots__ = ("kind", "connector", "resource_type", "resource_id", "ttl_seconds", "bind_uid", "bound_to_caller_process")
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    BIND_UID_FIELD_NUMBER: _ClassVar[int]
    BOUND_TO_CALLER_PROCESS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    connector: str
    resource_type: str
    resource_id: str
    ttl_seconds: int
    bind_uid: int
    bound_to_caller_process: bool
    def __init__(self, kind: _Optional[str] = ..., connector: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., ttl_seconds: _Optional[int] = ..., bind_uid: _Optional[int] = ..., bound_to_caller_process: _Optional[bool] = ...) -> None: ...

class SdkEndpoint(_message.Message):
    __slots__ = ("id", "env", "kind", "connector", "resource_type", "resource_id", "owner", "expires_at", "bound_uid", "created_at", "bound_pid")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    BOUND_UID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    BOUND_PID_FIELD_NUMBER: _ClassVar[int]
    id: str
    env: _containers.ScalarMap[str, str]
    kind: str
    connector: str
    resource_type: str
    resource_id: str
    owner: str
    expires_at: _timestamp_pb2.Timestamp
    bound_uid: int
    created_at: _timestamp_pb2.Timestamp
    bound_pid: int
    def __init__(self, id: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., kind: _Optional[str] = ..., connector: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., owner: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bound_uid: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., bound_pid: _Optional[int] = ...) -> None: ...

class ListSdkEndpointsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSdkEndpointsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[SdkEndpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[SdkEndpoint, _Mapping]]] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Identity(_message.Message):
    __slots__ = ("principal", "selectors", "roles")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    principal: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    roles: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, principal: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., roles: _Optional[_Iterable[str]] = ...) -> None: ...

class GetConfigRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DaemonConfig(_message.Message):
    __slots__ = ("settings", "config_file")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FILE_FIELD_NUMBER: _ClassVar[int]
    settings: _containers.ScalarMap[str, str]
    config_file: str
    def __init__(self, settings: _Optional[_Mapping[str, str]] = ..., config_file: _Optional[str] = ...) -> None: ...

class GetPolicyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PolicyRule(_message.Message):
    __slots__ = ("role", "selectors", "connectors", "labels", "resource_types", "resource_ids", "long_lived_secrets", "source", "description")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROLE_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    CONNECTORS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPES_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_IDS_FIELD_NUMBER: _ClassVar[int]
    LONG_LIVED_SECRETS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    role: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    connectors: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    resource_types: _containers.RepeatedScalarFieldContainer[str]
    resource_ids: _containers.RepeatedScalarFieldContainer[str]
    long_lived_secrets: bool
    source: str
    description: str
    def __init__(self, role: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ..., connectors: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., resource_types: _Optional[_Iterable[str]] = ..., resource_ids: _Optional[_Iterable[str]] = ..., long_lived_secrets: _Optional[bool] = ..., source: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class Policy(_message.Message):
    __slots__ = ("rules", "actions")
    class ActionsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RULES_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    rules: _containers.RepeatedCompositeFieldContainer[PolicyRule]
    actions: _containers.ScalarMap[str, str]
    def __init__(self, rules: _Optional[_Iterable[_Union[PolicyRule, _Mapping]]] = ..., actions: _Optional[_Mapping[str, str]] = ...) -> None: ...

class CheckPolicyRequest(_message.Message):
    __slots__ = ("uid", "user", "cert_id", "action", "connector", "resource_type", "resource_id", "selectors")
    UID_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    CERT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    CONNECTOR_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    SELECTORS_FIELD_NUMBER: _ClassVar[int]
    uid: int
    user: str
    cert_id: str
    action: str
    connector: str
    resource_type: str
    resource_id: str
    selectors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uid: _Optional[int] = ..., user: _Optional[str] = ..., cert_id: _Optional[str] = ..., action: _Optional[str] = ..., connector: _Optional[str] = ..., resource_type: _Optional[str] = ..., resource_id: _Optional[str] = ..., selectors: _Optional[_Iterable[str]] = ...) -> None: ...

class PolicyDecision(_message.Message):
    __slots__ = ("allowed", "reason", "principal", "rule")
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    allowed: bool
    reason: str
    principal: str
    rule: int
    def __init__(self, allowed: _Optional[bool] = ..., reason: _Optional[str] = ..., principal: _Optional[str] = ..., rule: _Optional[int] = ...) -> None: ...

class RevokeSdkEndpointRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RevokeSdkEndpointResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
