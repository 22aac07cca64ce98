"""Run the stand-in: on the current event loop, in a background thread (tests, benchmarks), or as
``python -m edb_local.keyvault serve`` (the local stack)."""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from aiohttp import web

from edb.errors import ConfigError, LocalStackError
from edb_local.keyvault.app import VaultApp
from edb_local.keyvault.at_rest import write_private_file
from edb_local.keyvault.credential_file import CLIENT_TENANT, CredentialFile
from edb_local.keyvault.identity import MSI_CLIENT_PREFIX, MSI_PATH
from edb_local.keyvault.store import VaultStore
from edb_local.keyvault.tokens import ROLES, Issuer, new_client_secret, secret_digest
from edb_local.net import free_port

#: Clients every stand-in has: the operator (everything) and the key release service (least
#: privilege), once without and once with the legacy ProvisionKey route's permission.
DEFAULT_CLIENTS = {"admin": "admin", "key-release": "release-service", "key-release-legacy": "release-service-legacy"}


class KeyVaultStandIn:
    """One vault: ``state_dir`` holds ``vault.sqlite3``, ``master.key``, ``issuer.key`` and
    ``credentials/<client>.json``. Binds ``address:port`` (port 0 picks a free one) with TLS."""

    def __init__(self, state_dir: Path | str, *, address: str, port: int, cert_path: Path | str,
                 key_path: Path | str, ca_path: Path | str) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.address = address
        self.port = port
        self.cert_path, self.key_path, self.ca_path = Path(cert_path), Path(key_path), Path(ca_path)
        self._runner: web.AppRunner | None = None
        self._store: VaultStore | None = None

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"

    def credential_path(self, client_id: str = "admin") -> Path:
        return self.state_dir / "credentials" / f"{client_id}.json"

    async def start(self) -> None:
        self._store = VaultStore(self.state_dir)
        issuer = Issuer.load_or_create(self.state_dir)
        ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ssl_ctx.load_cert_chain(self.cert_path, self.key_path)
        if self.port == 0:
            self.port = free_port(self.address)
        vault = VaultApp(self._store, issuer, self.url)
        self._runner = web.AppRunner(vault.build(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.address, self.port, ssl_context=ssl_ctx, backlog=512)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise LocalStackError(f"cannot bind {self.address}:{self.port}: {exc.strerror}",
                                  code="LOCAL_KV_BIND") from exc
        for client_id, role in DEFAULT_CLIENTS.items():
            self.ensure_client(client_id, role)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def ensure_client(self, client_id: str, role: str) -> Path:
        """Register ``client_id`` (if new) as a service principal (client secret) and a managed identity
        (identity header), and (re)write its credential file for the current URL. Secrets survive a
        restart while the file and the registration agree; otherwise fresh ones are issued."""
        if role not in ROLES or self._store is None or client_id.startswith(MSI_CLIENT_PREFIX) or "." in client_id:
            raise LocalStackError(f"unknown role {role!r}, bad client id, or vault not started", code="LOCAL_KV_CLIENT")
        path = self.credential_path(client_id)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        old: CredentialFile | None = None
        if path.exists():
            try:
                old = CredentialFile.load(path)
            except ConfigError:
                old = None  # an older format or a damaged file: issue fresh secrets
        secret = self._kept_secret(client_id, role, old.clientSecret if old else None)
        header_secret = self._kept_secret(MSI_CLIENT_PREFIX + client_id, role,
                                          old.identityHeader.partition(".")[2] if old else None)
        cred = CredentialFile(tenantId=CLIENT_TENANT, clientId=client_id, clientSecret=secret, authorityHost=self.url,
                              identityEndpoint=f"{self.url}{MSI_PATH}", identityHeader=f"{client_id}.{header_secret}",
                              caFile=str(self.ca_path), vaultUrl=self.url)
        path.unlink(missing_ok=True)
        write_private_file(path, json.dumps(cred.to_json(), indent=2).encode())
        return path

    def _kept_secret(self, client_id: str, role: str, old_secret: str | None) -> str:
        assert self._store is not None
        stored = self._store.get_client(client_id)
        if stored is not None and old_secret and secret_digest(old_secret) == stored[0] and stored[1] == role:
            return old_secret
        secret = new_client_secret()  # new client, lost file or role change
        self._store.put_client(client_id, secret_digest(secret), role)
        return secret

    @contextmanager
    def running_in_thread(self) -> Iterator[KeyVaultStandIn]:
        """Serve on a private event loop in a daemon thread (for synchronous callers)."""
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.start())
            except BaseException as exc:
                failure.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.stop())
            loop.close()

        thread = threading.Thread(target=run, name="keyvault-standin", daemon=True)
        thread.start()
        started.wait(30)
        if failure:
            raise failure[0]
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(30)
