"""The Lua scripts: one ``.lua`` file per state transition, loaded once.

Each file starts with a header naming every KEYS and ARGV slot and every
return value. ``--@include NAME`` lines pull in ``lua/includes/NAME.lua`` at
load time, so shared fragments are written once.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

__all__ = ["SCRIPTS", "Script", "script"]

_INCLUDE = re.compile(r"^--@include (\w+)$", re.MULTILINE)

# name -> number of KEYS; a test checks these against each file's header.
SCRIPTS: dict[str, int] = {
    "send": 3,
    "schedule": 3,
    "release_due": 5,
    "heartbeat": 1,
    "subscribe": 3,
    "pull_prepare": 5,
    "commit_offset": 2,
    "retry": 3,
    "dead_letter": 2,
    "release_retries": 3,
    "bcast_retry": 3,
    "bcast_dead_letter": 2,
    "create_group": 2,
    "dlq_replay": 2,
    "lock_renew": 1,
    "lock_release": 1,
    "orderly_read": 4,
    "orderly_settle": 3,
    "orderly_dead_letter": 4,
    "key_read": 4,
    "key_settle": 4,
    "prune_consumers": 1,
    "adopt_entries": 1,
    "tx_half": 3,
    "tx_commit": 6,
    "tx_rollback": 3,
    "tx_check_claim": 3,
    "tx_check_unknown": 2,
    "tx_resume": 3,
    "simple_receive": 10,
    "simple_ack": 4,
    "simple_change": 2,
    "trace": 1,
    "idem_claim": 1,
    "idem_done": 1,
    "idem_release": 1,
    "idem_renew": 1,
}


@dataclass(frozen=True, slots=True)
class Script:
    name: str
    numkeys: int
    source: str
    sha: str


def _read(relative: str) -> str:
    return resources.files("rmq_style").joinpath("lua", relative).read_text(encoding="utf-8")


@cache
def script(name: str) -> Script:
    """The script *name* with its includes expanded."""
    source = _INCLUDE.sub(lambda m: _read(f"includes/{m.group(1)}.lua"), _read(f"{name}.lua"))
    return Script(name, SCRIPTS[name], source, hashlib.sha1(source.encode()).hexdigest())
