"""A small TokenCredential for the local stack: OAuth 2.0 client credentials against the stand-in.

The Azure SDK clients take any object with ``get_token``/``get_token_info``; in Azure you pass
``DefaultAzureCredential()``, locally this one, built from the credential file the stand-in writes
(``<state>/credentials/<client>.json``, mode 0600)::

    cred = LocalTokenCredential.from_file(".edb/keyvault/credentials/admin.json")
    KeyClient(vault_url, cred, verify_challenge_resource=False, connection_verify=ca_path)

Tokens are cached until five minutes before they expire.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from azure.core.credentials import AccessToken, AccessTokenInfo

from edb.errors import ConfigError, LocalStackError


@dataclass(frozen=True)
class CredentialFile:
    token_url: str
    client_id: str
    client_secret: str
    ca_file: str
    vault_url: str

    @classmethod
    def load(cls, path: Path | str) -> CredentialFile:
        try:
            data = json.loads(Path(path).read_text())
            return cls(data["tokenUrl"], data["clientId"], data["clientSecret"], data["caFile"], data["vaultUrl"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"not a Key Vault stand-in credential file: {path}", code="CONFIG_KV_CREDENTIAL") from exc

    def to_json(self) -> dict[str, str]:
        return {"tokenUrl": self.token_url, "clientId": self.client_id, "clientSecret": self.client_secret,
                "caFile": self.ca_file, "vaultUrl": self.vault_url}


class LocalTokenCredential:
    """Synchronous TokenCredential (``azure.core.credentials.TokenCredential`` protocol)."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, *, ca_file: str,
                 timeout: float = 10.0) -> None:
        self._token_url = token_url
        self._client_id = client_id
        self._secret = client_secret
        self._ca_file = ca_file
        self._timeout = timeout
        self._cache: dict[str, AccessTokenInfo] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path | str) -> LocalTokenCredential:
        f = CredentialFile.load(path)
        return cls(f.token_url, f.client_id, f.client_secret, ca_file=f.ca_file)

    def __repr__(self) -> str:  # never show the secret
        return f"LocalTokenCredential(client_id={self._client_id!r}, token_url={self._token_url!r})"

    def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        if len(scopes) != 1:
            raise LocalStackError("exactly one scope is supported", code="LOCAL_KV_SCOPE")
        scope = scopes[0]
        with self._lock:
            cached = self._cache.get(scope)
            if cached is not None and cached.expires_on - time.time() > 300:
                return cached
            try:
                response = requests.post(
                    self._token_url,
                    data={"grant_type": "client_credentials", "client_id": self._client_id,
                          "client_secret": self._secret, "scope": scope},
                    verify=self._ca_file,
                    timeout=self._timeout,
                )
            except requests.RequestException as exc:
                raise LocalStackError(f"token endpoint unreachable: {type(exc).__name__}",
                                      code="LOCAL_KV_TOKEN") from exc
            if response.status_code != 200:
                raise LocalStackError(f"token request refused: HTTP {response.status_code}", code="LOCAL_KV_TOKEN")
            body = response.json()
            info = AccessTokenInfo(body["access_token"], int(body["expires_on"]))
            self._cache[scope] = info
            return info

    def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                  enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        info = self.get_token_info(*scopes)
        return AccessToken(info.token, info.expires_on)

    def close(self) -> None:
        pass

    def __enter__(self) -> LocalTokenCredential:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncLocalTokenCredential:
    """The same credential for the ``.aio`` clients (``AsyncTokenCredential`` protocol)."""

    def __init__(self, sync: LocalTokenCredential) -> None:
        self._sync = sync

    @classmethod
    def from_file(cls, path: Path | str) -> AsyncLocalTokenCredential:
        return cls(LocalTokenCredential.from_file(path))

    async def get_token_info(self, *scopes: str, options: Any = None) -> AccessTokenInfo:
        return await asyncio.to_thread(self._sync.get_token_info, *scopes)

    async def get_token(self, *scopes: str, claims: str | None = None, tenant_id: str | None = None,
                        enable_cae: bool = False, **kwargs: Any) -> AccessToken:
        info = await self.get_token_info(*scopes)
        return AccessToken(info.token, info.expires_on)

    async def close(self) -> None:
        pass

    async def __aenter__(self) -> AsyncLocalTokenCredential:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
