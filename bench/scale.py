"""Scale-out: ``rmq-style worker --processes N`` against N raw redis-py consumer processes.

    PYTHONPATH=. .venv/bin/python bench/scale.py                  # starts its own redis-server
    PYTHONPATH=. .venv/bin/python bench/scale.py --redis-url URL  # reuse a server (flushed!)

One backlog (100k messages on a topic of 8 queues, filled once) is drained by
a fresh consumer group each time. For N in (1, 2):

- ours: ``rmq-style worker scale_app:app --processes N --app-dir bench/apps``
  (bench/apps/scale_app.py: a no-op async handler);
- baseline: N processes, each a redis-py loop of one XREADGROUP over the 8
  streams (COUNT 32) and one pipelined XACK per stream, one group for the N.

Each side starts with its group at the end of the streams and its N
processes reading (all N seen as consumers of the streams: for the worker,
after the queues were balanced between its processes, one heartbeat or two);
then the group is moved to the start (XGROUP SETID 0) and one more message
per queue wakes the readers. Messages/s from the first delivery to an empty
group (nothing left to deliver, nothing pending), polled every 10 ms with
XINFO GROUPS: start-up and balancing are not counted. 3 rounds per side,
alternating; medians; one JSON object per N.

The machine is shared: besides messages/s, each side's CPU time per message
(its N consumer processes, user + system, over the same span, from /proc) is
printed, which other load changes much less than the rates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rmq_style import Admin, Message, Producer  # noqa: E402
from rmq_style._names import Keys  # noqa: E402
from rmq_style.testing import private_redis_url  # noqa: E402

TOPIC = "bench-scale"
QUEUES = 8
BACKLOG = 100_000
ROUNDS = 3
COUNT = 32
POLL_S = 0.01
LIMIT_S = 60.0  # one drain taking longer fails the bench
BODY: dict[str, Any] = {"order_id": 1234567, "user": "user-000042", "status": "created", "amount": 129900}


def streams() -> list[str]:
    return [Keys().queue(TOPIC, q).stream for q in range(QUEUES)]


def fill(url: str, backlog: int) -> None:
    with Admin(url) as admin:
        admin.create_topic(TOPIC, queues=QUEUES)
    with Producer(url) as producer:
        batch = [Message(TOPIC, BODY) for _ in range(500)]
        for _ in range(backlog // len(batch)):
            producer.send_batch(batch)


def raw_consumer(url: str, group: str, name: str) -> None:
    """One baseline process: read and ack until a read finds nothing."""
    client = redis.Redis.from_url(url, protocol=2)
    keys = dict.fromkeys(streams(), ">")
    for key in keys:  # seen by release() as ready (a read that finds nothing does not create it)
        client.xgroup_createconsumer(key, group, name)
    seen, deadline = False, time.monotonic() + LIMIT_S
    while True:
        reply = client.xreadgroup(group, name, keys, count=COUNT, block=200)
        if not reply:
            if seen or time.monotonic() > deadline:
                break
            continue  # the backlog is not in sight yet
        seen = True
        pipe = client.pipeline(transaction=False)
        for key, entries in reply:
            pipe.xack(key, group, *[entry_id for entry_id, _ in entries])
        pipe.execute()
    client.close()


def progress(client: redis.Redis, group: str) -> tuple[int, int]:
    """(entries delivered to *group*, entries still to deliver or pending) over the 8 streams."""
    pipe = client.pipeline(transaction=False)
    for key in streams():
        pipe.xinfo_groups(key)
    read = left = 0
    for groups in pipe.execute():
        for info in groups:
            if group in info["name"].decode():
                read += info["entries-read"] or 0
                left += (info["lag"] or 0) + info["pending"]
                break
        else:
            left += 1  # the group is not there yet
    return read, left


def consumers(client: redis.Redis, group: str) -> set[bytes]:
    """Names of the consumers *group* has on the 8 streams (a reader appears with its first read)."""
    names: set[bytes] = set()
    for key in streams():
        for info in client.xinfo_groups(key):
            if group in info["name"].decode():
                names.update(c["name"] for c in client.xinfo_consumers(key, info["name"]))
    return names


def release(url: str, client: redis.Redis, group: str, n: int, procs: list[subprocess.Popen[bytes]]) -> int:
    """Once the N processes read, show *group* the whole backlog; the messages it now holds."""
    deadline = time.monotonic() + LIMIT_S
    while len(consumers(client, group)) < n:
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise SystemExit(f"{group}: {n} readers never seen")
        time.sleep(POLL_S)
    for key in streams():
        for info in client.xinfo_groups(key):
            if group in info["name"].decode():
                client.execute_command("XGROUP", "SETID", key, info["name"], "0", "ENTRIESREAD", "0")
    with Producer(url) as producer:  # wakes the blocked reads
        for q in range(QUEUES):
            producer.send(Message(TOPIC, BODY), queue_id=q)
    return sum(int(client.xlen(key)) for key in streams())


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of *pids* so far (0.0 where /proc cannot tell)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(stat[11]) + int(stat[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def consumer_pids(procs: list[subprocess.Popen[bytes]]) -> list[int]:
    """The consumer processes: *procs*, or for a supervisor its worker children."""
    pids = []
    for p in procs:
        try:
            children = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
        except OSError:
            children = []
        pids += [int(c) for c in children] or [p.pid]
    return pids


def drain(
    client: redis.Redis, group: str, procs: list[subprocess.Popen[bytes]], backlog: int
) -> tuple[float, float]:
    """Messages/s from the first delivery to an empty group, and CPU microseconds per message."""
    deadline = time.monotonic() + LIMIT_S
    start = None
    pids = consumer_pids(procs)
    cpu = 0.0
    while True:
        read, left = progress(client, group)
        now = time.perf_counter()
        if start is None and read > 0:
            start, cpu = now, cpu_seconds(pids)
        if start is not None and left == 0 and read >= backlog:
            return backlog / (now - start), (cpu_seconds(pids) - cpu) / backlog * 1e6
        if time.monotonic() > deadline or any(p.poll() not in (None, 0) for p in procs):
            raise SystemExit(f"{group}: not drained ({read} read, {left} left)")
        time.sleep(POLL_S)


def create_groups(client: redis.Redis, group: str) -> None:
    """*group* at the end of the streams: its readers start with nothing to read (the worker keeps
    an existing group's position)."""
    for key in streams():
        client.execute_command("XGROUP", "CREATE", key, group, "$", "ENTRIESREAD", client.xlen(key))


def worker_command() -> list[str]:
    exe = Path(sys.executable).parent / "rmq-style"
    return [str(exe) if exe.exists() else shutil.which("rmq-style") or "rmq-style"]


def ours(url: str, client: redis.Redis, n: int, group: str) -> tuple[float, float]:
    env = {**os.environ, "RMQ_URL": url, "SCALE_TOPIC": TOPIC, "SCALE_GROUP": group}
    cmd = [*worker_command(), "worker", "scale_app:app", "--processes", str(n), "--app-dir", "bench/apps"]
    create_groups(client, group)
    worker = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return drain(client, group, [worker], release(url, client, group, n, [worker]))
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)


