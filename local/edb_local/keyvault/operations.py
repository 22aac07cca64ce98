"""What each Key Vault REST call does, independent of HTTP framing.

``VaultOperations`` takes a caller (:class:`~edb_local.keyvault.tokens.Principal`), a parsed path and
a JSON body and returns ``(status, body)`` or raises :class:`~edb_local.keyvault.errors.VaultError`.
The aiohttp layer (:mod:`edb_local.keyvault.app`) only authenticates and frames.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from typing import Any

from edb_local.keyvault import bundles, vault_crypto
from edb_local.keyvault.errors import (
    VaultError,
    access_denied,
    bad_parameter,
    disabled,
    not_in_validity_window,
    operation_forbidden,
)
from edb_local.keyvault.store import VaultObject, VaultStore
from edb_local.keyvault.tokens import Principal

NAME_RE = re.compile(r"^[0-9A-Za-z-]{1,127}$")
VERSION_RE = re.compile(r"^[0-9a-f]{32}$")
MAX_TAGS = 15
MAX_TAG_NAME = 512
MAX_TAG_VALUE = 256
MAX_SECRET_BYTES = 25 * 1024
PAGE_SIZE = 25

#: URL operation segment -> (permission, key_ops entry). Every one of them is refused on a disabled
#: key version and outside its nbf/exp window (403 KeyDisabled / KeyExpired), the public-key ones
#: (encrypt, wrapKey, verify) included.
KEY_OPERATIONS: dict[str, tuple[str, str]] = {
    "encrypt": ("keys/encrypt", "encrypt"),
    "decrypt": ("keys/decrypt", "decrypt"),
    "wrapkey": ("keys/wrapKey", "wrapKey"),
    "unwrapkey": ("keys/unwrapKey", "unwrapKey"),
    "sign": ("keys/sign", "sign"),
    "verify": ("keys/verify", "verify"),
}

Result = tuple[int, dict[str, Any] | None]


def _check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise bad_parameter("The name must be 1-127 characters: letters, digits and dashes.")
    return name


def _check_version(version: str | None) -> str | None:
    if version and not VERSION_RE.match(version):
        raise bad_parameter("The version is not a valid object version.")
    return version or None


def _parse_tags(value: object) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_TAGS:
        raise bad_parameter(f"Tags must be an object of at most {MAX_TAGS} string pairs.")
    for k, v in value.items():
        if not isinstance(k, str) or not isinstance(v, str) or not k or len(k) > MAX_TAG_NAME or len(v) > MAX_TAG_VALUE:
            raise bad_parameter(f"Tag names are 1-{MAX_TAG_NAME} characters and values at most {MAX_TAG_VALUE}.")
    return dict(value)


def _parse_attributes(value: object) -> tuple[bool | None, int | None, int | None]:
    if value is None:
        return None, None, None
    if not isinstance(value, dict):
        raise bad_parameter("attributes must be an object")
    enabled, nbf, exp = value.get("enabled"), value.get("nbf"), value.get("exp")
    if enabled is not None and not isinstance(enabled, bool):
        raise bad_parameter("attributes.enabled must be a boolean")
    for field_value in (nbf, exp):
        if field_value is not None and (not isinstance(field_value, int) or isinstance(field_value, bool)):
            raise bad_parameter("attributes.nbf and attributes.exp are integer seconds since the epoch")
    return enabled, nbf, exp


class VaultOperations:
    def __init__(self, store: VaultStore, base_url: str) -> None:
        self.store = store
        self.base = base_url.rstrip("/")
        self._key_cache: OrderedDict[tuple[str, str], vault_crypto.PrivateKey] = OrderedDict()

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _require(principal: Principal, permission: str, name: str | None = None) -> None:
        """``name`` is the key or secret the call acts on; None for calls on every object (lists)."""
        if not principal.may(permission, name):
            raise access_denied(principal.client_id, permission)

    def _private_key(self, obj: VaultObject) -> vault_crypto.PrivateKey:
        cache_key = (obj.name, obj.version)
        key = self._key_cache.get(cache_key)
        if key is None:
            key = vault_crypto.load_private_der(self.store.open(obj))
            self._key_cache[cache_key] = key
            if len(self._key_cache) > 256:
                self._key_cache.popitem(last=False)
        return key

    def _page(self, path: str, items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
        try:
            start = int(query.get("$skiptoken", "0"))
            size = min(int(query.get("maxresults", str(PAGE_SIZE))), PAGE_SIZE)
        except ValueError as exc:
            raise bad_parameter("maxresults and $skiptoken must be integers") from exc
        if start < 0 or size < 1:
            raise bad_parameter("maxresults must be 1-25")
        page = items[start:start + size]
        next_link = None
        if start + size < len(items):
            api = query.get("api-version", "7.6")
            next_link = f"{self.base}{path}?api-version={api}&$skiptoken={start + size}&maxresults={size}"
        return {"value": page, "nextLink": next_link}

    # -- keys ------------------------------------------------------------------------------------

    async def create_key(self, principal: Principal, name: str, body: dict[str, Any],
                         *, permission: str = "keys/create") -> Result:
        self._require(principal, permission, name)
        _check_name(name)
        spec = vault_crypto.parse_key_spec(body)
        ops = vault_crypto.parse_key_ops(body.get("key_ops"), spec)
        enabled, nbf, exp = _parse_attributes(body.get("attributes"))
        tags = _parse_tags(body.get("tags"))
        if body.get("release_policy") is not None or (body.get("attributes") or {}).get("exportable"):
            raise bad_parameter("Exportable keys and release policies are not supported by this stand-in.")
        # RSA key generation takes up to a second: keep the event loop serving other requests.
        private = await asyncio.get_running_loop().run_in_executor(None, vault_crypto.generate, spec)
        meta = {"kty": spec.kty, "key_ops": ops, "jwk": vault_crypto.public_jwk(private, spec.kty),
                "key_size": spec.size, "crv": spec.curve}
        obj = self.store.add_version("key", name, meta, vault_crypto.private_der(private),
                                     enabled=True if enabled is None else enabled, nbf=nbf, exp=exp, tags=tags)
        self._key_cache[(obj.name, obj.version)] = private
        return 200, bundles.key_bundle(self.base, obj)

    async def rotate_key(self, principal: Principal, name: str) -> Result:
        self._require(principal, "keys/rotate", name)  # before the lookup: no existence oracle
        latest = self.store.get("key", _check_name(name))
        body: dict[str, Any] = {"kty": latest.meta["kty"], "key_ops": latest.meta["key_ops"], "tags": latest.tags}
        if latest.meta.get("key_size"):
            body["key_size"] = latest.meta["key_size"]
        if latest.meta.get("crv"):
            body["crv"] = latest.meta["crv"]
        return await self.create_key(principal, name, body, permission="keys/rotate")

    def get_key(self, principal: Principal, name: str, version: str | None) -> Result:
        self._require(principal, "keys/get", name)
        obj = self.store.get("key", _check_name(name), _check_version(version))
        return 200, bundles.key_bundle(self.base, obj)

    def list_keys(self, principal: Principal, query: dict[str, str]) -> Result:
        self._require(principal, "keys/list")
        items = [bundles.key_item(self.base, o, versioned=False) for o in self.store.latest_of_each("key")]
        return 200, self._page("/keys", items, query)

    def list_key_versions(self, principal: Principal, name: str, query: dict[str, str]) -> Result:
        self._require(principal, "keys/list", name)
        items = [bundles.key_item(self.base, o) for o in self.store.versions("key", _check_name(name))]
        return 200, self._page(f"/keys/{name}/versions", items, query)

    def update_key(self, principal: Principal, name: str, version: str | None, body: dict[str, Any]) -> Result:
        self._require(principal, "keys/update", name)
        obj = self.store.get("key", _check_name(name), _check_version(version))
        enabled, nbf, exp = _parse_attributes(body.get("attributes"))
        tags = _parse_tags(body.get("tags"))
        meta = None
        if body.get("key_ops") is not None:
            spec = vault_crypto.KeySpec(obj.meta["kty"], obj.meta.get("key_size"), obj.meta.get("crv"), 65537)
            meta = dict(obj.meta, key_ops=vault_crypto.parse_key_ops(body["key_ops"], spec))
        obj = self.store.update(obj, meta=meta, enabled=enabled, nbf=nbf, exp=exp, tags=tags)
        return 200, bundles.key_bundle(self.base, obj)

    def key_operation(self, principal: Principal, name: str, version: str | None, op: str,
                      body: dict[str, Any]) -> Result:
        permission, key_op = KEY_OPERATIONS[op]
        self._require(principal, permission, name)
        obj = self.store.get("key", _check_name(name), _check_version(version))
        if key_op not in obj.meta["key_ops"]:
            raise operation_forbidden(key_op)
        if not obj.enabled:
            raise disabled(key_op)
        now = time.time()
        if (obj.nbf is not None and now < obj.nbf) or (obj.exp is not None and now >= obj.exp):
            raise not_in_validity_window(key_op)
        alg = body.get("alg")
        if not isinstance(alg, str):
            raise bad_parameter("Property alg is required")
        value = vault_crypto.b64u_decode(body.get("value"))
        key = self._private_key(obj)
        kid = bundles.object_id(self.base, obj)
        if op in ("encrypt", "wrapkey"):
            return 200, {"kid": kid, "value": vault_crypto.b64u(vault_crypto.encrypt(key, alg, value))}
        if op in ("decrypt", "unwrapkey"):
            return 200, {"kid": kid, "value": vault_crypto.b64u(vault_crypto.decrypt(key, alg, value))}
        if op == "sign":
            return 200, {"kid": kid, "value": vault_crypto.b64u(vault_crypto.sign(key, alg, value))}
        digest = vault_crypto.b64u_decode(body.get("digest"), "digest")
        return 200, {"value": vault_crypto.verify(key, alg, digest, value)}

    # -- secrets ---------------------------------------------------------------------------------

    def set_secret(self, principal: Principal, name: str, body: dict[str, Any]) -> Result:
        self._require(principal, "secrets/set", name)
        _check_name(name)
        value, content_type = body.get("value"), body.get("contentType")
        if not isinstance(value, str):
            raise bad_parameter("Property value is required and must be a string")
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise bad_parameter("The secret value exceeds 25 KB")
        if content_type is not None and (not isinstance(content_type, str) or len(content_type) > 255):
            raise bad_parameter("contentType must be a string of at most 255 characters")
        enabled, nbf, exp = _parse_attributes(body.get("attributes"))
        obj = self.store.add_version("secret", name, {"contentType": content_type}, value.encode(),
                                     enabled=True if enabled is None else enabled, nbf=nbf, exp=exp,
                                     tags=_parse_tags(body.get("tags")))
        return 200, bundles.secret_bundle(self.base, obj, value)

    def get_secret(self, principal: Principal, name: str, version: str | None) -> Result:
        self._require(principal, "secrets/get", name)
        obj = self.store.get("secret", _check_name(name), _check_version(version))
        if not obj.enabled:
            raise disabled("get", "secret")
        now = time.time()
        if (obj.nbf is not None and now < obj.nbf) or (obj.exp is not None and now >= obj.exp):
            raise not_in_validity_window("get", "secret")
        return 200, bundles.secret_bundle(self.base, obj, self.store.open(obj).decode())

    def list_secrets(self, principal: Principal, query: dict[str, str]) -> Result:
        self._require(principal, "secrets/list")
        items = [bundles.secret_item(self.base, o, versioned=False) for o in self.store.latest_of_each("secret")]
        return 200, self._page("/secrets", items, query)

    def list_secret_versions(self, principal: Principal, name: str, query: dict[str, str]) -> Result:
        self._require(principal, "secrets/list", name)
        items = [bundles.secret_item(self.base, o) for o in self.store.versions("secret", _check_name(name))]
        return 200, self._page(f"/secrets/{name}/versions", items, query)

    def update_secret(self, principal: Principal, name: str, version: str | None, body: dict[str, Any]) -> Result:
        self._require(principal, "secrets/set", name)
        obj = self.store.get("secret", _check_name(name), _check_version(version))
        enabled, nbf, exp = _parse_attributes(body.get("attributes"))
        meta = None
        if "contentType" in body:
            meta = dict(obj.meta, contentType=body["contentType"])
        obj = self.store.update(obj, meta=meta, enabled=enabled, nbf=nbf, exp=exp, tags=_parse_tags(body.get("tags")))
        return 200, bundles.secret_item(self.base, obj)

    # -- delete / recover / purge (keys and secrets) ----------------------------------------------

    def delete(self, principal: Principal, kind: str, name: str) -> Result:
        self._require(principal, f"{kind}s/delete", name)
        deletion, obj = self.store.delete(kind, _check_name(name))
        return 200, bundles.deleted_bundle(self.base, deletion, obj)

    def get_deleted(self, principal: Principal, kind: str, name: str) -> Result:
        self._require(principal, f"{kind}s/get", name)
        deletion, obj = self.store.get_deleted(kind, _check_name(name))
        return 200, bundles.deleted_bundle(self.base, deletion, obj)

    def list_deleted(self, principal: Principal, kind: str, query: dict[str, str]) -> Result:
        self._require(principal, f"{kind}s/list")
        items = [bundles.deleted_item(self.base, d, o) for d, o in self.store.list_deleted(kind)]
        return 200, self._page(f"/deleted{kind}s", items, query)

    def purge(self, principal: Principal, kind: str, name: str) -> Result:
        self._require(principal, f"{kind}s/purge", name)
        self.store.purge(kind, _check_name(name))
        self._key_cache = OrderedDict((k, v) for k, v in self._key_cache.items() if k[0].lower() != name.lower())
        return 204, None

    def recover(self, principal: Principal, kind: str, name: str) -> Result:
        self._require(principal, f"{kind}s/recover", name)
        obj = self.store.recover(kind, _check_name(name))
        if kind == "key":
            return 200, bundles.key_bundle(self.base, obj)
        return 200, bundles.secret_item(self.base, obj)


__all__ = ["KEY_OPERATIONS", "VaultError", "VaultOperations"]
