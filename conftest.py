"""Session setup for every test and doctest: structlog goes through stdlib logging.

Unconfigured structlog prints to stdout, which would end up in doctest output;
routed through logging, pytest captures it like any log record.
"""

import structlog

structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.KeyValueRenderer(key_order=["event"]),
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
)
