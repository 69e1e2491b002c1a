"""Subscription expressions: ``*`` (everything) or ``TagA || TagB`` (any of these tags).

>>> TagFilter.parse("created || paid").matches("paid")
True
>>> TagFilter.parse("created || paid").matches(None)
False
>>> TagFilter.parse("*").matches(None), str(TagFilter.parse(" b ||a "))
(True, 'a || b')
"""

from __future__ import annotations

from dataclasses import dataclass

from ._errors import UsageError

__all__ = ["TagFilter"]


@dataclass(frozen=True, slots=True)
class TagFilter:
    tags: frozenset[str] | None  # None: every message

    @classmethod
    def parse(cls, expression: str | None) -> TagFilter:
        if expression is None or expression.strip() in ("", "*"):
            return cls(None)
        tags = [t.strip() for t in expression.split("||")]
        if any(not t or " " in t or "|" in t or t == "*" for t in tags):
            raise UsageError(f"invalid subscription expression {expression!r}: use '*' or 'TagA || TagB'")
        return cls(frozenset(tags))

    def matches(self, tag: str | None) -> bool:
        return self.tags is None or tag in self.tags

    def __str__(self) -> str:
        return "*" if self.tags is None else " || ".join(sorted(self.tags))
