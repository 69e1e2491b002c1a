"""The web console in headless Chromium (Debian's chromium and chromium-driver, driven by selenium).

Pages render with seeded data in every state, the live part refreshes by
itself (HTMX), a dead-letter replay clicked in the page reaches the handler,
and an offset reset is confirmed and applied. RMQ_SCREENSHOTS=1 writes PNGs of
the main pages to docs/console/.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rmq_style import Admin, Message, Producer
from rmq_style.testing import free_port
from tests.consolekit import seeded_console_data, wait_for

pytestmark = pytest.mark.browser

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip(
        "chromium or chromedriver missing: apt-get install chromium chromium-driver (.ci/run does)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

TOKEN = "browser-token"
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "console"
FLAGS = [
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
    "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--window-size=1400,900",
]  # fmt: skip


@pytest.fixture
def browser(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    monkeypatch.setenv("SE_OFFLINE", "1")  # selenium-manager must never download a browser or driver
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="rmq-chromium-") as profile:
        options.add_argument(f"--user-data-dir={profile}")
        driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
        try:
            yield driver
        finally:
            driver.quit()


@pytest.fixture
def served(real_url: str) -> Iterator[tuple[str, Any]]:
    """The seeded data, and the console served by uvicorn in a thread (with a token) on a free port."""
    import uvicorn

    from rmq_style.console import create_console

    with seeded_console_data(real_url) as seeded:
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(
                create_console(real_url, token=TOKEN, refresh_s=0.5), port=port, log_level="warning"
            )
        )
        thread = threading.Thread(target=server.run, name="console-uvicorn", daemon=True)
        thread.start()
        wait_for(lambda: server.started, "uvicorn serves the console")
        try:
            yield f"http://127.0.0.1:{port}", seeded
        finally:
            server.should_exit = True
            thread.join(10)


def shoot(driver: Any, name: str) -> None:
    if os.environ.get("RMQ_SCREENSHOTS"):
        SHOTS.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(SHOTS / f"{name}.png"))


def text_of(driver: Any, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def test_pages_live_refresh_replay_and_reset_in_chromium(browser: Any, served: tuple[str, Any]) -> None:
    base, seeded = served
    wait = WebDriverWait(browser, 15)
    browser.get(base + "/")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, 'tr[data-topic="orders"]'))
    # the live part (HTMX, every 0.5 s) shows new messages without a reload
    with Producer(seeded.url) as producer:
        producer.send_batch([Message("events", n) for n in range(3)])
    wait.until(lambda d: text_of(d, 'tr[data-topic="events"] td.max') == "9")
    wait.until(lambda d: text_of(d, 'tr[data-topic="events"] td.rate') != "…")
    shoot(browser, "topics")

    browser.get(base + "/groups")
    row = 'tr[data-group="{}"] td.{}'
    wait.until(lambda d: text_of(d, row.format("reports", "lag")) == "8")
    assert text_of(browser, row.format("audit", "retrying")) == "1"
    assert text_of(browser, row.format("billing", "dead")) == "1"
    assert text_of(browser, row.format("shipping", "held")) == "1"
    shoot(browser, "groups")

    browser.get(base + "/groups/shipping")
    wait.until(lambda d: "carrier down" in text_of(d, "#progress"))
    shoot(browser, "group")

    browser.get(base + "/groups/billing/dlq")
    reason = text_of(browser, "#dead td.reason")
    assert "<em>failed</em>" in reason  # shown as text, not markup
    assert "<script>alert('x')</script>" in text_of(browser, "#dead pre.body")
    shoot(browser, "dead-letters")
    seeded.failing.clear()  # the fix is deployed: replay the dead letter from the page
    form = browser.find_element(By.CSS_SELECTOR, "form.replay-one")
    form.find_element(By.NAME, "token").send_keys(TOKEN)
    form.find_element(By.NAME, "confirm").click()
    form.find_element(By.CSS_SELECTOR, "button").click()
    wait.until(lambda d: text_of(d, "#outcome") == "1 dead letter(s) replayed")
    wait_for(lambda: seeded.billed.count((3, 0)) == 2, "the replayed message reaches the handler")

    browser.get(base + "/groups/reports")
    wait.until(lambda d: text_of(d, "b.total-lag") == "8")
    form = browser.find_element(By.ID, "reset-form")
    form.find_element(By.CSS_SELECTOR, 'input[name="to"][value="last"]').click()
    form.find_element(By.NAME, "token").send_keys(TOKEN)
    confirm = form.find_element(By.NAME, "confirm")
    # the browser refuses to submit before the confirmation box is ticked (required)
    assert confirm.get_property("validity")["valueMissing"] is True
    confirm.click()
    form.find_element(By.ID, "reset-submit").click()
    wait.until(lambda d: "events:1" in text_of(d, "#lines"))
    with Admin(seeded.url) as admin:
        assert sum(r.progress.lag for r in admin.progress("reports")) == 0

    browser.get(base + f"/messages?topic=orders&msg_id={seeded.hostile_id}")
    wait.until(lambda d: "1 message(s)" in d.page_source)
    assert "<b>bold</b>" in text_of(browser, "pre.body")
    shoot(browser, "message")
    # a traced message shows its journey (docs/trace.md) under its fields
    with Admin(seeded.url) as admin:
        steps = lambda: [s.group for t in admin.trace(seeded.traced_id) for s in t.steps]  # noqa: E731
        wait_for(lambda: "billing" in steps(), "billing recorded its delivery of the traced message")
    browser.get(base + f"/messages?topic=orders&msg_id={seeded.traced_id}")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "ol.trace li"))
    journey = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "ol.trace li")]
    assert "sent by" in journey[0] and any("[billing] delivery 1 to" in line for line in journey)
    shoot(browser, "message-trace")
