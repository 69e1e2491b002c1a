"""Prometheus metrics for workers (the ``prometheus`` extra: ``pip install 'rmq_style[prometheus]'``).

Read when Prometheus scrapes: the consumers' counters (``PushConsumer.stats``)
and listener durations (``PushConsumer.handler_times``, the only thing counted
per message) of this process, and, from Redis, the progress of the App's groups
per queue (lag, pending, retrying, dead letters, trimmed) as ``rmq-style
progress`` shows it.

>>> from prometheus_client import CollectorRegistry
>>> from rmq_style import App
>>> app = App("memory://doc-metrics")
>>> @app.subscribe("orders", group="billing")
... def bill(body: dict) -> None: ...
>>> registry = CollectorRegistry()
>>> registry.register(ConsumerCollector(app))
>>> registry.get_sample_value("rmq_consumer_running", {"group": "billing"})  # not started
0
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import structlog

from ._errors import ConfigurationError, RmqError

try:
    from prometheus_client import start_http_server
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.registry import Collector, CollectorRegistry
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ConfigurationError(
        "metrics need the prometheus extra: pip install 'rmq_style[prometheus]'"
    ) from exc
from redis.exceptions import RedisError

from ._sync.admin import Admin
from .push.consumer import PushStats

if TYPE_CHECKING:
    from .app import App

__all__ = ["ConsumerCollector", "ProgressCollector", "serve_metrics"]

log = structlog.get_logger("rmq_style.metrics")
_OUTCOMES = [f.name for f in dataclasses.fields(PushStats)]


class ConsumerCollector(Collector):
    """Counters of the App's consumers running in this process, per group."""

    def __init__(self, app: App) -> None:
        self.app = app

    def collect(self) -> Iterator[Metric]:
        messages = CounterMetricFamily(
            "rmq_consumer_messages",
            "Messages by outcome since the consumer started (this process): consumed, failed, retried, "
            "dead_lettered, filtered (tag did not match), suspended and fenced (orderly), trimmed "
            "(removed by maxlen retention before the group handled them)",
            labels=["group", "outcome"],
        )
        in_flight = GaugeMetricFamily(
            "rmq_consumer_in_flight", "Messages read and not yet acknowledged", labels=["group"]
        )
        queues = GaugeMetricFamily(
            "rmq_consumer_queues", "Queues this process consumes now", labels=["group"]
        )
        running = GaugeMetricFamily(
            "rmq_consumer_running", "1 while the group's consumer runs", labels=["group"]
        )
        durations = HistogramMetricFamily(
            "rmq_consumer_handler_seconds",
            "How long listener calls took (a batch call counts once), failed ones included",
            labels=["group"],
        )
        consumers = dict(self.app.consumers)  # a copy: the worker's loop may replace it meanwhile
        for name in self.app.groups():
            consumer = consumers.get(name)
            running.add_metric([name], 0 if consumer is None else 1)
            if consumer is None:
                continue
            for outcome in _OUTCOMES:
                messages.add_metric([name, outcome], getattr(consumer.stats, outcome))
            in_flight.add_metric([name], consumer.in_flight)
            queues.add_metric([name], len(consumer.queues))
            times = consumer.handler_times
            durations.add_metric([name], times.cumulative(), times.sum_s)
        yield from (messages, in_flight, queues, running, durations)


class ProgressCollector(Collector):
    """Per queue progress of consumer groups, read from Redis at each scrape."""

    def __init__(self, url: str, groups: Sequence[str], *, namespace: str = "rmq") -> None:
        self.url, self.groups, self.namespace = url, list(groups), namespace

    def collect(self) -> Iterator[Metric]:
        labels = ["group", "topic", "queue"]
        gauges = {
            "lag": GaugeMetricFamily(
                "rmq_group_lag", "Messages not yet consumed by the group", labels=labels
            ),
            "pending": GaugeMetricFamily(
                "rmq_group_pending", "Delivered to the group, not yet acknowledged", labels=labels
            ),
            "retrying": GaugeMetricFamily(
                "rmq_group_retrying", "Failed messages waiting for their retry", labels=labels
            ),
            "dead_letters": GaugeMetricFamily(
                "rmq_group_dead_letters", "Messages in the group's dead-letter queue", labels=labels
            ),
        }
        trimmed = CounterMetricFamily(
            "rmq_group_trimmed",
            "Messages maxlen retention removed before the group read them",
            labels=labels,
        )
        member_labels = [*labels, "member"]
        members = {
            "lag": GaugeMetricFamily(
                "rmq_member_lag", "Messages not yet consumed by a broadcasting member", labels=member_labels
            ),
            "retrying": GaugeMetricFamily(
                "rmq_member_retrying", "A broadcasting member's failed messages waiting", labels=member_labels
            ),
        }
        up = GaugeMetricFamily("rmq_progress_up", "1 if the last progress read from Redis worked")
        try:
            with Admin(self.url, namespace=self.namespace) as admin:
                rows = [(group, admin.progress(group)) for group in self.groups]
        except (RedisError, RmqError) as exc:
            log.warning("metrics.progress_failed", error=str(exc))
            up.add_metric([], 0)
            yield up
            return
        for group, reports in rows:
            for r in reports:
                key = [group, r.progress.queue.topic, str(r.progress.queue.queue_id)]
                for m in r.members:  # broadcasting: each member has its own position
                    members["lag"].add_metric([*key, m.instance], m.lag)
                    members["retrying"].add_metric([*key, m.instance], m.retrying)
                if r.members and r.progress.group_offset is None:
                    continue  # a broadcasting group: no group position, its lag is the members'
                gauges["lag"].add_metric(key, r.progress.lag)
                gauges["pending"].add_metric(key, r.progress.pending)
                gauges["retrying"].add_metric(key, r.retrying)
                gauges["dead_letters"].add_metric(key, r.dead_letters)
                trimmed.add_metric(key, r.trimmed)
        up.add_metric([], 1)
        yield from (*gauges.values(), *members.values(), trimmed, up)


def serve_metrics(
    app: App,
    port: int,
    *,
    addr: str = "0.0.0.0",
    progress: bool = True,
    registry: CollectorRegistry | None = None,
) -> CollectorRegistry:
    """Serve the App's metrics on http://addr:port/metrics (a daemon thread); returns the registry.

    With several worker processes, let one of them serve *progress* (it is the
    same for all); ``rmq-style worker --metrics-port`` does that.
    """
    registry = registry if registry is not None else CollectorRegistry()
    registry.register(ConsumerCollector(app))
    if progress:
        registry.register(ProgressCollector(app.url, app.groups(), namespace=app.settings.namespace))
    start_http_server(port, addr, registry)
    log.info("metrics.serving", port=port, progress=progress)
    return registry
