"""A stand-in app for supervisor tests: records its life in the file named by RMQ_TEST_LOG."""

from __future__ import annotations

import asyncio
import os


class SleepyApp:
    async def run(
        self, stop: asyncio.Event, *, only_groups: list[str] | None = None, concurrency: int | None = None
    ) -> None:
        log = os.environ["RMQ_TEST_LOG"]
        with open(log, "a") as f:
            f.write(f"started {os.getpid()} {only_groups} {concurrency}\n")
        await stop.wait()
        with open(log, "a") as f:
            f.write(f"stopped {os.getpid()}\n")


app = SleepyApp()
