"""HTTP ingress over real loopback sockets: routing, encoding, keep-alive, pipelining, limits, the error table."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

from test_reload import wait_for

from conftest import Client, fixture, http, make_config, running
from micromono.abi import HEAD
from micromono.ingress import MAX_HEADER_FIELDS


def decode_request(data: bytes) -> dict[str, object]:
    """Decode the ABI's HTTP request encoding (the reference reader, independent of the encoder)."""
    method_len, reserved, path_len, query_len, body_len = HEAD.unpack_from(data, 0)
    assert reserved == 0
    pos = HEAD.size
    method = data[pos : pos + method_len]
    pos += method_len
    path = data[pos : pos + path_len]
    pos += path_len
    query = data[pos : pos + query_len]
    pos += query_len
    block = data[pos : len(data) - body_len]
    assert block == b"" or block.endswith(b"\r\n")
    headers = [tuple(line.split(b": ", 1)) for line in block.split(b"\r\n")[:-1]]
    return {"method": method, "path": path, "query": query, "headers": headers, "body": data[len(data) - body_len :]}


def app() -> dict[str, dict[str, object]]:
    return {
        "reflect": {"wasm": fixture("reflect.wat"), "routes": ["/reflect", "/api/*"]},
        "echo": {"wasm": fixture("echo.wat"), "routes": ["/echo"], "mailbox": 4},
        "hostile": {"wasm": fixture("hostile.wat"), "routes": ["/hostile"], "call_timeout": 0.2},
    }


