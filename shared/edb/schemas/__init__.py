"""Twin and telemetry schemas (Contract 6 in docs/architecture.md), shared by the modules and the cloud.

Pure data and validation: no I/O, no SDK types. Parsing of anything that arrives from a twin or a
message never raises on hostile input; it yields a typed error object instead.
"""

from edb.schemas.common import (
    ErrorInfo,
    apply_desired_patch,
    desired_from_twin,
    iso_utc,
    merge_twin_patch,
    version_key,
)
from edb.schemas.messages import (
    CONTENT_ENCODING_UTF8,
    CONTENT_TYPE_JSON,
    CONTENT_TYPE_NPY,
    Alert,
    AlertType,
    EventKind,
    Frame,
    InferenceResult,
    LatencySummary,
    MessageError,
    MessageType,
    MetricsReport,
    ModelRef,
    ModuleEvent,
    application_properties,
    decode_json,
    encode_json,
)
from edb.schemas.packages import (
    DesiredPackage,
    DesiredPackageError,
    InvalidDesired,
    PackageState,
    ReportedPackage,
    parse_desired_packages,
)
from edb.schemas.runner import (
    BatchingSettings,
    LoadFailure,
    ModelReport,
    ModelSpec,
    ModelState,
    parse_batching,
    parse_model_spec,
)

__all__ = [
    "CONTENT_ENCODING_UTF8",
    "CONTENT_TYPE_JSON",
    "CONTENT_TYPE_NPY",
    "Alert",
    "AlertType",
    "BatchingSettings",
    "DesiredPackage",
    "DesiredPackageError",
    "ErrorInfo",
    "EventKind",
    "Frame",
    "InferenceResult",
    "InvalidDesired",
    "LatencySummary",
    "LoadFailure",
    "MessageError",
    "MessageType",
    "MetricsReport",
    "ModelRef",
    "ModelReport",
    "ModelSpec",
    "ModelState",
    "ModuleEvent",
    "PackageState",
    "ReportedPackage",
    "application_properties",
    "apply_desired_patch",
    "decode_json",
    "desired_from_twin",
    "encode_json",
    "iso_utc",
    "merge_twin_patch",
    "parse_batching",
    "parse_desired_packages",
    "parse_model_spec",
    "version_key",
]
