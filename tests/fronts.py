"""Run one test body against the sync and the asyncio fronts.

``SyncView`` gives an async object a blocking face on one long-lived event
loop, so a test written once drives Producer and AsyncProducer alike.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any


class SyncView:
    def __init__(self, target: Any, runner: asyncio.Runner) -> None:
        self._target = target
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._runner.run(attr(*args, **kwargs))

        return call

    def __enter__(self) -> SyncView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
