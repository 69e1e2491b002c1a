"""The App bench/scale.py drains with ``rmq-style worker scale_app:app --app-dir bench/apps``.

SCALE_TOPIC and SCALE_GROUP (environment) name the backlog and a fresh group per round.
"""

from __future__ import annotations

import os

from rmq_style import App, ReceivedMessage

app = App()


TOPIC = os.environ.get("SCALE_TOPIC", "bench-scale")


@app.subscribe(TOPIC, group=os.environ.get("SCALE_GROUP", "scale"), consume_from="first")
async def noop(msg: ReceivedMessage) -> None:
    """Nothing: the bench measures delivery and acknowledgement, not the handler."""
