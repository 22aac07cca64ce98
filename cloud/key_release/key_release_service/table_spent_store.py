"""The spent-nonce store shared by every instance of the service: one Azure Table Storage table.

A spend is one ``Insert Entity`` (create only): PartitionKey = the nonce id's first byte in hex
(256 partitions, so writes spread), RowKey = the nonce id in hex, ``ExpiresAt`` = the nonce's
expiry. Inserted -> first use; ``409 EntityAlreadyExists`` -> replay (``KR_NONCE_REPLAYED``), unless
the row found is an expired one (then it is replaced under its ETag, so a stale row never blocks;
with random 32-byte ids that only happens to a row made for the very same id). Any other failure
(network, timeout, auth, 5xx, throttling) -> ``KR_NONCE_STORE_UNAVAILABLE`` (503): never allowed
when unsure. The SDK's own retries are off (``retry_total=0``): an insert retried after its reply
was lost would meet its own row and deny a genuine device as a replay; the device client retries
the whole nonce -> release instead (a 503 is retryable).

Expired rows: Azure Table Storage has no TTL or lifecycle policy (those are for blobs), so the
service deletes them itself, opportunistically: after a spend, at most one background pass per
``sweep_interval_s`` per instance, each pass one partition (in rotation) and at most
``sweep_batch`` rows (one query page, then one entity-group transaction of deletes with each row's
ETag, so a row reclaimed meanwhile is not deleted). Only rows expired for longer than the clock
skew tolerated between instances are deleted. Rows the sweep has not reached yet cost storage
only: an expired nonce is refused by its expiry before the store is asked.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import ResourceExistsError, ResourceModifiedError, ResourceNotFoundError
from azure.data.tables import TableEntity, UpdateMode
from azure.data.tables.aio import TableClient

from key_release_service import codes
from key_release_service.codes import Denied
from key_release_service.nonces import MAX_SKEW_S

log = logging.getLogger("edb.keyrelease.nonces")

DEFAULT_TABLE = "edbspentnonces"
PARTITIONS = 256
SWEEP_INTERVAL_S = 2.0
SWEEP_BATCH = 100  # also the most operations one entity-group transaction may hold
TIMEOUT_S = 5.0
#: azure-core settings for every client this module makes: no SDK retries (see the module doc),
#: bounded connect and read times
CLIENT_OPTIONS: dict[str, Any] = {"retry_total": 0, "connection_timeout": 3, "read_timeout": TIMEOUT_S}


def partition_of(nonce_id: bytes, partitions: int = PARTITIONS) -> str:
    return f"{nonce_id[0] % partitions:02x}"


def _when(ts: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(ts, dt.UTC)


def _unavailable(exc: BaseException) -> Denied:
    # the type only: an SDK message may carry the account URL or request details
    log.warning("spent-nonce store failed: %s", type(exc).__name__)
    return Denied(codes.NONCE_STORE_UNAVAILABLE, "the nonce store is unavailable; retry shortly", retry_after=1)


class TableSpentNonceStore:
    """:class:`~key_release_service.nonces.SpentNonceStore` over an async ``TableClient``."""

    def __init__(self, table: TableClient, *, partitions: int = PARTITIONS,
                 sweep_interval_s: float = SWEEP_INTERVAL_S, sweep_batch: int = SWEEP_BATCH,
                 timeout_s: float = TIMEOUT_S, clock: Callable[[], float] = time.time) -> None:
        if not 1 <= partitions <= 256 or not 1 <= sweep_batch <= 100:
            raise ValueError("partitions must be in [1, 256] and sweep_batch in [1, 100]")
        self.table = table
        self.partitions = partitions
        self._sweep_interval = sweep_interval_s
        self._sweep_batch = sweep_batch
        self._timeout = timeout_s
        self._clock = clock
        self._next_partition = secrets.randbelow(partitions)  # instances start their rotation apart
        self._last_sweep = float("-inf")
        self._sweeping: asyncio.Task[int] | None = None

    @classmethod
    def from_connection_string(cls, connection_string: str, table_name: str = DEFAULT_TABLE, *,
                               ca_file: str | None = None, **kwargs: Any) -> TableSpentNonceStore:
        options = dict(CLIENT_OPTIONS, **({"connection_verify": ca_file} if ca_file else {}))
        return cls(TableClient.from_connection_string(connection_string, table_name=table_name, **options), **kwargs)

    @classmethod
    def from_endpoint(cls, endpoint: str, credential: Any, table_name: str = DEFAULT_TABLE, *,
                      ca_file: str | None = None, **kwargs: Any) -> TableSpentNonceStore:
        """``https://<account>.table.core.windows.net`` with a token credential (managed identity)."""
        options = dict(CLIENT_OPTIONS, **({"connection_verify": ca_file} if ca_file else {}))
        return cls(TableClient(endpoint, table_name, credential=credential, **options), **kwargs)

    def __repr__(self) -> str:  # never the connection string
        return f"TableSpentNonceStore(table={self.table.table_name!r}, partitions={self.partitions})"

    # -- spend -------------------------------------------------------------------------------------

    async def spend(self, nonce_id: bytes, expires_at: float) -> bool:
        entity = {"PartitionKey": partition_of(nonce_id, self.partitions), "RowKey": nonce_id.hex(),
                  "ExpiresAt": _when(expires_at)}
        try:
            first = await asyncio.wait_for(self._insert_or_reclaim(entity), self._timeout)
        except Denied:
            raise
        except Exception as exc:  # fail closed: whatever went wrong, this release does not go on
            raise _unavailable(exc) from None
        if first:
            self._maybe_sweep()
        return first

    async def _insert_or_reclaim(self, entity: dict[str, Any]) -> bool:
        try:
            await self.table.create_entity(entity)
            return True
        except ResourceExistsError:
            return await self._reclaim_if_expired(entity)
        except ResourceNotFoundError:
            # first use of a new table (or one deleted under us): create it, then insert once more.
            # A deleted table forgets the nonces spent in the last lifetime, like a restarted process.
            await self._create_table()
            try:
                await self.table.create_entity(entity)
            except ResourceExistsError:
                return await self._reclaim_if_expired(entity)
            return True

    async def _create_table(self) -> None:
        with contextlib.suppress(ResourceExistsError):
            await self.table.create_table()

    async def _reclaim_if_expired(self, entity: dict[str, Any]) -> bool:
        """The row exists: a replay, unless that row's own expiry has passed (then take it over
        under its ETag; another instance taking it first makes this one a replay)."""
        try:
            found = await self.table.get_entity(entity["PartitionKey"], entity["RowKey"])
        except ResourceNotFoundError:  # swept between the two calls: insert once more
            try:
                await self.table.create_entity(entity)
            except ResourceExistsError:
                return False
            return True
        expires = found.get("ExpiresAt")
        if not isinstance(expires, dt.datetime) or expires.timestamp() > self._clock():
            return False
        try:
            await self.table.update_entity(entity, mode=UpdateMode.REPLACE, etag=found.metadata["etag"],
                                           match_condition=MatchConditions.IfNotModified)
        except ResourceModifiedError:  # another instance took it over first
            return False
        except ResourceNotFoundError:  # the sweep deleted the stale row meanwhile: insert once more
            try:
                await self.table.create_entity(entity)
            except ResourceExistsError:
                return False
        return True

    # -- expired rows --------------------------------------------------------------------------------

    def _maybe_sweep(self) -> None:
        now = time.monotonic()
        if (self._sweeping is not None and not self._sweeping.done()) or now - self._last_sweep < self._sweep_interval:
            return
        self._last_sweep = now
        self._sweeping = asyncio.get_running_loop().create_task(self._sweep_quietly())

    async def _sweep_quietly(self) -> int:
        try:
            return await asyncio.wait_for(self.sweep(), self._timeout)
        except Exception as exc:  # opportunistic: the next pass tries again
            log.warning("spent-nonce sweep failed: %s", type(exc).__name__)
            return 0

    async def sweep(self, partition: str | None = None) -> int:
        """Delete up to ``sweep_batch`` rows of one partition (the next in rotation unless given)
        whose nonces expired more than the tolerated clock skew ago. Returns how many."""
        if partition is None:
            partition = f"{self._next_partition:02x}"
            self._next_partition = (self._next_partition + 1) % self.partitions
        cutoff = _when(self._clock() - MAX_SKEW_S)
        pages = self.table.query_entities("PartitionKey eq @pk and ExpiresAt lt @cutoff",
                                          parameters={"pk": partition, "cutoff": cutoff},
                                          select=["PartitionKey", "RowKey"],
                                          results_per_page=self._sweep_batch).by_page()
        rows: list[TableEntity] = []
        async for page in pages:
            rows = [row async for row in page][: self._sweep_batch]
            break
        if not rows:
            return 0
        await self.table.submit_transaction([
            ("delete", row, {"etag": row.metadata["etag"], "match_condition": MatchConditions.IfNotModified})
            for row in rows
        ])
        return len(rows)

    async def idle(self) -> None:
        """Wait for a background sweep in flight (tests, shutdown)."""
        if self._sweeping is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeping

    async def close(self) -> None:
        if self._sweeping is not None and not self._sweeping.done():
            self._sweeping.cancel()
        await self.idle()
        await self.table.close()
