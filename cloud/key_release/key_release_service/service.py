"""The handlers: ``POST /api/nonce``, ``POST /api/release`` and the legacy routes.

``release`` runs the checks in the order the design fixes, each failing with its own code:

1. device certificate chain to a pinned manufacturer root, validity, attestation purpose;
2. evidence signature with the leaf key, evidence subject = certificate CN;
   (then the per-device rate limit: only an authenticated device can spend its own budget)
3. nonce issued here (its MAC), fresh (<= 60 s) and unused (the spent-nonce store: in memory, or
   the table every instance shares; a store that cannot answer is ``KR_NONCE_STORE_UNAVAILABLE``);
4. one-time key: the request's JWK hashes to the evidence's ``otk``;
   the package: signed manifest authenticated with the pinned publisher root; request, evidence
   and manifest name the same package, version, security version and manifest bytes; not expired;
   the manifest targets this device or its class;
5. policy for the package (device, class, TEE svn, measurement, package svn, revoked);
6. only then Key Vault ``unwrapKey`` of the manifest's wrapped DEK (kid in our vault), and the DEK
   wrapped to the one-time key as a JWE. Every decision is one audit line.

Every decision means every one: a request the host refuses before a handler runs (a body over the
limit, ``KR_REQUEST_TOO_LARGE``, locally and in the Functions adapter) is audited through
:meth:`KeyReleaseService.refuse_early`, and so is a refused nonce request (rate limit). Nonces
issued are not audited: issuing one grants nothing.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edb.attestation.errors import AttestationError
from edb.attestation.evidence import public_key_hash, unverified_claims
from edb.attestation.keywrap import load_public_jwk, wrap_to_one_time_key
from key_release_service import codes
from key_release_service.audit import AuditLog, AuditRecord
from key_release_service.codes import Denied
from key_release_service.config import ServiceConfig
from key_release_service.device import authenticate_device
from key_release_service.http_types import ApiRequest, ApiResponse, ok
from key_release_service.keyvault import AzureVaultGateway, VaultGateway, check_kid
from key_release_service.legacy import check_key_name, parse_wrap_request, wrap_class_key
from key_release_service.manifest import authenticate_manifest, check_package_binding, check_target
from key_release_service.nonces import (
    MIN_KEY_BYTES,
    MemorySpentNonceStore,
    NonceIssuer,
    SpentNonces,
    SpentNonceStore,
    require_first_use,
)
from key_release_service.policy import ReleaseFacts, ReleasePolicy, evaluate, parse_policy, policy_secret_name
from key_release_service.ratelimit import RateLimiter, address_key
from key_release_service.request import parse_release_request

log = logging.getLogger("edb.keyrelease")


def _rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PolicyCache:
    """Policies are read from Key Vault and reused for ``ttl_s`` (0 = read on every release)."""

    def __init__(self, vault: VaultGateway, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._vault = vault
        self._ttl = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, ReleasePolicy | None]] = {}

    async def get(self, package_id: str) -> ReleasePolicy:
        now = self._clock()
        hit = self._cache.get(package_id)
        if hit is not None and now - hit[0] < self._ttl:
            policy = hit[1]
        else:
            text = await self._vault.get_policy_text(policy_secret_name(package_id))
            policy = None if text is None else parse_policy(text, expected_package_id=package_id)
            if self._ttl > 0:
                if len(self._cache) > 10_000:
                    self._cache.clear()
                self._cache[package_id] = (now, policy)
        if policy is None:
            raise Denied(codes.POLICY_NOT_FOUND, "no release policy for this package")
        return policy


class KeyReleaseService:
    def __init__(self, config: ServiceConfig, vault: VaultGateway, *, audit: AuditLog | None = None,
                 nonces: NonceIssuer | None = None, spent: SpentNonceStore | SpentNonces | None = None,
                 limiter: RateLimiter | None = None, nonce_limiter: RateLimiter | None = None,
                 wall_clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.config = config
        self.vault = vault
        self.audit = audit or AuditLog.to_logger()
        if nonces is None:
            keys = config.nonce_keys
            if not keys:
                log.warning("no nonce key configured (EDB_KR_NONCE_KEY/_FILE): using a random key for this "
                            "process only; a scaled-out deployment needs one shared key")
                keys = (secrets.token_bytes(MIN_KEY_BYTES),)
            nonces = NonceIssuer(keys, config.nonce_ttl_s)
        self.nonces = nonces
        self.spent = spent if spent is not None else MemorySpentNonceStore()
        self.limiter = limiter or RateLimiter(burst=config.rate_burst, per_minute=config.rate_per_minute)
        self.nonce_limiter = nonce_limiter or RateLimiter(
            burst=config.nonce_rate_burst, per_minute=config.nonce_rate_per_minute,
            what="nonce requests from this address")
        self.policies = PolicyCache(vault, config.policy_cache_s)
        self._now = wall_clock

    @property
    def spent(self) -> SpentNonceStore:
        return self._spent

    @spent.setter
    def spent(self, store: SpentNonceStore | SpentNonces) -> None:
        """A bare in-memory :class:`SpentNonces` is adapted to the store interface."""
        self._spent = MemorySpentNonceStore(store) if isinstance(store, SpentNonces) else store

    @classmethod
    def from_config(cls, config: ServiceConfig) -> KeyReleaseService:
        audit = AuditLog.to_file(config.audit_log) if config.audit_log else AuditLog.to_logger()
        return cls(config, AzureVaultGateway(config.vault_url, make_credential(config), ca_file=config.vault_ca),
                   audit=audit, spent=make_spent_store(config))

    async def close(self) -> None:
        await self.spent.close()
        await self.vault.close()

    # -- POST /api/nonce -------------------------------------------------------------------------

    async def nonce(self, request: ApiRequest) -> ApiResponse:
        """Stores nothing per nonce (see :mod:`key_release_service.nonces`); limited per address as
        defence in depth."""
        try:
            self.nonce_limiter.check(address_key(request.remote))
        except Denied as denial:
            return self.refuse_early("nonce", denial, request.remote)
        nonce, expires = self.nonces.issue()
        return ok({"nonce": nonce, "expiresAt": _rfc3339(expires)})

    def refuse_early(self, event: str, denial: Denied, remote: str | None) -> ApiResponse:
        """The answer to a request refused before its handler ran, with its audit line (the same
        shape as every other decision: event, decision, code, remote, no claimed identity)."""
        self.audit.write(AuditRecord(event=event, decision="error" if denial.status >= 500 else "deny",
                                     code=denial.code, remote=remote, ms=0.0))
        return ApiResponse.from_denial(denial)

    # -- POST /api/release -----------------------------------------------------------------------

    async def _audited(self, record: AuditRecord, handle: Callable[[], Awaitable[ApiResponse]]) -> ApiResponse:
        """``handle()``'s answer, or a denial's; either way one audit line with the decision, code and time."""
        started = time.perf_counter()
        try:
            response = await handle()
            record.decision, record.code = "allow", codes.OK
            return response
        except Denied as denial:
            record.decision, record.code = ("error" if denial.status >= 500 else "deny"), denial.code
            return ApiResponse.from_denial(denial)
        finally:
            record.ms = round((time.perf_counter() - started) * 1000, 2)
            self.audit.write(record)

    async def release(self, request: ApiRequest) -> ApiResponse:
        record = AuditRecord(event="release", remote=request.remote)

        async def handle() -> ApiResponse:
            try:
                return ok(await self._release(request, record))
            except Denied:
                raise
            except Exception as exc:  # fail closed, never leak internals to the caller
                log.error("release failed unexpectedly: %s", type(exc).__name__, exc_info=True)
                raise Denied(codes.INTERNAL, "internal error") from None

        return await self._audited(record, handle)

    async def _release(self, request: ApiRequest, record: AuditRecord) -> dict[str, Any]:
        req = parse_release_request(request.body)
        record.package, record.version = req.package_id, req.package_version
        with contextlib.suppress(AttestationError):  # for the audit line only: who the request *claims* to be
            record.device = unverified_claims(req.evidence).device_id
        now = self._now()

        device = authenticate_device(req.cert_chain_der, req.evidence, self.config.manufacturer_roots, now)  # 1, 2
        record.device, record.deviceClass, record.deviceVerified = device.device_id, device.device_class, True
        self.limiter.check(device.device_id)
        nonce = self.nonces.check(device.claims.nonce)  # 3: ours, fresh, first use (in every instance)
        require_first_use(await self.spent.spend(nonce.nonce_id, nonce.expires))
        try:  # 4
            one_time_key = load_public_jwk(req.one_time_key)
        except AttestationError as exc:
            raise Denied(codes.MALFORMED_REQUEST, f"oneTimeKey: {exc.message}") from exc
        if public_key_hash(one_time_key) != device.claims.one_time_key_hash:
            raise Denied(codes.ONE_TIME_KEY_MISMATCH, "oneTimeKey is not the key the evidence names")

        manifest, manifest_sha256 = authenticate_manifest(req.manifest, self.config.publisher_roots, now)
        record.securityVersion, record.kid = manifest.security_version, manifest.kid
        check_package_binding(device.claims, req.package_id, req.package_version, manifest, manifest_sha256, now)
        check_target(manifest, device.device_id, device.device_class)

        policy = await self.policies.get(manifest.package_id)  # 5
        evaluate(policy, ReleaseFacts(
            device_id=device.device_id, device_class=device.device_class, tee_svn=device.claims.tee_svn,
            tee_measurement=device.claims.tee_measurement, package_id=manifest.package_id,
            version=manifest.version, security_version=manifest.security_version,
        ))

        check_kid(manifest.kid, self.config.vault_url, self.config.kek_names)  # 6
        dek = await self.vault.unwrap(manifest.kid, manifest.wrapped_dek.value)
        if len(dek) != 32:
            raise Denied(codes.UNWRAP_REJECTED, "unwrapped key is not a 32-byte DEK")
        jwe = wrap_to_one_time_key(dek, one_time_key, package_id=manifest.package_id, version=manifest.version,
                                   kid=manifest.kid)
        del dek
        return {"jwe": jwe, "kid": manifest.kid,
                "package": {"id": manifest.package_id, "version": manifest.version,
                            "securityVersion": manifest.security_version}}

    # -- legacy routes (off by default; weaker) ----------------------------------------------------

    def _legacy_gate(self, request: ApiRequest) -> None:
        if not self.config.legacy_enabled:
            raise Denied(codes.LEGACY_DISABLED, "the legacy wrap contract is disabled on this service")

    async def legacy_wrap_key(self, request: ApiRequest) -> ApiResponse:
        record = AuditRecord(event="legacy-wrap", remote=request.remote)

        async def handle() -> ApiResponse:
            self._legacy_gate(request)
            name, client_key = parse_wrap_request(request.body)
            record.package = name
            class_key = await self.vault.get_legacy_key(name)
            if class_key is None:
                raise Denied(codes.LEGACY_KEY_NOT_FOUND, "no class key with this name")
            wrapped = wrap_class_key(class_key, client_key)
            del class_key
            return ok({"wrapped_key": wrapped})

        return await self._audited(record, handle)

    async def legacy_provision_key(self, request: ApiRequest) -> ApiResponse:
        record = AuditRecord(event="legacy-provision", remote=request.remote)

        async def handle() -> ApiResponse:
            self._legacy_gate(request)
            name = check_key_name(request.route_params.get("key_name"))
            record.package = name
            created = await self.vault.provision_legacy_key(name)
            return ApiResponse(201 if created else 200, {"key_name": name, "created": created},
                               {"Cache-Control": "no-store"})

        return await self._audited(record, handle)


def make_credential(config: ServiceConfig) -> Any:
    """``default`` -> azure-identity's DefaultAzureCredential: a managed identity (``IDENTITY_ENDPOINT``
    + ``IDENTITY_HEADER``) in Azure Functions and in the local stack alike, the vault CA (if any) as
    its ``connection_verify``; a path -> azure-identity's ClientSecretCredential for a stand-in
    credential file (tests and tools)."""
    if config.credential == "default":
        from azure.identity.aio import DefaultAzureCredential

        return DefaultAzureCredential(**({"connection_verify": config.vault_ca} if config.vault_ca else {}))
    from edb_local.keyvault.credential_file import CredentialFile

    return CredentialFile.load(config.credential).client_secret_credential(aio=True)


def make_spent_store(config: ServiceConfig) -> SpentNonceStore:
    """In memory unless ``EDB_KR_NONCE_STORE`` names a table (connection string or endpoint)."""
    if config.nonce_store is None:
        return MemorySpentNonceStore()
    from key_release_service.table_spent_store import TableSpentNonceStore

    if config.nonce_store.startswith("https://"):
        from azure.identity.aio import DefaultAzureCredential

        return TableSpentNonceStore.from_endpoint(config.nonce_store, DefaultAzureCredential(), config.nonce_table,
                                                  ca_file=config.nonce_store_ca)
    return TableSpentNonceStore.from_connection_string(config.nonce_store, config.nonce_table,
                                                       ca_file=config.nonce_store_ca)
