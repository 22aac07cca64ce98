"""Installed into .venv-az only (by `make az`, with a .pth line): lets the Azure CLI and its
extensions' AMQP clients (uamqp / azure-eventhub, which verify against certifi's bundle and have no
CA option) trust the local stack CA when the tests set EDB_AZ_CA_BUNDLE (certifi's roots + the stack
CA). Nothing changes when the variable is unset, as against Azure."""

import os

_bundle = os.environ.get("EDB_AZ_CA_BUNDLE")
if _bundle:
    import certifi

    certifi.where = lambda: _bundle
