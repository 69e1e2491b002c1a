"""Publishing from a WSGI app (Flask, Django ...) with the sync producer: one per process, shared.

RMQ_URL=redis://localhost:6379/0 python examples/wsgi_publish.py
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from rmq_style import Message, Producer

producer = Producer(os.environ.get("RMQ_URL", "memory://wsgi-example"), auto_create_topics=True)


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """POST a JSON order; the response carries where it was stored."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    order = json.loads(environ["wsgi.input"].read(length) or b"{}")
    result = producer.send(
        Message("orders", order, tag="created"), sharding_key=str(order.get("user_id", ""))
    )
    body = json.dumps({"msg_id": result.msg_id, "queue": result.queue.queue_id}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


if __name__ == "__main__":
    from wsgiref.simple_server import make_server

    make_server("127.0.0.1", 8000, application).serve_forever()
