"""azure-iot-hub service clients that trust exactly the CA bundle they are given.

azure-iot-hub sends its HTTPS requests through msrest and ``requests``. ``requests`` replaces
``verify=True`` with ``REQUESTS_CA_BUNDLE`` (or ``CURL_CA_BUNDLE``) from the environment, so a
process-wide variable decides whom the SDK trusts unless a CA path is passed with every request.
msrest does pass ``config.connection.verify`` with every request, and ``requests`` consults the
environment only when that value is ``True``: setting it to the CA path pins the trust anchor for
that client, whatever the environment says. No environment variable is read or written here.

``ca_cert=None`` keeps the SDK's default (``verify=True``): the system trust store, which the
environment may name, as with any HTTPS client on Azure.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, TypeVar

from edb.errors import ConfigError

Manager = TypeVar("Manager")


def pin_ca(manager: Manager, ca_cert: str | os.PathLike[str] | None) -> Manager:
    """Make an azure-iot-hub manager (``IoTHubRegistryManager``, ``IoTHubConfigurationManager``, ...)
    verify the hub's certificate against ``ca_cert`` only. Returns the manager."""
    if ca_cert is None:
        return manager
    path = Path(ca_cert)
    if not path.is_file():
        raise ConfigError(f"CA bundle {path} does not exist", code="CONFIG_INVALID")
    connection: Any = getattr(getattr(getattr(manager, "protocol", None), "config", None), "connection", None)
    if connection is None or not hasattr(connection, "verify"):
        # An SDK whose client no longer looks like msrest's: refuse rather than trust the environment.
        raise ConfigError(f"cannot pin a CA on {type(manager).__name__} (unexpected SDK layout)",
                          code="CONFIG_INVALID")
    connection.verify = str(path)
    return manager
