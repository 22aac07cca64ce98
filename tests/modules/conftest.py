"""A small HTTPS file server (aiohttp, stack CA certificate) with hostile behaviours on demand."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from installer_fixtures import PackageServer

from edb_local.net import free_port
from edb_local.stack_ca import StackCA


@pytest.fixture
async def package_server(stack_ca: StackCA, loopback_address: str, tmp_path: Path) -> AsyncIterator[PackageServer]:
    port = free_port(loopback_address)
    server = PackageServer(f"https://{loopback_address}:{port}", stack_ca.ca_path)

    async def handle(request: web.Request) -> web.StreamResponse:
        path = request.match_info["path"]
        server.ranges.append(request.headers.get("Range"))
        behaviour = server.behaviours.get(path, "")
        if behaviour.startswith("redirect:"):
            raise web.HTTPFound(behaviour.split(":", 1)[1])
        if behaviour.startswith("status:"):
            return web.Response(status=int(behaviour.split(":", 1)[1]))
        data = server.files.get(path)
        if data is None:
            return web.Response(status=404)
        if behaviour.startswith("extra:"):
            data = data + b"\0" * int(behaviour.split(":", 1)[1])
        start = 0
        range_header = request.headers.get("Range")
        if range_header and behaviour != "norange":
            start = int(range_header.removeprefix("bytes=").rstrip("-"))
        response = web.StreamResponse(status=206 if start else 200)
        response.content_length = len(data) - start
        await response.prepare(request)
        if behaviour.startswith("cut:"):
            cut = int(behaviour.split(":", 1)[1])
            server.behaviours.pop(path)  # only once
            await response.write(data[start:cut])
            request.transport.close()  # type: ignore[union-attr]
            return response
        if behaviour.startswith("trickle:"):  # "trickle:<seconds>:<bytes>": that many bytes, then a pause
            pause, step = behaviour.split(":")[1:]
            position = start
            try:
                while position < len(data):
                    await response.write(data[position:position + int(step)])
                    position += int(step)
                    await asyncio.sleep(float(pause))
            except ConnectionError:
                return response  # the client gave up on us
            await response.write_eof()
            return response
        await response.write(data[start:])
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/{path:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    creds = stack_ca.issue_server("pkgsrv", ips=[loopback_address], out_dir=tmp_path / "pkgsrv-certs")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(creds.cert_path, creds.key_path)
    site = web.TCPSite(runner, loopback_address, port, ssl_context=context)
    await site.start()
    try:
        yield server
    finally:
        await runner.cleanup()
