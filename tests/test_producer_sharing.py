"""One producer shared by threads, tasks and a forked child: every reply reaches its own caller.

A producer made from a URL keeps one connection aside (its lane) for sends;
callers that find it busy take a pooled connection. These tests check that no
reply is handed to the wrong caller and that a forked child never writes on
its parent's socket.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time

import pytest
import redis

from rmq_style import Admin, AsyncProducer, Message, Producer, SendResult
from rmq_style._sync._io import open_client


def entries_by_offset(url: str, topic: str) -> dict[int, bytes]:
    """queue offset -> msg id of every entry of queue 0."""
    client = open_client(url)
    rows = client.xrange(f"rmq:{{{topic}:0}}:s")
    return {int(fields[b"q"]): fields[b"i"] for _, fields in rows}


def check_every_result_matches_its_entry(url: str, topic: str, results: list[SendResult], total: int) -> None:
    stored = entries_by_offset(url, topic)
    assert sorted(stored) == list(range(total))  # consecutive, none lost, none twice
    assert len({r.msg_id for r in results}) == total
    for result in results:
        assert result.queue_offset is not None
        assert stored[result.queue_offset] == result.msg_id.encode()


def test_threads_sharing_a_producer_each_get_their_own_replies(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("shared", queues=1)
    results: list[SendResult] = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        mine = [producer.send(Message("shared", {"thread": n, "i": i})) for i in range(250)]
        with lock:
            results.extend(mine)

    with Producer(url) as producer:
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(results) == 2000
    check_every_result_matches_its_entry(url, "shared", results, 2000)


def test_tasks_sharing_an_async_producer_each_get_their_own_replies(url: str) -> None:
    with Admin(url) as admin:
        admin.create_topic("shared", queues=1)

    async def main() -> list[SendResult]:
        async with AsyncProducer(url) as producer:

            async def work(n: int) -> list[SendResult]:
                return [await producer.send(Message("shared", {"task": n, "i": i})) for i in range(100)]

            batches = await asyncio.gather(*(work(n) for n in range(16)))
        return [r for batch in batches for r in batch]

    results = asyncio.run(main())
    check_every_result_matches_its_entry(url, "shared", results, 1600)


def test_a_send_cancelled_mid_round_trip_leaves_the_producer_usable(real_url: str) -> None:
    with Admin(real_url) as admin:
        admin.create_topic("shared", queues=1)
    server = redis.Redis.from_url(real_url)

    async def main() -> tuple[SendResult, SendResult]:
        async with AsyncProducer(real_url) as producer:
            first = await producer.send(Message("shared", b"0"))
            server.client_pause(60_000, all=False)  # writes wait: the send stays mid round trip
            try:
                task = asyncio.ensure_future(producer.send(Message("shared", b"cancelled")))
                deadline = time.monotonic() + 10
                while server.info("clients")["blocked_clients"] == 0:
                    assert time.monotonic() < deadline, "the send never reached the paused server"
                    await asyncio.sleep(0.005)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
            finally:
                server.client_unpause()
            return first, await producer.send(Message("shared", b"1"))

    first, last = asyncio.run(main())
    # the cancelled call's connection was dropped before Redis ran it: nothing was written
    stored = entries_by_offset(real_url, "shared")
    assert stored == {0: first.msg_id.encode(), 1: last.msg_id.encode()}
    server.close()


def test_a_forked_child_sends_on_its_own_connection(real_url: str) -> None:
    with Admin(real_url) as admin:
        admin.create_topic("shared", queues=1)
    with Producer(real_url) as producer:
        before = [producer.send(Message("shared", {"parent": i})) for i in range(10)]
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report its results' msg ids and offsets through the pipe
            code = 1
            try:
                os.close(read)
                mine = [producer.send(Message("shared", {"child": i})) for i in range(100)]
                os.write(write, "\n".join(f"{r.msg_id} {r.queue_offset}" for r in mine).encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        after = [producer.send(Message("shared", {"parent": i})) for i in range(100)]
        with os.fdopen(read, "rb") as pipe:
            reported = pipe.read().decode().split("\n")
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    stored = entries_by_offset(real_url, "shared")
    assert sorted(stored) == list(range(210))
    for msg_id, offset in (line.split() for line in reported):
        assert stored[int(offset)] == msg_id.encode()
    for result in [*before, *after]:
        assert result.queue_offset is not None
        assert stored[result.queue_offset] == result.msg_id.encode()


def test_a_killed_lane_connection_is_replaced(real_url: str) -> None:
    with Admin(real_url) as admin:
        admin.create_topic("shared", queues=1)
    killer = redis.Redis.from_url(real_url)
    with Producer(real_url) as producer:
        first = producer.send(Message("shared", b"0"))
        killed = killer.client_kill_filter(_type="normal", skipme=True)
        assert killed >= 1
        second = producer.send(Message("shared", b"1"))
    assert (first.queue_offset, second.queue_offset) == (0, 1)
    killer.close()


def test_an_async_batch_larger_than_the_socket_buffer_is_written_whole(real_url: str) -> None:
    """A write that does not go out at once is drained before the replies are read (the lane's send
    skips the drain only when nothing is left in the transport's buffer)."""
    with Admin(real_url) as admin:
        admin.create_topic("large", queues=1)
    body = "x" * 1_000_000  # 8 MB in one round trip: more than a loopback socket takes at once

    async def main() -> list[SendResult]:
        async with AsyncProducer(real_url) as producer:
            return await producer.send_batch([Message("large", {"i": i, "b": body}) for i in range(8)])

    results = asyncio.run(main())
    assert [r.queue_offset for r in results] == list(range(8))
    check_every_result_matches_its_entry(real_url, "large", results, 8)
