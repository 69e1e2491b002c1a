"""The half store of transactional messages: its documented layout, retried stores, forgotten resolutions."""

from __future__ import annotations

from rmq_style import Admin, Message, TransactionProducer
from rmq_style._message import unpack_fields
from rmq_style._names import Keys
from rmq_style._sync._io import open_client
from tests.test_transactions import COMMIT, FAST, ROLLBACK, UNKNOWN, make_topic, until, visible


def test_a_foreign_client_reads_the_half_store_as_documented(url: str) -> None:
    make_topic(url, queues=2)
    with TransactionProducer(url, "orders-tx", lambda m: UNKNOWN, **FAST) as producer:
        tx = producer.begin()
        half = tx.send(Message("orders", "hi", tag="created", keys=["o-9"]), queue_id=1)
    r = open_client(url)
    try:
        # docs/storage.md, "Transactional messages": only raw commands from here on
        assert r.smembers("rmq:pgroup:{orders-tx}:topics") == {b"orders"}
        record = unpack_fields(r.hget("rmq:{orders:1}:half:orders-tx", half.msg_id))
        state, checks, immunity, stored, lease, changed = record[:6]
        assert (state, checks, immunity, lease) == (b"h", b"0", b"0", b"")
        assert int(stored) == int(changed) == half.store_timestamp
        assert record[6:] == [b"0", str(half.born_timestamp).encode(), b"created", b"o-9", b"", b"s", b"hi"]
        assert r.zscore("rmq:{orders:1}:halfdue:orders-tx", half.msg_id) == int(stored) + int(immunity)
    finally:
        r.close()


def test_resolutions_are_forgotten_after_their_memory(url: str) -> None:
    make_topic(url)
    r = open_client(url)
    qk = Keys().queue("orders", 0)
    half_key, due_key = qk.half("orders-tx"), qk.half_checks("orders-tx")

    def memory_runs_out() -> None:  # a resolution's score is when it is forgotten (docs/storage.md)
        r.zadd(due_key, dict.fromkeys(r.zrange(due_key, 0, -1), 0))

    try:
        with TransactionProducer(url, "orders-tx", lambda m: UNKNOWN, **FAST) as producer:
            for n in range(3):
                producer.send_in_transaction(Message("orders", n), lambda m, arg: COMMIT)
            assert r.hlen(half_key) == 3  # remembered: a repeated commit is idempotent
            memory_runs_out()
            producer.send_in_transaction(Message("orders", 3), lambda m, arg: ROLLBACK)
            assert r.hlen(half_key) == 2  # each resolution forgets up to two older ones
            memory_runs_out()
            assert producer.check_once().checked == 0  # and each check look forgets the rest
            assert r.hlen(half_key) == 0 and r.zcard(due_key) == 0
    finally:
        r.close()
    assert [v[:2] for v in visible(url)] == [(0, 0), (1, 1), (2, 2)]


def test_a_retried_half_store_keeps_the_first_one(url: str) -> None:
    make_topic(url)
    with TransactionProducer(url, "orders-tx", lambda m: UNKNOWN, **FAST) as producer:
        planned = producer._core.half_plan(Message("orders", {"n": 1}), None, 0, None)
        first = producer._drive(producer._core.half_flow(planned))
        r = open_client(url)
        until(lambda: int(r.time()[0]) * 1000 + int(r.time()[1]) // 1000 > first.store_timestamp)
        r.close()
        again = producer._drive(producer._core.half_flow(planned))  # as after a lost reply
        assert (again.msg_id, again.store_timestamp) == (first.msg_id, first.store_timestamp)
        with Admin(url) as admin:
            assert [p.msg_id for p in admin.pending_transactions("orders-tx")] == [first.msg_id]


def test_delete_topic_deletes_its_half_messages(url: str) -> None:
    make_topic(url, queues=2)
    with TransactionProducer(url, "orders-tx", lambda m: COMMIT, **FAST) as producer:
        producer.begin().send(Message("orders", 1), queue_id=1)  # left pending
        with Admin(url) as admin:
            admin.delete_topic("orders")
            admin.create_topic("orders", queues=2)  # a new topic of the same name
            assert admin.pending_transactions("orders-tx") == []
        assert producer.check_once().checked == 0  # nothing of the old topic is checked, or committed
    r = open_client(url)
    try:
        qk = Keys().queue("orders", 1)
        assert not r.exists(qk.half("orders-tx"), qk.half_checks("orders-tx"), qk.tx_discarded("orders-tx"))
        assert r.smembers(Keys().producer_groups()) == {b"orders-tx"}
    finally:
        r.close()
    assert visible(url, 1) == []
