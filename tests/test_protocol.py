from __future__ import annotations

import ast
import asyncio
import inspect
import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import (
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from metrics_service import protocol
from metrics_service.protocol import OneWriteCycle, OneWriteProtocol, http_option
from metrics_service.testing import MetricsServer


def _tree(function: Any, *replacements: tuple[str, str]) -> str:
    source = inspect.getsource(function)
    for old, new in replacements:
        assert source.count(old) == 1, old
        source = source.replace(old, new)
    return ast.dump(ast.parse(textwrap.dedent(source)))


def test_the_installed_uvicorn_is_the_one_copied() -> None:
    # When this fails after a uvicorn upgrade, copy its new send() and
    # on_headers_complete() into protocol.py again and record their digests.
    for name, digest in protocol.UPSTREAM.items():
        assert protocol.upstream_digest(name) == digest, name


def test_send_is_uvicorns_with_the_head_held_for_its_body() -> None:
    held = """
            content.append(b"\\r\\n")
            if (
                self.chunked_encoding is False
                and self.expected_content_length
                and self.scope["method"] != "HEAD"
            ):
                self.head = b"".join(content)
            else:
                self.transport.write(b"".join(content))
"""
    joined = """
                    self.expected_content_length -= num_bytes
                head = self.head
                if head is not None:
                    self.head = None
                    body = head + body
                self.transport.write(body)
"""
    upstream = _tree(
        RequestResponseCycle.send,
        (
            '\n            content.append(b"\\r\\n")\n'
            '            self.transport.write(b"".join(content))\n',
            held,
        ),
        (
            "\n                    self.expected_content_length -= num_bytes\n"
            "                self.transport.write(body)\n",
            joined,
        ),
    )
    assert _tree(OneWriteCycle.send) == upstream


def test_on_headers_complete_is_uvicorns_with_the_cycle_class() -> None:
    upstream = _tree(
        HttpToolsProtocol.on_headers_complete,
        ("RequestResponseCycle(", "OneWriteCycle("),
    )
    assert _tree(OneWriteProtocol.on_headers_complete) == upstream


def test_http_option_names_the_protocol_while_uvicorn_matches() -> None:
    assert http_option() == "metrics_service.protocol:OneWriteProtocol"
    config = uvicorn.Config(app=_json, http=http_option())
    config.load()
    assert config.http_protocol_class is OneWriteProtocol


def test_http_option_falls_back_when_uvicorn_changed(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(protocol.UPSTREAM, "send", "0" * 64)
    with caplog.at_level(logging.WARNING, logger="metrics_service"):
        assert http_option() == "auto"
    assert "two writes per answer" in caplog.text


class Recorder:
    """A transport that keeps what the protocol writes."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 5000)}.get(
            name, default
        )

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _exchange(kind: type[HttpToolsProtocol], app: Any, *parts: bytes) -> Recorder:
    config = uvicorn.Config(app=app, lifespan="off", log_level="critical")
    state = ServerState()
    loop = asyncio.get_running_loop()
    http = kind(config=config, server_state=state, app_state={}, _loop=loop)
    transport = Recorder()
    http.connection_made(transport)  # type: ignore[arg-type]
    for part in parts:
        http.data_received(part)
        for _ in range(20):  # let the app's task run to its end
            await asyncio.sleep(0)
    closed_by_server = transport.closed
    http.connection_lost(None)  # cancels the keep-alive timer (and closes)
    transport.closed = closed_by_server
    return transport


def _both(app: Any, *parts: bytes) -> tuple[Recorder, Recorder]:
    async def run() -> tuple[Recorder, Recorder]:
        stock = await _exchange(HttpToolsProtocol, app, *parts)
        ours = await _exchange(OneWriteProtocol, app, *parts)
        return stock, ours

    return asyncio.run(run())


def _sent(recorder: Recorder) -> list[bytes]:
    return [data for data in recorder.writes if data]  # uvloop skips empty writes


_json = JSONResponse({"ok": True, "seq": 1}, status_code=202)
POST = b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}"


def test_a_json_answer_is_one_write_of_the_same_bytes() -> None:
    stock, ours = _both(_json, POST)
    assert len(_sent(stock)) == 2
    assert _sent(ours) == [b"".join(stock.writes)]
    assert ours.writes[0].startswith(b"HTTP/1.1 202 Accepted\r\n")
    assert ours.writes[0].endswith(b'\r\n\r\n{"ok":true,"seq":1}')
    assert not ours.closed


def test_pipelined_requests_get_one_write_each() -> None:
    stock, ours = _both(_json, POST * 3)
    assert len(_sent(stock)) == 6
    assert len(_sent(ours)) == 3
    assert b"".join(ours.writes) == b"".join(stock.writes)


@pytest.mark.parametrize(
    ("app", "request_head"),
    [
        pytest.param(_json, b"HEAD /e HTTP/1.1\r\nHost: x\r\n\r\n", id="HEAD"),
        pytest.param(Response(status_code=204), POST, id="204"),
        pytest.param(Response(status_code=202), POST, id="empty body"),
        pytest.param(_json, POST.replace(b"Host: x", b"Connection: close"), id="close"),
        pytest.param(_json, POST.replace(b"1.1", b"1.0"), id="HTTP/1.0"),
    ],
)
def test_other_answers_are_the_same_bytes(app: Any, request_head: bytes) -> None:
    stock, ours = _both(app, request_head)
    assert b"".join(ours.writes) == b"".join(stock.writes)
    assert len(_sent(ours)) == 1
    assert ours.closed == stock.closed


async def _stream(scope: Scope, receive: Receive, send: Send) -> None:
    async def parts() -> Any:
        yield b"one"
        yield b"two"

    await StreamingResponse(parts())(scope, receive, send)


async def _two_parts(scope: Scope, receive: Receive, send: Send) -> None:
    start = {"type": "http.response.start", "status": 200}
    await send({**start, "headers": [(b"content-length", b"6")]})
    await send({"type": "http.response.body", "body": b"one", "more_body": True})
    await send({"type": "http.response.body", "body": b"two"})


def test_a_chunked_stream_is_written_as_uvicorn_writes_it() -> None:
    stock, ours = _both(_stream, POST)
    assert ours.writes == stock.writes
    assert b"transfer-encoding: chunked" in ours.writes[0]


def test_a_body_in_parts_sends_the_head_with_the_first() -> None:
    stock, ours = _both(_two_parts, POST)
    assert _sent(ours) == [stock.writes[0] + b"one", b"two"]


async def _fails_after_start(scope: Scope, receive: Receive, send: Send) -> None:
    start = {"type": "http.response.start", "status": 200}
    await send({**start, "headers": [(b"content-length", b"6")]})
    raise RuntimeError("the app broke")


def test_an_app_failing_after_start_closes_the_connection_unanswered() -> None:
    stock, ours = _both(_fails_after_start, POST)
    assert stock.closed and ours.closed
    # uvicorn had sent the head of an answer that never came; here nothing is sent.
    assert len(_sent(stock)) == 1
    assert _sent(ours) == []


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    message = await receive()
    await Response(message["body"], status_code=200)(scope, receive, send)


def test_100_continue_is_written_before_the_body_arrives() -> None:
    head = (
        b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
        b"Content-Length: 2\r\n\r\n"
    )
    stock, ours = _both(_echo, head, b"hi")
    assert ours.writes[0] == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert b"".join(ours.writes) == b"".join(stock.writes)
    assert _sent(ours)[-1].endswith(b"\r\n\r\nhi")


def _write_calls(pid: int) -> int:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("syscw:"):
            return int(line.split()[1])
    raise AssertionError("no syscw")


def test_the_server_answers_an_event_with_one_write(tmp_path: Path) -> None:
    """One write() for the answer and one for the stored line, per lone request."""
    with MetricsServer(tmp_path / "m.jsonl") as server:
        assert server.process is not None
        server.client.post({"event": "page_view", "visitor_id": "visitor-0"})
        before = _write_calls(server.process.pid)
        for number in range(20):
            server.client.post(
                {"event": "page_view", "visitor_id": f"visitor-{number}"}
            )
        writes = _write_calls(server.process.pid) - before
    # uvicorn's own protocol would make it 60: head, body and line.
    assert 40 <= writes < 45
