"""The registry of live calls: admission against `max_concurrent_calls`, and cancelling them at shutdown."""

from __future__ import annotations

import asyncio

import structlog

log = structlog.get_logger("gateway.calls")


class CallRegistry:
    def __init__(self, max_concurrent_calls: int) -> None:
        self.max_concurrent_calls = max_concurrent_calls
        self._tasks: dict[str, asyncio.Task[object]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._tasks

    @property
    def full(self) -> bool:
        return len(self._tasks) >= self.max_concurrent_calls

    def add(self, call_id: str, task: asyncio.Task[object]) -> bool:
        """Admit a call owned by `task`; False when the gateway is full or the call is already live."""
        if self.full or call_id in self._tasks:
            return False
        self._tasks[call_id] = task
        return True

    def remove(self, call_id: str) -> None:
        self._tasks.pop(call_id, None)

    async def cancel_all(self) -> None:
        """Cancel every call's owning task and wait for their teardown (sockets closed, logs written)."""
        tasks = list(self._tasks.values())
        if tasks:
            log.info("calls.cancelling", count=len(tasks))
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
