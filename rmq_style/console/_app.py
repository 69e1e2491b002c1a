"""The console's Starlette app: read pages, HTMX fragments for live numbers, and token-guarded changes."""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any
from urllib.parse import parse_qs

import structlog
from jinja2 import Environment, PackageLoader
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .._async.admin import AsyncAdmin
from .._errors import RmqError, TopicNotFoundError
from ._rates import RateRing
from ._views import dead_view, group_summary, message_view, parse_reset_target, record_group_rates, topic_rows
from ._views import when as _when

__all__ = ["Console", "create_console"]

log = structlog.get_logger("rmq_style.console")
Handler = Callable[[Request], Awaitable[Response]]
MAX_FORM_BYTES = 64 * 1024


class Forbidden(Exception):
    pass


class Console:
    """State of one console: the Admin (opened on the first request, in the server's loop), rates, token."""

    def __init__(self, url: str, token: str | None, namespace: str, refresh_s: float) -> None:
        self.url, self.token, self.namespace, self.refresh_s = url, token, namespace, refresh_s
        self.rates = RateRing()
        self._admin: AsyncAdmin | None = None
        self.env = Environment(loader=PackageLoader("rmq_style.console", "templates"), autoescape=True)
        self.env.filters["when"] = _when

    @property
    def admin(self) -> AsyncAdmin:
        if self._admin is None:
            self._admin = AsyncAdmin(self.url, namespace=self.namespace)
        return self._admin

    async def aclose(self) -> None:
        if self._admin is not None:
            admin, self._admin = self._admin, None
            await admin.close()

    def render(self, request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        base = request.scope.get("root_path", "")
        html = self.env.get_template(name).render(
            base=base, writable=self.token is not None, refresh_s=self.refresh_s, **context
        )
        return HTMLResponse(html, status_code=status)

    async def change_form(self, request: Request) -> dict[str, str]:
        """The POSTed form, once its token and confirmation are checked (Forbidden / ValueError if not)."""
        body = b""
        async for chunk in request.stream():  # read at most MAX_FORM_BYTES: a form is small
            body += chunk
            if len(body) > MAX_FORM_BYTES:
                raise ValueError("form too large")
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        given = request.headers.get("x-console-token") or form.get("token", "")
        if self.token is None:
            raise Forbidden("this console is read-only: start it with a token to make changes")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            raise Forbidden("wrong or missing token")
        if form.get("confirm") != "yes":
            raise ValueError("not confirmed: tick the confirmation box")
        return form


MAX_TRACED = 8  # found messages whose trace the messages page reads (one scan each)


def _guard(console: Console, handler: Handler) -> Handler:
    async def guarded(request: Request) -> Response:
        try:
            return await handler(request)
        except Forbidden as exc:
            return console.render(request, "message.html", 403, title="forbidden", text=str(exc))
        except TopicNotFoundError as exc:
            return console.render(request, "message.html", 404, title="not found", text=str(exc))
        except (RmqError, ValueError) as exc:
            return console.render(request, "message.html", 400, title="refused", text=str(exc))

    return guarded


def _routes(c: Console) -> list[BaseRoute]:
    async def topics(request: Request) -> Response:
        return c.render(request, "topics.html", rows=await topic_rows(c.admin, c.rates))

    async def topics_part(request: Request) -> Response:
        return c.render(request, "_topic_rows.html", rows=await topic_rows(c.admin, c.rates))

    async def topic(request: Request) -> Response:
        info = await c.admin.describe_topic(request.path_params["topic"])
        return c.render(request, "topic.html", info=info)

    async def group_rows() -> list[Any]:
        return [group_summary(g, await c.admin.progress(g), c.rates) for g in await c.admin.list_groups()]

    async def groups(request: Request) -> Response:
        return c.render(request, "groups.html", rows=await group_rows())

    async def groups_part(request: Request) -> Response:
        return c.render(request, "_group_list_rows.html", rows=await group_rows())

    async def group_context(group: str) -> dict[str, Any]:
        rows = await c.admin.progress(group)
        rates = record_group_rates(c.rates, group, rows)
        summary = group_summary(group, rows, c.rates)
        members = await c.admin.group_members(group)
        return {"group": group, "rows": rows, "rates": rates, "summary": summary, "members": members}

    async def group(request: Request) -> Response:
        return c.render(request, "group.html", **await group_context(request.path_params["group"]))

    async def group_part(request: Request) -> Response:
        return c.render(request, "_group_rows.html", **await group_context(request.path_params["group"]))

    async def reset(request: Request) -> Response:
        group = request.path_params["group"]
        form = await c.change_form(request)
        target = parse_reset_target(form.get("to", ""), form.get("at", ""))
        moved = await c.admin.reset_offset(group, form.get("topic", ""), target)
        log.info("console.offset_reset", group=group, topic=form.get("topic"), to=target)
        lines = [f"{q}: {offset}" for q, offset in sorted(moved.items())]
        return c.render(request, "message.html", title=f"offset of {group} reset", text="", lines=lines)

    async def dlq(request: Request) -> Response:
        group = request.path_params["group"]
        dead = [dead_view(d) for d in await c.admin.dead_letters(group, limit=1000)]
        return c.render(request, "dlq.html", group=group, dead=dead)

    async def dead_letter(request: Request) -> Response:
        group, p = request.path_params["group"], request.path_params
        for d in await c.admin.dead_letters(group, p["topic"], limit=10_000):
            if d.dlq_id == p["dlq_id"] and d.message.queue_id == p["queue"]:
                return c.render(request, "dead_letter.html", group=group, d=dead_view(d))
        return c.render(request, "message.html", 404, title="not found", text="no such dead letter")

    async def replay(request: Request) -> Response:
        group = request.path_params["group"]
        form = await c.change_form(request)
        records = await c.admin.dead_letters(group, limit=10_000)
        if form.get("all") != "yes":
            wanted = (form.get("topic"), form.get("queue"), form.get("dlq_id"))
            records = [d for d in records if (d.message.topic, str(d.message.queue_id), d.dlq_id) == wanted]
        replayed = await c.admin.replay_dead_letters(group, records)
        log.info("console.dead_letters_replayed", group=group, replayed=replayed)
        return c.render(request, "message.html", title="replayed", text=f"{replayed} dead letter(s) replayed")

    async def purge(request: Request) -> Response:
        group = request.path_params["group"]
        await c.change_form(request)
        removed = await c.admin.purge_dead_letters(group)
        log.info("console.dead_letters_purged", group=group, removed=removed)
        return c.render(request, "message.html", title="purged", text=f"{removed} dead letter(s) purged")

    async def messages(request: Request) -> Response:
        q = request.query_params
        topic, msg_id, key = q.get("topic", ""), q.get("msg_id", "").strip(), q.get("key", "").strip()
        found = None
        traces: dict[str, list[str]] = {}  # msg id -> its journey (docs/trace.md), when traced
        if topic and (msg_id or key):
            hits = await c.admin.find_messages(topic, msg_id=msg_id or None, key=key or None)
            found = [message_view(m) for m in hits]
            for m in found[:MAX_TRACED]:
                for t in await c.admin.trace(m.msg_id, topic) if m.msg_id not in traces else []:
                    traces[m.msg_id] = [line.strip() for line in t.lines()[1:]] if t.steps else []
        names = [t.topic for t in await c.admin.list_topics()]
        return c.render(
            request, "messages.html", topics=names, topic=topic, msg_id=msg_id, key=key, found=found,
            traces=traces,
        )  # fmt: skip

    async def transactions(request: Request) -> Response:
        groups = []
        for g in await c.admin.list_producer_groups():
            groups.append(
                {
                    "group": g,
                    "report": await c.admin.transaction_report(g),
                    "pending": await c.admin.pending_transactions(g),
                    "discarded": await c.admin.discarded_transactions(g),
                    "instances": await c.admin.transaction_instances(g),
                }
            )
        return c.render(request, "transactions.html", groups=groups)

    pages: list[tuple[str, Handler, list[str]]] = [
        ("/", topics, ["GET"]),
        ("/parts/topics", topics_part, ["GET"]),
        ("/topics/{topic}", topic, ["GET"]),
        ("/groups", groups, ["GET"]),
        ("/parts/groups", groups_part, ["GET"]),
        ("/groups/{group}", group, ["GET"]),
        ("/parts/groups/{group}", group_part, ["GET"]),
        ("/groups/{group}/reset", reset, ["POST"]),
        ("/groups/{group}/dlq", dlq, ["GET"]),
        ("/groups/{group}/dlq/{topic}/{queue:int}/{dlq_id}", dead_letter, ["GET"]),
        ("/groups/{group}/dlq/replay", replay, ["POST"]),
        ("/groups/{group}/dlq/purge", purge, ["POST"]),
        ("/messages", messages, ["GET"]),
        ("/transactions", transactions, ["GET"]),
    ]
    static = StaticFiles(directory=str(files("rmq_style.console") / "static"))
    return [
        *(Route(path, _guard(c, h), methods=m) for path, h, m in pages),
        Mount("/static", app=static, name="static"),
    ]


def create_console(
    url: str, token: str | None = None, prefix: str = "", *, namespace: str = "rmq", refresh_s: float = 3.0
) -> Starlette:
    """The console as an ASGI app: mount it in your app, or serve it (``rmq-style console``).

    Read-only unless *token* is given; then replay, purge and reset need the token (form field
    ``token`` or header ``X-Console-Token``) and ``confirm=yes``. *prefix* serves it under a path
    when run standalone; when mounted (``app.mount("/rmq", ...)``) links follow the mount point.
    ``app.state.console.aclose()`` closes its Redis connections (done at shutdown when it is the
    served app).
    """
    console = Console(url, token or None, namespace, refresh_s)
    routes = _routes(console)
    if prefix.strip("/"):
        routes = [Mount("/" + prefix.strip("/"), routes=routes)]

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield
        await console.aclose()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.console = console
    return app
