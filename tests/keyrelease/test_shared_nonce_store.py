"""Single use across scaled-out instances: the spent-nonce store in Azure Table Storage (a real
Azurite ``azurite-table`` over HTTPS with the stack CA, the real ``azure-data-tables`` client).

Two service objects with separate memory stand for two Functions instances: they share the nonce
key and the table, nothing else."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.data.tables import TableClient
from kr_helpers import (
    Manufacturer,
    Publisher,
    SimDevice,
    UnwrapCounter,
    build_package,
    error_code,
    nonce_of,
    release,
    unique,
)

from edb.cpk import BuildResult
from edb.errors import ConfigError
from edb.keys.azure_keyvault import KeyVaultKek
from edb_local.azurite import azurite_table_command, table_connection_string
from edb_local.azurite import table_not_installed_reason as azurite_table_missing
from edb_local.net import free_port
from edb_local.stack_ca import StackCA
from key_release_service import codes
from key_release_service.config import ServiceConfig
from key_release_service.nonces import MAX_SKEW_S
from key_release_service.service import KeyReleaseService, make_spent_store
from key_release_service.table_spent_store import TableSpentNonceStore, partition_of

ServiceFactory = Callable[..., KeyReleaseService]
NONCE_KEY = bytes(range(32))


@dataclass
class Tables:
    """A running azurite-table; ``stop``/``start`` keep its address, port and data."""

    address: str
    port: int
    argv: list[str]
    ca: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def connection_string(self) -> str:
        return table_connection_string(self.address, self.port)

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.address, self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("azurite-table did not listen")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def store(self, table: str, **kwargs: Any) -> TableSpentNonceStore:
        return TableSpentNonceStore.from_connection_string(self.connection_string, table, ca_file=self.ca, **kwargs)

    def rows(self, table: str) -> list[dict[str, Any]]:
        with TableClient.from_connection_string(self.connection_string, table_name=table,
                                                connection_verify=self.ca) as client:
            return [dict(row) for row in client.list_entities()]


@pytest.fixture
def tables(stack_ca: StackCA, loopback_address: str, tmp_path: Path) -> Iterator[Tables]:
    assert azurite_table_missing() is None, azurite_table_missing()
    port = free_port(loopback_address)
    creds = stack_ca.issue_server("azurite", ips=[loopback_address], out_dir=tmp_path / "certs")
    (tmp_path / "tables").mkdir()
    running = Tables(loopback_address, port, azurite_table_command(
        address=loopback_address, port=port, location=tmp_path / "tables", cert=creds.cert_path,
        key=creds.key_path), str(stack_ca.ca_path))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def device(manufacturer: Manufacturer) -> SimDevice:
    return manufacturer.device(unique("dev"))


@pytest.fixture
def package(kek: KeyVaultKek, publisher: Publisher, set_policy: Callable[..., Any]) -> tuple[BuildResult, bytes]:
    pid = unique("pkg")
    set_policy(pid)
    return build_package(kek, publisher, pid)


def instance(make_service: ServiceFactory, store: TableSpentNonceStore) -> KeyReleaseService:
    """One "instance": its own memory, the shared nonce key, the shared table."""
    service = make_service(nonce_keys=(NONCE_KEY,))
    service.spent = store
    return service


def table_name() -> str:
    return "spent" + secrets.token_hex(6)


async def test_nonce_spent_on_one_instance_is_refused_on_another(
        make_service: ServiceFactory, tables: Tables, device: SimDevice, package: tuple[BuildResult, bytes],
        audit_lines: list[str]) -> None:
    name = table_name()
    first, second = instance(make_service, tables.store(name)), instance(make_service, tables.store(name))
    counter_first, counter_second = UnwrapCounter(first), UnwrapCounter(second)
    pkg, _ = package
    nonce = await nonce_of(first)
    allowed, _ = await release(first, device, pkg, nonce=nonce)
    assert allowed.status == 200, allowed.body
    replay, _ = await release(second, device, pkg, nonce=nonce)  # the other instance, same nonce
    assert replay.status == 401 and error_code(replay.body) == codes.NONCE_REPLAYED
    again, _ = await release(first, device, pkg, nonce=nonce)  # and the one that spent it
    assert error_code(again.body) == codes.NONCE_REPLAYED
    assert (counter_first.calls, counter_second.calls) == (1, 0)
    assert json.loads(audit_lines[-1])["code"] == codes.NONCE_REPLAYED
    (row,) = tables.rows(name)  # one row, keyed by the nonce's random part; no secret in it
    assert set(row) == {"PartitionKey", "RowKey", "ExpiresAt"} and len(row["RowKey"]) == 64
    assert row["PartitionKey"] == row["RowKey"][:2]
    # nothing lost: each instance still releases with a fresh nonce of its own or of the other
    fresh, _ = await release(second, device, pkg, nonce=await nonce_of(first))
    assert fresh.status == 200, fresh.body


async def test_concurrent_double_spend_succeeds_exactly_once(
        make_service: ServiceFactory, tables: Tables, device: SimDevice,
        package: tuple[BuildResult, bytes]) -> None:
    name = table_name()
    # 20 threads, each its own client and event loop (as 20 instances would be), one nonce id
    nonce_id, expires = secrets.token_bytes(32), time.time() + 60
    barrier = threading.Barrier(20)
    results: list[bool | BaseException] = []

    def spend() -> None:
        async def run() -> bool:
            store = tables.store(name)
            try:
                await store.spend(secrets.token_bytes(32), expires)  # table exists, connection warm
                barrier.wait(30)
                return await store.spend(nonce_id, expires)
            finally:
                await store.close()

        try:
            results.append(asyncio.run(run()))
        except BaseException as exc:  # reported by the assertion below
            results.append(exc)

    threads = [threading.Thread(target=spend) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(map(repr, results)) == ["False"] * 19 + ["True"]

    # the same through the release handler: 2 instances x 5 concurrent releases of one nonce
    first, second = instance(make_service, tables.store(name)), instance(make_service, tables.store(name))
    counters = UnwrapCounter(first), UnwrapCounter(second)
    pkg, _ = package
    nonce = await nonce_of(second)
    responses = await asyncio.gather(*(release(svc, device, pkg, nonce=nonce) for svc in (first, second) * 5))
    statuses = sorted((r.status, error_code(r.body) if r.status != 200 else "") for r, _ in responses)
    assert statuses == [(200, "")] + [(401, codes.NONCE_REPLAYED)] * 9
    assert sum(c.calls for c in counters) == 1


async def test_store_down_is_503_and_nothing_is_unwrapped(
        make_service: ServiceFactory, tables: Tables, device: SimDevice, package: tuple[BuildResult, bytes],
        audit_lines: list[str]) -> None:
    name = table_name()
    service = instance(make_service, tables.store(name, timeout_s=3.0))
    counter = UnwrapCounter(service)
    pkg, _ = package
    ok, _ = await release(service, device, pkg)
    assert ok.status == 200 and counter.calls == 1
    tables.stop()
    try:
        down, _ = await release(service, device, pkg)
    finally:
        tables.start()
    assert down.status == 503 and error_code(down.body) == codes.NONCE_STORE_UNAVAILABLE
    assert down.headers.get("Retry-After") == "1"
    assert counter.calls == 1  # no unwrap for the refused release
    line = json.loads(audit_lines[-1])
    assert line["decision"] == "error" and line["code"] == codes.NONCE_STORE_UNAVAILABLE
    assert "kid" not in line  # stopped at check 3: the manifest's key was never reached
    assert tables.connection_string.split("AccountKey=")[1].split(";")[0] not in "\n".join(audit_lines)
    # nothing lost: with the store back, the device's retry (a fresh nonce) is released
    back, _ = await release(service, device, pkg)
    assert back.status == 200, back.body
    assert counter.calls == 2


async def test_store_with_an_untrusted_certificate_fails_closed(
        make_service: ServiceFactory, tables: Tables, device: SimDevice,
        package: tuple[BuildResult, bytes]) -> None:
    """TLS is verified: the system trust does not know the stack CA, so no spend, no release."""
    store = TableSpentNonceStore.from_connection_string(tables.connection_string, table_name())
    service = instance(make_service, store)
    counter = UnwrapCounter(service)
    pkg, _ = package
    response, _ = await release(service, device, pkg)
    assert response.status == 503 and error_code(response.body) == codes.NONCE_STORE_UNAVAILABLE
    assert counter.calls == 0


async def test_expired_rows_never_block_and_are_swept(tables: Tables) -> None:
    name = table_name()
    now = [time.time()]
    store = tables.store(name, partitions=1, sweep_interval_s=0.0, clock=lambda: now[0])
    try:
        stale = secrets.token_bytes(32)
        assert await store.spend(stale, now[0] - 30)  # a row whose nonce expired long ago
        assert await store.spend(stale, now[0] + 60)  # does not block: taken over under its ETag
        assert not await store.spend(stale, now[0] + 60)  # and now it is spent
        old = [secrets.token_bytes(32) for _ in range(5)]
        for nonce_id in old:
            assert await store.spend(nonce_id, now[0] - 30)
        just_expired = secrets.token_bytes(32)
        assert await store.spend(just_expired, now[0] - MAX_SKEW_S / 2)  # within the skew: kept
        await store.idle()
        live = secrets.token_bytes(32)
        assert await store.spend(live, now[0] + 60)  # a spend starts a bounded background sweep
        await store.idle()
        remaining = {row["RowKey"] for row in tables.rows(name)}
        assert remaining == {stale.hex(), just_expired.hex(), live.hex()}
        assert await store.sweep(partition_of(live, 1)) == 0  # nothing left past the skew
        now[0] += 61 + MAX_SKEW_S
        assert await store.sweep(partition_of(live, 1)) == 3
        assert tables.rows(name) == []
    finally:
        await store.close()


async def test_sweep_is_bounded_per_pass(tables: Tables) -> None:
    name = table_name()
    store = tables.store(name, partitions=1, sweep_batch=4, sweep_interval_s=3600.0)
    try:
        await store.spend(secrets.token_bytes(32), time.time() - 60)  # the first spend starts a pass...
        await store.idle()
        assert tables.rows(name) == []  # ...which deleted that expired row
        for _ in range(6):  # no other pass within the interval
            await store.spend(secrets.token_bytes(32), time.time() - 60)
        await store.idle()
        assert len(tables.rows(name)) == 6
        assert await store.sweep("00") == 4  # one pass: one page, at most sweep_batch deletes
        assert len(tables.rows(name)) == 2
        assert await store.sweep("00") == 2
    finally:
        await store.close()


def test_store_configuration(stack_ca: StackCA, tmp_path: Path) -> None:
    roots = tmp_path / "roots.pem"
    roots.write_bytes(stack_ca.ca_path.read_bytes())
    base = {"EDB_KEYVAULT_URL": "https://vault.example", "EDB_KR_MANUFACTURER_ROOTS": str(roots),
            "EDB_KR_PUBLISHER_ROOTS": str(roots)}
    secret_string = table_connection_string("127.0.0.1", 10002)
    assert ServiceConfig.from_env(base).nonce_store is None  # default: one process, in memory
    assert ServiceConfig.from_env({**base, "EDB_KR_NONCE_STORE": "memory"}).nonce_store is None
    config = ServiceConfig.from_env({**base, "EDB_KR_NONCE_STORE": "table", "AzureWebJobsStorage": secret_string,
                                     "EDB_KR_NONCE_TABLE": "nonces2", "EDB_KR_NONCE_STORE_CA": "/ca.pem"})
    assert (config.nonce_store, config.nonce_table, config.nonce_store_ca) == (secret_string, "nonces2", "/ca.pem")
    assert "AccountKey" not in repr(config)
    endpoint = ServiceConfig.from_env({**base, "EDB_KR_NONCE_STORE": "https://acct.table.core.windows.net"})
    assert endpoint.nonce_store == "https://acct.table.core.windows.net"
    refused = [
        {"EDB_KR_NONCE_STORE": "table"},  # no AzureWebJobsStorage
        {"EDB_KR_NONCE_STORE": "table", "AzureWebJobsStorage": "UseDevelopmentStorage=true"},
        {"EDB_KR_NONCE_STORE": "http://acct.table.core.windows.net"},  # never plain HTTP
        {"EDB_KR_NONCE_STORE": secret_string.replace("https", "http")},
        # the https default does not make an explicit plain-HTTP table endpoint safe
        {"EDB_KR_NONCE_STORE": secret_string.replace("TableEndpoint=https", "TableEndpoint=http")},
        {"EDB_KR_NONCE_STORE": secret_string.replace("TableEndpoint=https", "TableEndpoint=HTTP")},
        {"EDB_KR_NONCE_STORE": "redis"},
        {"EDB_KR_NONCE_TABLE": "no-dashes"},
        {"EDB_KR_NONCE_TABLE": "ab"},
    ]
    for extra in refused:
        with pytest.raises(ConfigError) as exc:
            ServiceConfig.from_env({**base, **extra})
        assert exc.value.code in ("CONFIG_MISSING", "CONFIG_INVALID") and "AccountKey" not in str(exc.value)


async def test_service_built_from_settings_uses_the_table(
        base_config: ServiceConfig, tables: Tables) -> None:
    config = ServiceConfig(**{**base_config.__dict__, "nonce_store": tables.connection_string,
                              "nonce_table": table_name(), "nonce_store_ca": tables.ca})
    store = make_spent_store(config)
    try:
        assert isinstance(store, TableSpentNonceStore) and "AccountKey" not in repr(store)
        nonce_id = os.urandom(32)
        assert await store.spend(nonce_id, time.time() + 60)
        assert not await store.spend(nonce_id, time.time() + 60)
    finally:
        await store.close()
