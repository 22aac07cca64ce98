"""Service settings: environment variables locally, application settings in Azure Functions.

| setting | meaning | default |
|---|---|---|
| ``EDB_KEYVAULT_URL`` | the vault holding KEKs and policies | required |
| ``EDB_KEYVAULT_CREDENTIAL`` | ``default`` (DefaultAzureCredential) or a stand-in credential file path | default |
| ``EDB_KEYVAULT_CA`` | CA bundle for the vault's TLS (local stack only) | system trust |
| ``EDB_KR_MANUFACTURER_ROOTS`` | PEM file of trusted manufacturer roots (or ``..._PEM`` with the PEM text) | required |
| ``EDB_KR_PUBLISHER_ROOTS`` | PEM file of trusted publisher roots (or ``..._PEM``) | required |
| ``EDB_KR_KEK_NAMES`` | comma-separated KEK names the service may unwrap with | any key in the vault |
| ``EDB_KR_NONCE_TTL_S`` | nonce lifetime, at most 60 | 60 |
| ``EDB_KR_NONCE_KEY`` | nonce MAC key(s), base64, >= 32 bytes, comma-separated (first signs) | see below |
| ``EDB_KR_NONCE_KEY_FILE`` | file holding the nonce key(s); created with a random key if absent | see below |
| ``EDB_KR_RATE_BURST`` / ``EDB_KR_RATE_PER_MINUTE`` | per-device token bucket | 10 / 30 |
| ``EDB_KR_NONCE_RATE_BURST`` / ``..._PER_MINUTE`` | ``/api/nonce`` token bucket per client address | 30 / 120 |
| ``EDB_KR_POLICY_CACHE_S`` | how long a read policy is reused (0 = read every time) | 10 |
| ``EDB_KR_LEGACY_ENABLED`` | ``1`` to serve the legacy WrapKey/ProvisionKey routes (weaker) | off |
| ``EDB_KR_LEGACY_API_KEY`` | key the local host requires on legacy routes (``?code=`` or ``x-functions-key``) | none |
| ``EDB_KR_AUDIT_LOG`` | audit file path; empty = the ``edb.keyrelease.audit`` logger | logger |
| ``EDB_KR_NONCE_STORE`` | spent nonces: ``memory``, ``table`` (= ``AzureWebJobsStorage``), | memory |
|                        | a storage connection string, or ``https://...`` (managed identity) |        |
| ``EDB_KR_NONCE_TABLE`` | table name of the shared store | edbspentnonces |
| ``EDB_KR_NONCE_STORE_CA`` | CA bundle for the table endpoint's TLS (local stack only) | system trust |

Without a nonce key setting the service makes a random one per process (one instance only; see
:mod:`key_release_service.nonce_keys`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography import x509

from edb.errors import ConfigError
from edb.pki.certs import load_pem_certificates, load_pem_certificates_file
from edb.pki.errors import CertificateError
from key_release_service.nonce_keys import load_or_create_key_file, parse_nonce_keys


@dataclass(frozen=True)
class ServiceConfig:
    vault_url: str
    manufacturer_roots: tuple[x509.Certificate, ...] = field(repr=False)
    publisher_roots: tuple[x509.Certificate, ...] = field(repr=False)
    credential: str = "default"
    vault_ca: str | None = None
    kek_names: frozenset[str] | None = None
    nonce_ttl_s: float = 60.0
    #: MAC keys of nonces (first signs, all verify); empty = a random key per process
    nonce_keys: tuple[bytes, ...] = field(default=(), repr=False)
    rate_burst: int = 10
    rate_per_minute: float = 30.0
    nonce_rate_burst: int = 30
    nonce_rate_per_minute: float = 120.0
    policy_cache_s: float = 10.0
    legacy_enabled: bool = False
    legacy_api_key: str | None = field(default=None, repr=False)
    audit_log: str | None = None
    #: shared spent-nonce store: None = in memory (one process); a storage connection string or an
    #: ``https://`` table endpoint (then the service identity authenticates)
    nonce_store: str | None = field(default=None, repr=False)
    nonce_table: str = "edbspentnonces"
    nonce_store_ca: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServiceConfig:
        env = os.environ if env is None else env

        def need(name: str) -> str:
            value = env.get(name, "").strip()
            if not value:
                raise ConfigError(f"setting {name} is required", code="CONFIG_MISSING")
            return value

        def roots(name: str) -> tuple[x509.Certificate, ...]:
            try:
                if env.get(name + "_PEM", "").strip():
                    return tuple(load_pem_certificates(env[name + "_PEM"].encode()))
                return tuple(load_pem_certificates_file(need(name)))
            except CertificateError as exc:
                raise ConfigError(f"{name}: {exc.message}", code="CONFIG_INVALID") from exc

        def number(name: str, default: float) -> float:
            try:
                return float(env.get(name, "") or default)
            except ValueError as exc:
                raise ConfigError(f"setting {name} must be a number", code="CONFIG_INVALID") from exc

        ttl = number("EDB_KR_NONCE_TTL_S", 60.0)
        if not 0 < ttl <= 60:
            raise ConfigError("EDB_KR_NONCE_TTL_S must be in (0, 60]", code="CONFIG_INVALID")
        names = [n.strip() for n in env.get("EDB_KR_KEK_NAMES", "").split(",") if n.strip()]
        inline_keys, key_file = env.get("EDB_KR_NONCE_KEY", "").strip(), env.get("EDB_KR_NONCE_KEY_FILE", "").strip()
        if inline_keys and key_file:
            raise ConfigError("set EDB_KR_NONCE_KEY or EDB_KR_NONCE_KEY_FILE, not both", code="CONFIG_INVALID")
        nonce_keys: tuple[bytes, ...] = ()
        if inline_keys:
            nonce_keys = parse_nonce_keys(inline_keys, what="EDB_KR_NONCE_KEY")
        elif key_file:
            nonce_keys = load_or_create_key_file(key_file)
        return cls(
            nonce_store=_nonce_store(env),
            nonce_table=_table_name(env.get("EDB_KR_NONCE_TABLE", "").strip() or "edbspentnonces"),
            nonce_store_ca=env.get("EDB_KR_NONCE_STORE_CA", "").strip() or None,
            vault_url=need("EDB_KEYVAULT_URL").rstrip("/"),
            manufacturer_roots=roots("EDB_KR_MANUFACTURER_ROOTS"),
            publisher_roots=roots("EDB_KR_PUBLISHER_ROOTS"),
            credential=env.get("EDB_KEYVAULT_CREDENTIAL", "").strip() or "default",
            vault_ca=env.get("EDB_KEYVAULT_CA", "").strip() or None,
            kek_names=frozenset(names) if names else None,
            nonce_ttl_s=ttl,
            nonce_keys=nonce_keys,
            rate_burst=int(number("EDB_KR_RATE_BURST", 10)),
            rate_per_minute=number("EDB_KR_RATE_PER_MINUTE", 30.0),
            nonce_rate_burst=int(number("EDB_KR_NONCE_RATE_BURST", 30)),
            nonce_rate_per_minute=number("EDB_KR_NONCE_RATE_PER_MINUTE", 120.0),
            policy_cache_s=number("EDB_KR_POLICY_CACHE_S", 10.0),
            legacy_enabled=env.get("EDB_KR_LEGACY_ENABLED", "").strip().lower() in ("1", "true", "yes"),
            legacy_api_key=env.get("EDB_KR_LEGACY_API_KEY", "").strip() or None,
            audit_log=env.get("EDB_KR_AUDIT_LOG", "").strip() or None,
        )


_TABLE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,62}$")


def _https_connection_string(value: str) -> bool:
    """A storage connection string (with an account name) whose table endpoints are all HTTPS: the
    explicit ones (``TableEndpoint``, ``TableSecondaryEndpoint``: they override the default
    protocol), else ``DefaultEndpointsProtocol=https``. Keys are case-insensitive, as the SDK reads them."""
    settings: dict[str, str] = {}
    for part in value.strip().rstrip(";").split(";"):
        key, sep, val = part.partition("=")
        if not sep:
            return False
        settings[key.strip().upper()] = val.strip()
    if "ACCOUNTNAME" not in settings:
        return False
    endpoints = [v for k, v in settings.items() if k.startswith("TABLE") and k.endswith("ENDPOINT")]
    if endpoints:
        return all(v.lower().startswith("https://") for v in endpoints)
    return settings.get("DEFAULTENDPOINTSPROTOCOL", "").lower() == "https"


def _nonce_store(env: Mapping[str, str]) -> str | None:
    """``EDB_KR_NONCE_STORE``: where spent nonces live (see the table above)."""
    value = env.get("EDB_KR_NONCE_STORE", "").strip()
    if value in ("", "memory"):
        return None
    if value == "table":
        value = env.get("AzureWebJobsStorage", "").strip()
        if not value:
            raise ConfigError("EDB_KR_NONCE_STORE=table needs the AzureWebJobsStorage setting", code="CONFIG_MISSING")
        if value.startswith("UseDevelopmentStorage"):
            raise ConfigError("EDB_KR_NONCE_STORE=table: AzureWebJobsStorage names the development storage; give "
                              "its connection string (HTTPS) instead", code="CONFIG_INVALID")
    if value.startswith("https://") or _https_connection_string(value):
        return value
    # never echo the value: it may hold an account key
    raise ConfigError("EDB_KR_NONCE_STORE must be memory, table, an HTTPS table endpoint or a storage connection "
                      "string with HTTPS endpoints", code="CONFIG_INVALID")


def _table_name(name: str) -> str:
    if not _TABLE_NAME.match(name):
        raise ConfigError("EDB_KR_NONCE_TABLE must be 3-63 letters and digits, starting with a letter",
                          code="CONFIG_INVALID")
    return name
