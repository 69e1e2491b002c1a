"""Every settings model of rmq_style, in one place.

Each model is defined next to the code it configures (the pure core and the
runtime cannot import this module: it sits above them) and is imported here,
so ``from rmq_style.settings import ...`` finds any of them:

==========================  ===========================================  ===========================
model                       configures                                   defined in
==========================  ===========================================  ===========================
``AppSettings``             an App (``RMQ_*`` environment variables)      here
``PushSettings``            a PushConsumer                               ``push/settings.py``
``MembershipSettings``      heartbeats and allocation (in PushSettings)  ``_membership.py``
``LitePullSettings``        a LitePullConsumer                           ``_lite_pulling.py``
``ProducerSettings``        a Producer                                   ``_producing.py``
``TransactionSettings``     a TransactionProducer                        ``_transaction.py``
``SimpleSettings``          a SimpleConsumer                             ``_simple.py``
==========================  ===========================================  ===========================

>>> AppSettings(url="memory://settings-doc").namespace
'rmq'
>>> PushSettings().membership.allocation
'averagely'
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._codec import Codec
from ._lite_pulling import LitePullSettings
from ._membership import MembershipSettings
from ._producing import ProducerSettings
from ._simple import SimpleSettings
from ._transaction import TransactionSettings
from .push.settings import PushSettings

__all__ = [
    "AppSettings",
    "LitePullSettings",
    "MembershipSettings",
    "ProducerSettings",
    "PushSettings",
    "SimpleSettings",
    "TransactionSettings",
]


class AppSettings(BaseSettings):
    """Settings of an App; each field can be set with ``RMQ_<FIELD>`` (e.g. RMQ_URL)."""

    model_config = SettingsConfigDict(env_prefix="RMQ_", extra="forbid", frozen=True)

    url: str = "redis://localhost:6379/0"
    namespace: str = "rmq"
    codec: Codec = "json"
    max_message_size: int = Field(4 * 1024 * 1024, gt=0)
    auto_create_topics: bool = False
    concurrency: int = Field(20, ge=1, description="handlers at once per group (consumeThreadMax)")
    max_reconsume_times: int = Field(16, ge=-1)
    shutdown_timeout_s: float = Field(30.0, ge=0)
    startup_wait_s: float = Field(60.0, ge=0, description="a worker waits this long for Redis at start")
    tracing: bool = Field(
        False, description="OpenTelemetry spans and metrics (the otel extra; docs/tracing.md)"
    )
    tracing_parent: bool = Field(
        False, description="with tracing: a process span is the child of its message's send span, not linked"
    )
    trace_sample: float = Field(
        0.0, ge=0, le=1, description="share of sent messages traced (docs/trace.md); consumers follow"
    )
    message_trace: Literal["follow", "all", "off"] = Field(
        "follow", description="consumers record the sampled messages, all, or none (docs/trace.md)"
    )
