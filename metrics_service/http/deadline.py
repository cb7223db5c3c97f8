"""The body deadline: the whole request body must arrive within METRICS_BODY_TIMEOUT."""

from __future__ import annotations

import asyncio
import time
import types
from collections.abc import Awaitable, Generator
from typing import Any

from starlette.types import Message, Receive

from metrics_service.http.errors import BodyTimeout


class Deadline:
    """`receive`, raising BodyTimeout once the body is `timeout` s late."""

    # One object rather than a closure with four cells: it lives as long as the
    # request, through the group commit's wait, and the collector traverses it.
    __slots__ = ("body_done", "receive", "started", "timeout")

    def __init__(self, receive: Receive, timeout: float) -> None:
        self.receive = receive
        self.timeout = timeout
        # time.monotonic() rather than loop.time(): get_running_loop() costs a
        # getpid() system call on Python 3.11, and most bodies never need the clock.
        self.started = time.monotonic()
        self.body_done = False

    async def __call__(self) -> Message:
        if self.body_done:
            return await self.receive()
        pending: Awaitable[Message] = self.receive()
        message: Message | None = None
        if type(pending) is types.CoroutineType:
            # Most bodies are already buffered and receive()'s first step returns
            # without waiting: the timer is armed only when it actually has to wait.
            try:
                waiting_on = pending.send(None)
            except StopIteration as done:
                message = done.value
            else:
                pending = Resumed(pending, waiting_on)
        if message is None:
            try:
                # timeout_at() needs no extra task, unlike wait_for().
                left = self.timeout - (time.monotonic() - self.started)
                at = asyncio.get_running_loop().time() + left
                async with asyncio.timeout_at(at):
                    message = await pending
            except TimeoutError:
                self.body_done = True
                raise BodyTimeout(self.timeout) from None
        if message["type"] != "http.request" or not message.get("more_body"):
            self.body_done = True
        return message


class Resumed:
    """Awaits the rest of a coroutine whose first step already ran and yielded `first`.

    Behaves as `yield from` would have from that point: values go to the task,
    results and exceptions (a cancellation by the timeout) go back to the coroutine.
    """

    __slots__ = ("coro", "first")

    def __init__(
        self, coro: types.CoroutineType[Any, Any, Message], first: Any
    ) -> None:
        self.coro = coro
        self.first = first

    def __await__(self) -> Generator[Any, Any, Message]:
        coro, out = self.coro, self.first
        while True:
            try:
                sent = yield out
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                try:
                    out = coro.throw(exc)
                except StopIteration as done:
                    result: Message = done.value
                    return result
            else:
                try:
                    out = coro.send(sent)
                except StopIteration as done:
                    result = done.value
                    return result
