"""Session setup for every test and doctest: structlog goes through stdlib logging.

Unconfigured structlog prints to stdout, which would end up in doctest output;
routed through logging, pytest captures it like any log record.
"""

import pytest
import structlog

structlog.configure(
    processors=[
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.KeyValueRenderer(key_order=["event"]),
    ],
    logger_factory=structlog.stdlib.LoggerFactory(),
)


def pytest_configure(config: pytest.Config) -> None:
    """Load the package's plugin; the coverage floor (fail_under) holds for a full run only."""
    # loaded here rather than by its entry point (turned off by `-p no:rmq_style` in pyproject.toml),
    # so that coverage has started when rmq_style is imported; with addopts overridden it is loaded
    if not config.pluginmanager.has_plugin("rmq_style"):
        config.pluginmanager.import_plugin("rmq_style.pytest_plugin")
    full = config.args_source is pytest.Config.ArgsSource.TESTPATHS
    cov = config.pluginmanager.get_plugin("_cov")  # pytest-cov's, holding the options it started with
    if cov is not None and (not full or config.option.keyword or config.option.markexpr):
        cov.options.cov_fail_under = None