def baseline(url: str, client: redis.Redis, n: int, group: str) -> tuple[float, float]:
    create_groups(client, group)
    procs = [
        subprocess.Popen([sys.executable, __file__, "--raw-consumer", url, group, f"raw-{i}"], cwd=ROOT)
        for i in range(n)
    ]
    try:
        return drain(client, group, procs, release(url, client, group, n, procs))
    finally:
        for p in procs:
            p.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--redis-url", help="use this server (flushed!) instead of a private one")
    parser.add_argument("--backlog", type=int, default=BACKLOG, help="messages to drain per round")
    parser.add_argument("--processes", type=int, action="append", help="N (repeatable; default 1, 2)")
    parser.add_argument("--raw-consumer", nargs=3, metavar=("URL", "GROUP", "NAME"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.raw_consumer:
        raw_consumer(*args.raw_consumer)
        return 0
    backlog = args.backlog // 500 * 500
    with private_redis_url(args.redis_url) as url:
        client = redis.Redis.from_url(url, protocol=2)
        client.flushall()
        fill(url, backlog)
        for n in args.processes or [1, 2]:
            runs: dict[str, list[tuple[float, float]]] = {"ours": [], "raw": []}
            for r in range(ROUNDS):
                # alternate who goes first, so a burst of load elsewhere hurts both sides alike
                sides = [("ours", ours), ("raw", baseline)]
                for side, run in sides if r % 2 == 0 else sides[::-1]:
                    runs[side].append(run(url, client, n, f"{side}-{n}-{r}"))
            mine, theirs = [rate for rate, _ in runs["ours"]], [rate for rate, _ in runs["raw"]]
            msgs, base = statistics.median(mine), statistics.median(theirs)
            print(
                json.dumps(
                    {
                        "bench": "scale",
                        "case": f"processes-{n}",
                        "msgs_per_s": round(msgs),
                        "baseline": f"{n} redis-py process(es): XREADGROUP COUNT {COUNT} over 8 streams + "
                        "pipelined XACK",
                        "baseline_msgs_per_s": round(base),
                        "ratio": round(msgs / base, 3),
                        "round_ratios": [round(a / b, 3) for a, b in zip(mine, theirs, strict=True)],
                        "cpu_us_per_msg": round(statistics.median(cpu for _, cpu in runs["ours"]), 2),
                        "baseline_cpu_us_per_msg": round(statistics.median(cpu for _, cpu in runs["raw"]), 2),
                        "processes": n,
                        "backlog": backlog,
                        "rounds": ROUNDS,
                        "queues": QUEUES,
                    }
                ),
                flush=True,
            )
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
