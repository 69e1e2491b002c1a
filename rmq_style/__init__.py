"""rmq_style: RocketMQ's consumption model on Redis Streams.

>>> from rmq_style import Admin, Producer, Message
>>> with Admin("memory://doc-init") as admin:
...     _ = admin.create_topic("orders", queues=4)
>>> with Producer("memory://doc-init") as producer:
...     result = producer.send(Message("orders", {"order": 1}, tag="created"), sharding_key="user-9")
>>> result.queue, result.queue_offset
(MessageQueue(topic='orders', queue_id=2), 0)

Push consumption: a listener per topic; returning acks, raising retries later.

>>> import asyncio
>>> from structlog.testing import capture_logs
>>> from rmq_style import PushConsumer
>>> async def consume_one():
...     done = asyncio.Event()
...     async def on_order(msg):
...         done.set()
...     consumer = PushConsumer("memory://doc-init", "billing", consume_from="first")
...     consumer.subscribe("orders", "*", on_order)
...     async with consumer:
...         await asyncio.wait_for(done.wait(), 5)
...     return consumer.stats.consumed
>>> with capture_logs():
...     asyncio.run(consume_one())
1
"""

from . import otel
from ._async.admin import AsyncAdmin
from ._async.lite_pull import AsyncLitePullConsumer
from ._async.producer import AsyncProducer
from ._async.pull import AsyncPullConsumer
from ._async.simple import AsyncSimpleConsumer
from ._async.transaction import AsyncTransaction, AsyncTransactionProducer, CheckReport
from ._delay import DELAY_LEVELS_MS, RetrySchedule
from ._errors import (
    BrokerRefusedError,
    BrokerUnavailableError,
    ConfigurationError,
    ConsumerFailedError,
    FencedError,
    InvalidNameError,
    InvalidOffsetError,
    InvalidReceiptHandleError,
    InvalidUrlError,
    MessageTooLargeError,
    QueueNotFoundError,
    RmqError,
    SerializationError,
    StaleReceiptHandleError,
    SubscriptionConflictError,
    TopicError,
    TopicExistsError,
    TopicNotFoundError,
    UsageError,
)
from ._lite_pulling import LitePullSettings
from ._message import Message, MessageQueue, ReceivedMessage, SendResult, SendStatus
from ._names import LAYOUT_VERSION, Keys
from ._offset_store import QueueProgress
from ._offsets import ConsumeFrom, Offset, parse_offset
from ._producing import ProducerSettings
from ._pulling import PullResult, PullStatus
from ._receipt import ReceiptHandle, SimpleMessage
from ._routing import queue_for_key
from ._simple import SimpleSettings
from ._sync.admin import Admin
from ._sync.lite_pull import LitePullConsumer
from ._sync.producer import Producer
from ._sync.pull import PullConsumer
from ._sync.simple import SimpleConsumer
from ._sync.transaction import Transaction, TransactionProducer
from ._topics import QueueInfo, Retention, TopicInfo, TopicRoute
from ._trace import TRACE_PROPERTY
from ._trace_read import MessageTrace, TraceStep
from ._transaction import (
    HalfMessage,
    TransactionSendResult,
    TransactionSettings,
    TransactionState,
    TransactionStateError,
)
from .app import App, HandlerSubscription
from .push.consumer import PushConsumer, PushStats
from .push.idempotence import DuplicateInProgress, Idempotent
from .push.key_window import KeyFunction, ordering_key
from .push.outcomes import ConsumeResult, ConsumeTimeout, DeadLetter
from .push.settings import PushSettings
from .settings import AppSettings

__all__ = [
    "DELAY_LEVELS_MS",
    "LAYOUT_VERSION",
    "TRACE_PROPERTY",
    "Admin",
    "App",
    "AppSettings",
    "AsyncAdmin",
    "AsyncLitePullConsumer",
    "AsyncProducer",
    "AsyncPullConsumer",
    "AsyncSimpleConsumer",
    "AsyncTransaction",
    "AsyncTransactionProducer",
    "BrokerRefusedError",
    "BrokerUnavailableError",
    "CheckReport",
    "ConfigurationError",
    "ConsumeFrom",
    "ConsumeResult",
    "ConsumeTimeout",
    "ConsumerFailedError",
    "DeadLetter",
    "DuplicateInProgress",
    "FencedError",
    "HalfMessage",
    "HandlerSubscription",
    "Idempotent",
    "InvalidNameError",
    "InvalidOffsetError",
    "InvalidReceiptHandleError",
    "InvalidUrlError",
    "KeyFunction",
    "Keys",
    "LitePullConsumer",
    "LitePullSettings",
    "Message",
    "MessageQueue",
    "MessageTooLargeError",
    "MessageTrace",
    "Offset",
    "Producer",
    "ProducerSettings",
    "PullConsumer",
    "PullResult",
    "PullStatus",
    "PushConsumer",
    "PushSettings",
    "PushStats",
    "QueueInfo",
    "QueueNotFoundError",
    "QueueProgress",
    "ReceiptHandle",
    "ReceivedMessage",
    "Retention",
    "RetrySchedule",
    "RmqError",
    "SendResult",
    "SendStatus",
    "SerializationError",
    "SimpleConsumer",
    "SimpleMessage",
    "SimpleSettings",
    "StaleReceiptHandleError",
    "SubscriptionConflictError",
    "TopicError",
    "TopicExistsError",
    "TopicInfo",
    "TopicNotFoundError",
    "TopicRoute",
    "TraceStep",
    "Transaction",
    "TransactionProducer",
    "TransactionSendResult",
    "TransactionSettings",
    "TransactionState",
    "TransactionStateError",
    "UsageError",
    "ordering_key",
    "otel",
    "parse_offset",
    "queue_for_key",
]