async def test_guest_sees_method_path_query_headers_and_body(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        response = await http(
            daemon.addresses[0],
            "PUT",
            "/api/notes/a%20b?x=1&y=2",
            b"the body",
            {"X-Request-ID": "abc", "Accept": "*/*"},
        )
        assert response.status == 200
        seen = decode_request(response.body)
        assert seen["method"] == b"PUT"
        assert seen["path"] == b"/api/notes/a%20b"
        assert seen["query"] == b"x=1&y=2"
        assert seen["body"] == b"the body"
        # The header lines as sent: names keep the client's case.
        assert seen["headers"] == [
            (b"Host", b"test"),
            (b"X-Request-ID", b"abc"),
            (b"Accept", b"*/*"),
            (b"Content-Length", b"8"),
        ]
        assert response.headers["server"] == "micromono"
        assert response.headers["content-length"] == str(len(response.body))


async def test_keep_alive_and_pipelining_keep_order(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        client = await Client.connect(daemon.addresses[0])
        for i in range(50):
            response = await client.request("POST", "/echo", f"request {i}".encode())
            assert (response.status, response.body) == (200, f"request {i}".encode())
        # Three requests in one write, one of them unroutable: three responses, in order.
        client.send_raw(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\none"
            b"GET /nowhere HTTP/1.1\r\nHost: t\r\n\r\n"
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nthree"
        )
        first, second, third = [await client.read() for _ in range(3)]
        assert (first.status, first.body) == (200, b"one")
        assert second.status == 404
        assert second.json() == {
            "error": "not_found",
            "message": "no service serves '/nowhere'; check the routes in services.toml",
        }
        assert (third.status, third.body) == (200, b"three")
        await client.close()


async def test_connection_close_is_honoured(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        client = await Client.connect(daemon.addresses[0])
        response = await client.request("POST", "/echo", b"bye", {"Connection": "close"})
        assert response.status == 200 and response.headers["connection"] == "close"
        assert await client.closed_by_peer()


async def test_guest_failures_map_to_statuses_with_json_bodies(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        addr = daemon.addresses[0]
        trap = await http(addr, "POST", "/hostile", b"u")
        assert trap.status == 500 and trap.headers["content-type"] == "application/json"
        body = trap.json()
        assert body["error"] == "trap" and body["service"] == "hostile"
        assert body["message"] == "service 'hostile' trapped: wasm trap: wasm `unreachable` instruction executed"
        assert "wasm backtrace" in body["trap"]
        timeout = await http(addr, "POST", "/hostile", b"l")
        assert timeout.status == 504
        assert timeout.json()["message"] == "service 'hostile' ran past its deadline and was interrupted"
        app_error = await http(addr, "POST", "/hostile", b"e")
        assert (app_error.status, app_error.json()["error"]) == (500, "app_error")
        bad_reply = await http(addr, "POST", "/hostile", b"h")
        assert (bad_reply.status, bad_reply.json()["error"]) == (500, "abi_violation")
        assert bad_reply.json()["message"] == (
            "service 'hostile' returned a malformed HTTP reply: HTTP reply declares 3 headers but ends inside them"
        )
        outside = await http(addr, "POST", "/hostile", b"r")
        assert outside.status == 500 and outside.json()["error"] == "abi_violation"
        big = await http(addr, "POST", "/hostile", b"b")
        assert big.status == 200 and big.body == b"B" * 100_000
        headers = await http(addr, "POST", "/hostile", b"H")
        assert (headers.status, headers.body) == (201, b"hi")
        assert headers.headers["x-guest"] == "yes" and headers.headers["content-length"] == "2"
        assert [n for n, _ in headers.raw_headers].count(b"content-length") == 1
        # ...and the service still serves after all that.
        fine = await http(addr, "POST", "/hostile", b"fine")
        assert (fine.status, fine.body) == (200, b"fine")
        assert daemon.ingress is not None
        assert daemon.ingress.statuses() == {500: 4, 504: 1, 200: 2, 201: 1}


async def test_body_over_the_limit_is_413_and_closes(tmp_path: Path) -> None:
    config = make_config(tmp_path, app(), daemon={"max_request_bytes": 1000})
    async with running(config) as daemon:
        client = await Client.connect(daemon.addresses[0])
        response = await client.request("POST", "/echo", b"x" * 1001)
        assert response.status == 413
        assert response.json()["message"] == "request body is larger than max_request_bytes=1000"
        assert await client.closed_by_peer()
        # Chunked bodies are counted as they arrive.
        client = await Client.connect(daemon.addresses[0])
        client.send_raw(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            client.send_raw(b"190\r\n" + b"y" * 400 + b"\r\n")
        assert (await client.read()).status == 413
        await client.close()
        ok = await http(daemon.addresses[0], "POST", "/echo", b"x" * 1000)
        assert ok.status == 200


async def test_malformed_http_is_400_and_the_daemon_keeps_serving(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        addr = daemon.addresses[0]
        for garbage in (
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"GET / HTTP/9.9\r\n\r\n",
            b"NOT HTTP AT ALL\r\n\r\n",
        ):
            client = await Client.connect(addr)
            client.send_raw(garbage)
            response = await client.read()
            assert response.status == 400 and response.json()["error"] == "bad_request"
            assert await client.closed_by_peer()
        client = await Client.connect(addr)
        # An Upgrade is ignored (answered as plain HTTP), then the connection ends: we speak no other protocol.
        client.send_raw(b"GET /echo HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        assert (await client.read()).status == 200
        assert await client.closed_by_peer()
        client = await Client.connect(addr)
        client.send_raw(b"GET /echo HTTP/1.1\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 500) for i in range(150)))
        response = await client.read()
        assert response.status == 431 and response.json()["message"] == "request head larger than 65536 bytes"
        # A client that connects and vanishes, or sends half a request and closes, harms nothing.
        client = await Client.connect(addr)
        client.send_raw(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nhalf")
        await client.close()
        assert (await http(addr, "POST", "/echo", b"alive")).body == b"alive"


async def test_queued_requests_wait_in_the_mailbox_and_overflow_is_503(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        addr = daemon.addresses[0]
        echo = daemon.router.slots["echo"].current
        assert echo is not None
        # Queue three messages without waking the worker: requests now queue behind them (mailbox holds 4).
        for payload in (b"a", b"b", b"c"):
            echo.mailbox.put_nowait((3, payload, None, None))
        client = await Client.connect(addr)
        client.send_raw(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nqueued"
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\n\r\noverflow"
        )
        # The first request took the last mailbox slot and woke the worker; the second found the mailbox full.
        first, second = await client.read(), await client.read()
        assert (first.status, first.body) == (200, b"queued")
        assert second.status == 503
        assert second.json()["message"] == (
            "service 'echo' is overloaded: its mailbox is full (4 queued); "
            "retry later or raise its `mailbox` in services.toml"
        )
        assert len(echo.mailbox) == 0
        await client.close()


async def test_graceful_shutdown_finishes_queued_requests(tmp_path: Path) -> None:
    daemon_cm = running(make_config(tmp_path, app()))
    daemon = await daemon_cm.__aenter__()
    echo = daemon.router.slots["echo"].current
    assert echo is not None
    echo.mailbox.put_nowait((3, b"a", None, None))
    client = await Client.connect(daemon.addresses[0])
    client.send("POST", "/echo", b"in flight")
    await wait_for(lambda: echo.mailbox.statistics().accepted == 2)  # queued behind the message
    shutdown = asyncio.create_task(daemon_cm.__aexit__(None, None, None))
    response = await client.read()
    assert (response.status, response.body) == (200, b"in flight")
    await shutdown
    assert await client.closed_by_peer()
    try:
        await asyncio.open_connection(*daemon.addresses[0])
    except OSError:
        pass
    else:
        raise AssertionError("the daemon still accepts connections after shutdown")


async def test_paths_match_routes_exactly_or_by_prefix(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        addr = daemon.addresses[0]
        assert (await http(addr, "GET", "/api")).status == 200
        assert (await http(addr, "GET", "/api/x/y")).status == 200
        assert (await http(addr, "GET", "/apix")).status == 404
        assert (await http(addr, "GET", "/echo/more")).status == 404
        absolute = await http(addr, "GET", "http://example.test/reflect?q=1")
        assert absolute.status == 200 and decode_request(absolute.body)["query"] == b"q=1"


def test_abi_encoder_and_decoder_match_the_reference_reader() -> None:
    from micromono.abi import decode_http_request, encode_http_request

    data = encode_http_request(b"GET", b"/p", b"q", b"a: 1\r\nBb: 22\r\n", b"body")
    assert decode_request(data) == {
        "method": b"GET",
        "path": b"/p",
        "query": b"q",
        "headers": [(b"a", b"1"), (b"Bb", b"22")],
        "body": b"body",
    }
    assert struct.unpack_from("<H", data, 2)[0] == 0
    assert decode_http_request(data) == (b"GET", b"/p", b"q", [(b"a", b"1"), (b"Bb", b"22")], b"body")
    assert decode_http_request(encode_http_request(b"GET", b"/", b"", b"", b"")) == (b"GET", b"/", b"", [], b"")


async def test_requests_are_found_in_the_byte_stream_however_it_is_cut(tmp_path: Path) -> None:
    """Pipelined requests, split at every byte, with empty lines between them: each guest sees its own head."""
    one = b"POST /reflect?n=1 HTTP/1.1\r\nHost: a\r\nX-N: 1\r\nContent-Length: 5\r\n\r\nfirst"
    two = b"\r\nGET /reflect?n=2 HTTP/1.1\r\nHost: b\r\nX-N: 2\r\n\r\n"
    three = b"PUT /reflect?n=3 HTTP/1.1\r\nX-N: 3\r\nContent-Length: 0\r\n\r\n"
    stream = one + two + three
    expected = [
        (b"POST", b"n=1", [(b"Host", b"a"), (b"X-N", b"1"), (b"Content-Length", b"5")], b"first"),
        (b"GET", b"n=2", [(b"Host", b"b"), (b"X-N", b"2")], b""),
        (b"PUT", b"n=3", [(b"X-N", b"3"), (b"Content-Length", b"0")], b""),
    ]
    async with running(make_config(tmp_path, app())) as daemon:
        for step in (len(stream), 1, 7, 40):
            client = await Client.connect(daemon.addresses[0])
            for i in range(0, len(stream), step):
                client.send_raw(stream[i : i + step])
                await client.writer.drain()
                if step < len(stream):
                    await asyncio.sleep(0)
            for method, query, headers, body in expected:
                seen = decode_request((await client.read()).body)
                assert (seen["method"], seen["query"], seen["headers"], seen["body"]) == (method, query, headers, body)
            await client.close()


async def test_a_chunked_request_is_answered_then_the_connection_closes(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        client = await Client.connect(daemon.addresses[0])
        client.send_raw(
            b"POST /reflect HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
            b"GET /echo HTTP/1.1\r\nHost: t\r\n\r\n"  # pipelined behind it: not answered
        )
        response = await client.read()
        seen = decode_request(response.body)
        assert (response.status, response.keep_alive) == (200, False)
        assert seen["body"] == b"hello world"
        assert seen["headers"] == [(b"Host", b"t"), (b"Transfer-Encoding", b"chunked")]
        assert await client.closed_by_peer()
        # The next connection works as usual.
        assert (await http(daemon.addresses[0], "POST", "/echo", b"next")).body == b"next"


async def test_large_upload_gets_its_413_before_the_connection_closes(tmp_path: Path) -> None:
    config = make_config(tmp_path, app(), daemon={"max_request_bytes": 1000})
    async with running(config) as daemon:
        reader, writer = await asyncio.open_connection(*daemon.addresses[0])
        writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3000000\r\n\r\n")
        for _ in range(30):  # keep sending after the server has refused
            writer.write(b"z" * 100_000)
            await asyncio.sleep(0)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 413 ")
        writer.close()


async def test_endless_header_line_is_431(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        client = await Client.connect(daemon.addresses[0])
        client.send_raw(b"GET /echo HTTP/1.1\r\nX-Long: ")
        for _ in range(20):
            client.send_raw(b"v" * 8192)
        response = await client.read()
        assert response.status == 431
        assert response.json()["message"] == "request head larger than 65536 bytes"


async def test_a_head_over_the_limit_that_arrives_whole_in_one_read_is_431(tmp_path: Path) -> None:
    """The 64 KiB limit holds however the head arrives: here complete, with its body, in one write."""
    async with running(make_config(tmp_path, app())) as daemon:
        client = await Client.connect(daemon.addresses[0])
        lines = b"".join(b"X-Header-%04d: %s\r\n" % (i, b"v" * 100) for i in range(700))  # 81,200 bytes
        client.send_raw(b"POST /echo HTTP/1.1\r\n" + lines + b"Content-Length: 2\r\n\r\nok")
        response = await client.read()
        assert response.status == 431
        assert response.json()["message"] == "request head larger than 65536 bytes"
        assert (await http(daemon.addresses[0], "POST", "/echo", b"alive")).body == b"alive"


async def test_more_header_fields_than_the_bound_is_431(tmp_path: Path) -> None:
    async with running(make_config(tmp_path, app())) as daemon:
        addr = daemon.addresses[0]
        for fields, status in ((MAX_HEADER_FIELDS + 1, 431), (MAX_HEADER_FIELDS, 200)):
            client = await Client.connect(addr)
            lines = b"".join(b"x%d: 1\r\n" % i for i in range(fields - 1))  # and Content-Length
            client.send_raw(b"POST /echo HTTP/1.1\r\n" + lines + b"Content-Length: 2\r\n\r\nok")
            response = await client.read()
            assert response.status == status, fields
            if status == 431:
                assert response.json()["message"] == "request head has more than 1000 header fields"
            else:
                assert response.body == b"ok"
            await client.close()


async def test_a_head_of_many_short_lines_over_the_limit_is_431(tmp_path: Path) -> None:
    """The limit is on the unfinished head as a whole, whatever its lines and however the reads cut it."""
    async with running(make_config(tmp_path, app())) as daemon:
        client = await Client.connect(daemon.addresses[0])
        head = b"GET /echo HTTP/1.1\r\n" + b"".join(b"X-Header-%05d: abcdefg\r\n" % i for i in range(3000))
        for i in range(0, len(head), 997):  # 3,000 lines, 72,020 bytes, in pieces that cut the lines
            client.send_raw(head[i : i + 997])
            await client.writer.drain()
            await asyncio.sleep(0)
        response = await client.read()
        assert response.status == 431
        assert response.json()["message"] == "request head larger than 65536 bytes"
        # Just under the limit is served.
        client = await Client.connect(daemon.addresses[0])
        lines = b"".join(b"X-Header-%05d: %s\r\n" % (i, b"v" * 80) for i in range(600))  # 58,800 bytes
        client.send_raw(b"POST /reflect HTTP/1.1\r\n" + lines + b"Content-Length: 2\r\n\r\nok")
        response = await client.read()
        assert response.status == 200
        seen = decode_request(response.body)
        assert len(seen["headers"]) == 601 and seen["body"] == b"ok"
        await client.close()


async def test_request_lines_in_other_forms_reach_the_guest(tmp_path: Path) -> None:
    """The target is read from the request line: origin form, absolute form, HTTP/1.0, and the extra spaces
    httptools accepts all give the guest the same path and query; a target that is not a URL is a 400."""
    async with running(make_config(tmp_path, app())) as daemon:
        for line in (
            b"GET /reflect?a=1 HTTP/1.1",
            b"GET http://example.test/reflect?a=1 HTTP/1.1",
            b"GET /reflect?a=1 HTTP/1.0",
            b"GET  /reflect?a=1 HTTP/1.1",
        ):
            client = await Client.connect(daemon.addresses[0])
            client.send_raw(line + b"\r\nHost: t\r\nConnection: close\r\n\r\n")
            response = await client.read()
            assert response.status == 200, line
            seen = decode_request(response.body)
            assert (seen["method"], seen["path"], seen["query"]) == (b"GET", b"/reflect", b"a=1"), line
            await client.close()
        client = await Client.connect(daemon.addresses[0])
        client.send_raw(b"GET /api/x HTTP/1.1\r\nHost: t\r\n\r\nGET /reflect HTTP/1.1\r\nHost: t\r\n\r\n")
        first, second = await client.read(), await client.read()
        assert decode_request(first.body)["path"] == b"/api/x" and decode_request(second.body)["path"] == b"/reflect"
        await client.close()


async def test_a_request_line_sent_again_is_routed_from_the_cache_and_the_cache_is_bounded(tmp_path: Path) -> None:
    """Ingress remembers each request line it has parsed and routed (`Routes.lines`): a line sent again reaches
    the same service, with its own headers and body, however many distinct lines came before."""
    from micromono.ingress import MAX_CACHED_LINES

    async with running(make_config(tmp_path, app())) as daemon:
        assert daemon.ingress is not None
        lines = daemon.ingress.routes.lines
        client = await Client.connect(daemon.addresses[0])
        for i in range(3):
            response = await client.request("PUT", "/api/x?q=1", f"body {i}".encode(), {"X-I": str(i)})
            seen = decode_request(response.body)
            assert (seen["method"], seen["path"], seen["query"], seen["body"]) == (
                b"PUT",
                b"/api/x",
                b"q=1",
                f"body {i}".encode(),
            )
            assert (b"X-I", str(i).encode()) in seen["headers"]
        assert b"PUT /api/x?q=1 HTTP/1.1" in lines
        # The same target with another method is another line.
        seen = decode_request((await client.request("GET", "/api/x?q=1")).body)
        assert (seen["method"], seen["body"]) == (b"GET", b"")
        # An unroutable line is remembered as such, and answered 404 each time.
        for _ in range(2):
            assert (await client.request("GET", "/nowhere")).status == 404
        # Ever new lines: every one is answered, and the cache never holds more than its bound.
        for i in range(MAX_CACHED_LINES + 10):
            response = await client.request("GET", f"/api/n?i={i}")
            assert decode_request(response.body)["query"] == f"i={i}".encode()
            assert len(lines) <= MAX_CACHED_LINES
        await client.close()


async def test_a_head_sent_again_on_a_connection_reuses_its_routing_and_only_the_body_is_new(tmp_path: Path) -> None:
    """Each connection remembers its last request head, routed and encoded (`HttpProtocol.known`): the same head
    again, alone, pipelined or after a head split across reads, reaches the guest with its own body; a head that
    differs anywhere, even only in `Connection: close`, is parsed afresh."""
    head = b"PUT /api/x?q=1 HTTP/1.1\r\nHost: t\r\nX-A: 1\r\nContent-Length: 3\r\n\r\n"
    async with running(make_config(tmp_path, app())) as daemon:
        client = await Client.connect(daemon.addresses[0])

        async def expect(body: bytes, headers: tuple[tuple[bytes, bytes], ...] = ((b"X-A", b"1"),)) -> None:
            seen = decode_request((await client.read()).body)
            assert (seen["method"], seen["path"], seen["query"], seen["body"]) == (b"PUT", b"/api/x", b"q=1", body)
            assert seen["headers"] == [(b"Host", b"t"), *headers, (b"Content-Length", b"3")]

        for body in (b"one", b"two"):
            client.send_raw(head + body)
            await expect(body)
        assert daemon.ingress is not None
        [conn] = daemon.ingress.connections
        assert conn.known is not None and conn.known.head == head  # the second was served from it
        client.send_raw(head + b"aaa" + head + b"bbb" + b"\r\n" + head + b"ccc")  # pipelined, and an empty line
        for body in (b"aaa", b"bbb", b"ccc"):
            await expect(body)
        client.send_raw(head[:20])
        await wait_for(lambda: conn.partial is not None)  # read: the rest comes in another
        client.send_raw(head[20:] + b"spl" + head + b"end")
        await expect(b"spl")
        await expect(b"end")
        client.send_raw(head + b"bo")  # the known head, its body split across reads
        await wait_for(lambda: conn.body is not None)
        client.send_raw(b"d" + head + b"nxt")
        await expect(b"bod")
        await expect(b"nxt")
        other = head.replace(b"X-A: 1", b"X-A: 2")
        client.send_raw(other + b"xyz" + head + b"abc")
        await expect(b"xyz", ((b"X-A", b"2"),))
        await expect(b"abc")
        # A head or line too long to remember is served all the same, and not remembered.
        from micromono.ingress import MAX_CACHED_LINE_BYTES, MAX_KNOWN_HEAD_BYTES

        long_query = b"q=" + b"x" * MAX_CACHED_LINE_BYTES
        long_head = head.replace(b"?q=1", b"?" + long_query).replace(b"X-A: 1", b"X-A: " + b"y" * MAX_KNOWN_HEAD_BYTES)
        for _ in range(2):
            client.send_raw(long_head + b"lng")
            seen = decode_request((await client.read()).body)
            assert (seen["query"], seen["body"], seen["headers"][1][1][:3]) == (long_query, b"lng", b"yyy")
        assert conn.known.head == head
        assert daemon.ingress is not None and not any(
            len(line) > MAX_CACHED_LINE_BYTES for line in daemon.ingress.routes.lines
        )
        client.send_raw(head.replace(b"X-A: 1", b"Connection: close") + b"end")
        await expect(b"end", ((b"Connection", b"close"),))
        assert await client.closed_by_peer()
        await client.close()


class _CountingParser:
    """Stands in for a connection's httptools parser and counts the reads fed to it."""

    def __init__(self, parser: Any) -> None:
        self.parser = parser
        self.fed = 0

    def feed_data(self, data: bytes) -> None:
        self.fed += 1
        self.parser.feed_data(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parser, name)


async def test_a_read_that_is_the_last_request_again_skips_the_parser_unless_inside_a_request(tmp_path: Path) -> None:
    """A read that is exactly the connection's last head and a body of its length is served without httptools; the
    same bytes arriving as the rest of an unfinished request's body are that body, and two such requests in one
    read, or one split across reads, go through the parser."""
    head = b"PUT /api/x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n"
    async with running(make_config(tmp_path, app())) as daemon:
        client = await Client.connect(daemon.addresses[0])

        async def expect(body: bytes, length: int = 3) -> None:
            seen = decode_request((await client.read()).body)
            assert (seen["method"], seen["path"], seen["body"]) == (b"PUT", b"/api/x", body)
            assert seen["headers"] == [(b"Host", b"t"), (b"Content-Length", str(length).encode())]

        client.send_raw(head + b"one")
        await expect(b"one")
        assert daemon.ingress is not None
        [conn] = daemon.ingress.connections
        parser = conn.parser = _CountingParser(conn.parser)
        for body in (b"two", b"333"):
            client.send_raw(head + body)
            await expect(body)
        assert parser.fed == 0
        # An unfinished request whose body goes on with bytes that look like the known request, whole.
        length = 2 + len(head) + 3
        client.send_raw(head.replace(b"Content-Length: 3", b"Content-Length: %d" % length) + b"xx")
        await wait_for(lambda: parser.fed == 1)  # read: the rest comes in another
        client.send_raw(head + b"abc")
        await expect(b"xx" + head + b"abc", length)
        assert parser.fed == 2
        client.send_raw(head + b"one")  # the connection's known head is the longer one's now, but the listener
        await expect(b"one")  # remembers this one too (Ingress.heads)
        client.send_raw(head + b"two")
        await expect(b"two")
        assert parser.fed == 2
        client.send_raw(head + b"p-1" + head + b"p-2")
        await expect(b"p-1")
        await expect(b"p-2")
        client.send_raw(head + b"s")
        await wait_for(lambda: parser.fed == 4)
        client.send_raw(b"-1")
        await expect(b"s-1")
        assert parser.fed == 5
        client.send_raw(head + b"end")
        await expect(b"end")
        assert parser.fed == 5
        await client.close()


async def test_random_garbage_never_stops_the_daemon(tmp_path: Path) -> None:
    import random

    rng = random.Random(1234)
    prefixes = [
        b"",
        b"GET / HTTP/1.1\r\n",
        b"POST /echo HTTP/1.1\r\nContent-Length: 5\r\n",
        b"GET /echo HTTP/1.1\r\nHost",
    ]
    async with running(make_config(tmp_path, app())) as daemon:
        addr = daemon.addresses[0]
        for _ in range(150):
            client = await Client.connect(addr)
            client.send_raw(rng.choice(prefixes) + rng.randbytes(rng.randrange(1, 2048)))
            await client.close()
        # Half-open and slow clients too: they hold a connection but cost nothing else.
        idle = [await Client.connect(addr) for _ in range(20)]
        response = await http(addr, "POST", "/echo", b"still serving")
        assert (response.status, response.body) == (200, b"still serving")
        for client in idle:
            await client.close()


async def test_reply_headers_change_from_one_reply_to_the_next(tmp_path: Path) -> None:
    """Ingress caches a service's last reply headers: a different set, a longer set with the same start, a bad
    set, and no headers all come out right, on one connection."""
    services = {"headers": {"wasm": fixture("headers.wat"), "routes": ["/h"]}}
    async with running(make_config(tmp_path, services)) as daemon:
        client = await Client.connect(daemon.addresses[0])
        for body in (b"a1", b"a2", b"b3", b"a4", b"c5", b"a6", b"z7", b"b8"):
            response = await client.request("POST", "/h", body)
            guest = {k: v for k, v in response.headers.items() if k.startswith("x-")}
            if body[:1] == b"c":
                assert response.status == 500 and "CR, LF or NUL" in response.json()["message"]
                continue
            expected = {"a": {"x-a": "1"}, "b": {"x-a": "1", "x-b": "22"}}.get(body[:1].decode(), {})
            assert (response.status, guest, response.body) == (200, expected, body)
        await client.close()


async def test_a_head_seen_on_another_connection_is_served_without_the_parser(tmp_path: Path) -> None:
    """The listener remembers heads across connections (`Ingress.heads`): a read that is exactly one of them and its
    body is served from it, with its own body; one whose body is longer than the head says goes through the parser
    (and its extra bytes start the next request); a new route table forgets them all."""
    one = b"PUT /api/one HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n"
    two = b"PUT /api/two HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\n"
    async with running(make_config(tmp_path, app())) as daemon:
        ingress = daemon.ingress
        assert ingress is not None
        first = await Client.connect(daemon.addresses[0])
        for head, body in ((one, b"aaa"), (two, b"bbb")):
            first.send_raw(head + body)
            seen = decode_request((await first.read()).body)
            assert (seen["path"], seen["body"]) == (head.split(b" ")[1], body)
        assert set(ingress.heads) == {one, two}
        second = await Client.connect(daemon.addresses[0])
        second.send_raw(two + b"ccc")  # not its own last head (it has none): the listener's
        seen = decode_request((await second.read()).body)
        assert (seen["path"], seen["body"]) == (b"/api/two", b"ccc")
        second.send_raw(one + b"dddGET /api/x HTTP/1.1\r\nHost: t\r\n\r\n")  # a known head, then more: parsed
        assert decode_request((await second.read()).body)["body"] == b"ddd"
        assert decode_request((await second.read()).body)["path"] == b"/api/x"
        ingress.set_routes(ingress.routes, max_request_bytes=ingress.max_request_bytes)
        assert ingress.heads == {}
        await first.close()
        await second.close()
