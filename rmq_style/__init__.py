"""rmq_style: RocketMQ's consumption model on Redis Streams.

>>> from rmq_style import Admin, Producer, Message
>>> with Admin("memory://doc-init") as admin:
...     _ = admin.create_topic("orders", queues=4)
>>> with Producer("memory://doc-init") as producer:
...     result = producer.send(Message("orders", {"order": 1}, tag="created"), sharding_key="user-9")
>>> result.queue, result.queue_offset
(MessageQueue(topic='orders', queue_id=2), 0)
"""

from ._async.admin import AsyncAdmin
from ._async.lite_pull import AsyncLitePullConsumer
from ._async.producer import AsyncProducer
from ._async.pull import AsyncPullConsumer
from ._delay import DELAY_LEVELS_MS, RetrySchedule
from ._errors import (
    BrokerUnavailableError,
    ConfigurationError,
    FencedError,
    InvalidNameError,
    InvalidOffsetError,
    InvalidUrlError,
    MessageTooLargeError,
    QueueNotFoundError,
    RmqError,
    SerializationError,
    SubscriptionConflictError,
    TopicError,
    TopicExistsError,
    TopicNotFoundError,
    UsageError,
)
from ._lite_pulling import ConsumeFrom, LitePullSettings
from ._message import Message, MessageQueue, ReceivedMessage, SendResult
from ._names import LAYOUT_VERSION, Keys
from ._offset_store import QueueProgress
from ._offsets import Offset, parse_offset
from ._producing import ProducerSettings
from ._pulling import PullResult, PullStatus
from ._routing import queue_for_key
from ._sync.admin import Admin
from ._sync.lite_pull import LitePullConsumer
from ._sync.producer import Producer
from ._sync.pull import PullConsumer
from ._topics import QueueInfo, Retention, TopicInfo, TopicRoute

__all__ = [
    "DELAY_LEVELS_MS",
    "LAYOUT_VERSION",
    "Admin",
    "AsyncAdmin",
    "AsyncLitePullConsumer",
    "AsyncProducer",
    "AsyncPullConsumer",
    "BrokerUnavailableError",
    "ConfigurationError",
    "ConsumeFrom",
    "FencedError",
    "InvalidNameError",
    "InvalidOffsetError",
    "InvalidUrlError",
    "Keys",
    "LitePullConsumer",
    "LitePullSettings",
    "Message",
    "MessageQueue",
    "MessageTooLargeError",
    "Offset",
    "Producer",
    "ProducerSettings",
    "PullConsumer",
    "PullResult",
    "PullStatus",
    "QueueInfo",
    "QueueNotFoundError",
    "QueueProgress",
    "ReceivedMessage",
    "Retention",
    "RetrySchedule",
    "RmqError",
    "SendResult",
    "SerializationError",
    "SubscriptionConflictError",
    "TopicError",
    "TopicExistsError",
    "TopicInfo",
    "TopicNotFoundError",
    "TopicRoute",
    "UsageError",
    "parse_offset",
    "queue_for_key",
]
