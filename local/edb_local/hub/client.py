"""A small service-side HTTPS client for what azure-iot-hub does not cover: the `/edb/messages`
monitor feed (and twin reads, so `edb twin show` prints the exact JSON). TLS is always verified
against the given CA bundle (or the system store).

The CA goes with every request (`verify=<path>`), not on the session: `requests` lets
`REQUESTS_CA_BUNDLE` / `CURL_CA_BUNDLE` from the environment override `session.verify`, and many
machines and CI runners set them to the system bundle, which does not hold the stack's CA."""

from __future__ import annotations

import os
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from edb_local.hub import errors
from edb_local.hub.errors import HubError
from edb_local.hub.sas import make_token

ENV_CONNECTION_STRING = "EDB_IOTHUB_CONNECTION_STRING"
ENV_CA_CERT = "EDB_CA_CERT"
_TOKEN_TTL = 3600


@dataclass(frozen=True)
class ServiceSettings:
    host_name: str
    key_name: str
    key: str
    ca_cert: str | None


def parse_connection_string(text: str) -> dict[str, str]:
    fields: dict[str, str] = {}
    for part in text.strip().split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep:
            raise HubError("malformed connection string", code=errors.CONFIG_INVALID)
        fields[key.strip()] = value.strip()
    return fields


def read_env_file(path: Path) -> dict[str, str]:
    """`KEY=VALUE` lines (optionally `export`, optionally quoted), as `.edb/local.env` is written."""
    values: dict[str, str] = {}
    if not path.is_file():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if sep:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
            values[key.strip()] = value
    return values


def resolve_settings(connection_string: str | None, ca_cert: str | None, *, environ: dict[str, str],
                     env_file: dict[str, str]) -> ServiceSettings:
    """Option, then environment, then `.edb/local.env`."""
    cs = connection_string or environ.get(ENV_CONNECTION_STRING) or env_file.get(ENV_CONNECTION_STRING)
    if not cs:
        raise HubError(f"no IoT Hub connection string: pass --connection-string, set {ENV_CONNECTION_STRING}, "
                       "or run `edb local up`", code=errors.CONFIG_INVALID)
    fields = parse_connection_string(cs)
    missing = {"HostName", "SharedAccessKeyName", "SharedAccessKey"} - fields.keys()
    if missing:
        raise HubError(f"service connection string lacks {', '.join(sorted(missing))}", code=errors.CONFIG_INVALID)
    ca = ca_cert or environ.get(ENV_CA_CERT) or env_file.get(ENV_CA_CERT) or None
    return ServiceSettings(fields["HostName"], fields["SharedAccessKeyName"], fields["SharedAccessKey"], ca)


@dataclass(frozen=True)
class MessagesPage:
    events: list[dict[str, Any]]   # monitor events, each with its "seq"
    next: int                      # pass as `since` to continue
    last: int                      # the newest sequence number stored


class ServiceClient:
    def __init__(self, settings: ServiceSettings, timeout: float = 40.0) -> None:
        self.settings = settings
        self.timeout = timeout
        if settings.ca_cert and not Path(settings.ca_cert).is_file():
            raise HubError(f"CA bundle {settings.ca_cert} does not exist", code=errors.CONFIG_INVALID)
        # a path is never replaced by the environment; True (no CA given) means the system trust store
        self._verify: str | bool = settings.ca_cert if settings.ca_cert else True
        self._session = requests.Session()

    @classmethod
    def from_environment(cls, connection_string: str | None = None, ca_cert: str | None = None,
                         state_dir: Path = Path(".edb")) -> ServiceClient:
        settings = resolve_settings(connection_string, ca_cert, environ=dict(os.environ),
                                    env_file=read_env_file(state_dir / "local.env"))
        return cls(settings)

    def _token(self) -> str:
        return make_token(self.settings.host_name, self.settings.key, expiry=int(time.time()) + _TOKEN_TTL,
                          key_name=self.settings.key_name, quote_plus=True)

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        url = f"https://{self.settings.host_name}{path}"
        try:
            response = self._session.get(url, params={**(params or {}), "api-version": "2021-04-12"},
                                         headers={"Authorization": self._token()}, timeout=self.timeout,
                                         verify=self._verify)
        except requests.exceptions.SSLError:
            raise HubError(f"the hub at {self.settings.host_name} presented a certificate that does not verify "
                           f"against {self._verify if self._verify is not True else 'the system trust store'}",
                           code=errors.TLS_UNTRUSTED) from None
        except (requests.ConnectionError, requests.Timeout) as exc:
            # down, or nothing listens at that address: a script may wait and retry (not a config error)
            raise HubError(f"cannot reach the hub at {self.settings.host_name}: {type(exc).__name__}",
                           code=errors.UNREACHABLE) from None
        except requests.RequestException as exc:  # an unusable URL: the configuration is wrong
            raise HubError(f"cannot call the hub at {self.settings.host_name}: {type(exc).__name__}",
                           code=errors.CONFIG_INVALID) from None
        if response.status_code >= 400:
            try:
                err = response.json()["error"]
                raise HubError(err["message"], code=err["code"])
            except (ValueError, KeyError, TypeError):
                raise HubError(f"HTTP {response.status_code} from the hub", code=errors.BAD_REQUEST) from None
        return response.json()

    def messages(self, since: int = 0, limit: int = 500, wait: float = 0.0) -> MessagesPage:
        doc = self._get("/edb/messages", {"since": since, "limit": limit, "wait": wait})
        return MessagesPage(doc["messages"], int(doc["next"]), int(doc["last"]))

    def module_twin(self, device_id: str, module_id: str) -> dict[str, Any]:
        quoted = urllib.parse.quote(device_id, safe=""), urllib.parse.quote(module_id, safe="")
        result: dict[str, Any] = self._get(f"/twins/{quoted[0]}/modules/{quoted[1]}")
        return result

    def device_twin(self, device_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._get(f"/twins/{urllib.parse.quote(device_id, safe='')}")
        return result
