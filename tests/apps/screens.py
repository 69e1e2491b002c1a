"""A broadcasting App for the worker test: every worker process gets every message of ``news``."""

from __future__ import annotations

import os

from rmq_style import App

app = App(os.environ.get("RMQ_URL", "memory://screens"), auto_create_topics=True)


@app.subscribe("news", group="screens", message_model="broadcasting", consume_from="first")
def show(item: dict[str, int]) -> None:
    """Nothing to do: the members' positions (progress) show what each process consumed."""
