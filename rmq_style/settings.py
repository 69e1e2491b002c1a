"""Application settings, from arguments or RMQ_ environment variables.

>>> AppSettings(url="memory://settings-doc").namespace
'rmq'
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from ._codec import Codec

__all__ = ["AppSettings"]


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
