"""The web console (extra ``console``): topics, groups, messages, dead letters, transactions.

Server-rendered (Starlette, Jinja2 with autoescape, HTMX vendored as a static
file); read-only unless created with a token. Mount it in your own app::

    from rmq_style.console import create_console
    app.mount("/rmq", create_console("redis://localhost:6379/0", token=secret))

or run it with ``rmq-style console --port 8080``. See docs/console.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["RateRing", "create_console"]

if TYPE_CHECKING:
    from ._app import create_console
    from ._rates import RateRing

EXTRA_HINT = 'the console needs its extra: pip install "rmq_style[console]"'


def __getattr__(name: str) -> Any:
    # imported on first use: `import rmq_style.console` works without the extra; using it says what is missing
    if name == "create_console":
        try:
            from ._app import create_console  # noqa: PLC0415 - needs the extra
        except ImportError as exc:
            raise ImportError(f"{EXTRA_HINT} ({exc})") from exc
        return create_console
    if name == "RateRing":
        from ._rates import RateRing  # noqa: PLC0415

        return RateRing
    raise AttributeError(name)
