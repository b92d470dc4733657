"""One face for trio and asyncio, so the real-socket tests run on both event loops.

``LOOPS["trio"]`` and ``LOOPS["asyncio"]`` each give ``run(main)``,
``run_node`` (that loop's transport), ``sleep``, ``sleep_forever``, ``now``,
a synchronous ``fail_after(seconds)`` (``trio.TooSlowError`` on trio,
``TimeoutError`` on asyncio) and ``tasks()``, an async context manager with
``start_soon(fn, *args)`` and ``cancel()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import trio

from powergrid.transports import asyncio_udp, trio_udp


class TrioLoop:
    name = "trio"
    run_node = staticmethod(trio_udp.run_node)

    def run(self, main: Callable[[], Awaitable[object]]) -> None:
        trio.run(main)

    def fail_after(self, seconds: float) -> Any:
        return trio.fail_after(seconds)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)

    async def sleep_forever(self) -> None:
        await trio.sleep_forever()

    def now(self) -> float:
        return trio.current_time()

    @contextlib.asynccontextmanager
    async def tasks(self) -> AsyncIterator[Any]:
        async with trio.open_nursery() as nursery:
            nursery.cancel = nursery.cancel_scope.cancel  # type: ignore[attr-defined]
            yield nursery


class _AsyncioTasks:
    def __init__(self, group: asyncio.TaskGroup) -> None:
        self._group = group
        self._tasks: list[asyncio.Task[object]] = []

    def start_soon(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        async def call() -> object:
            return await fn(*args)

        self._tasks.append(self._group.create_task(call()))

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()


class AsyncioLoop:
    name = "asyncio"
    run_node = staticmethod(asyncio_udp.run_node)

    def run(self, main: Callable[[], Awaitable[object]]) -> None:
        async def go() -> None:
            await main()

        asyncio.run(go())

    @contextlib.contextmanager
    def fail_after(self, seconds: float) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        fired: list[bool] = []

        def expire() -> None:
            fired.append(True)
            task.cancel()

        handle = asyncio.get_running_loop().call_later(seconds, expire)
        try:
            yield
        except asyncio.CancelledError:
            if fired and task.uncancel() == 0:
                raise TimeoutError(f"not done within {seconds} s") from None
            raise
        finally:
            handle.cancel()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def sleep_forever(self) -> None:
        await asyncio.get_running_loop().create_future()

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    @contextlib.asynccontextmanager
    async def tasks(self) -> AsyncIterator[_AsyncioTasks]:
        async with asyncio.TaskGroup() as group:
            yield _AsyncioTasks(group)


LOOPS: dict[str, Any] = {"trio": TrioLoop(), "asyncio": AsyncioLoop()}
