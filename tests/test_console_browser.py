"""The console in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium), over
real processes: receiver, worker, console and the gateway emulator. Without the browser these tests fail.

Set CONSOLE_SCREENSHOT_DIR to also keep the screenshots (docs/ holds the current ones).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select, WebDriverWait

from tests.builders import example_event, signed_delivery
from tests.console_seed import TOKEN
from tests.processes import Proc, stack_env, started_receiver, wait_until, worker_process
from tests.redis_server import RedisServer, free_port
from tests.stubserver import StubServer

pytestmark = pytest.mark.browser

WAIT_S = 20


def _browser() -> webdriver.Chrome:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.fail("chromium and chromedriver are needed (apt-get install chromium chromium-driver; .ci/run does)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1360,1000", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    try:
        return webdriver.Chrome(service=Service(executable_path=driver), options=options)
    except WebDriverException as exc:
        pytest.fail(f"chromium did not start: {exc.msg}")


@pytest.fixture(scope="module")
def stack(redis_server: RedisServer, stub_server: StubServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Receiver, worker and console processes on one clean Redis: their base URLs."""
    redis_server.client().flushall()
    tmp = tmp_path_factory.mktemp("console-browser")
    env = stack_env(redis_server.url, stub_server.base_url, tmp / "artifacts", RUNINFRA_CONSOLE_TOKEN=TOKEN)
    port = free_port()
    console = Proc(["console", "--port", str(port)], env, tmp / "console.log")
    console_url = f"http://127.0.0.1:{port}"
    try:
        with started_receiver(env, tmp / "receiver.log") as (receiver_url, _), \
                worker_process(env, tmp / "worker.log"):
            wait_until(lambda: _up(console_url), timeout=20, what="console")
            yield {"receiver": receiver_url, "console": console_url}
    finally:
        console.terminate()


def _up(url: str) -> bool:
    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def browser(stack: dict[str, str]) -> Iterator[webdriver.Chrome]:
    driver = _browser()
    try:
        driver.get(f"{stack['console']}/login#token={TOKEN}")  # as `dev` prints it
        WebDriverWait(driver, WAIT_S).until(lambda d: d.find_elements(By.ID, "deliveries-chart"))
        yield driver
    finally:
        driver.quit()


def deliver(stack: dict[str, str], event: dict[str, Any]) -> None:
    body, headers = signed_delivery(event)
    answer = httpx.post(stack["receiver"] + "/webhooks/runinfra", content=body, headers=headers, timeout=30)
    assert answer.status_code in (200, 202), answer.text


def state(stack: dict[str, str], event_id: str) -> str:
    answer = httpx.get(f"{stack['console']}/api/v1/events/{event_id}", headers={"Authorization": f"Bearer {TOKEN}"},
                       timeout=5)
    return str(answer.json().get("state")) if answer.status_code == 200 else ""


def screenshot(driver: webdriver.Chrome, tmp_path: Path, name: str) -> None:
    path = tmp_path / f"{name}.png"
    assert driver.save_screenshot(str(path))
    assert path.stat().st_size > 10_000
    keep = os.environ.get("CONSOLE_SCREENSHOT_DIR")
    if keep:
        shutil.copy(path, Path(keep) / path.name)


def test_browser_signs_in_sees_the_chart_filters_by_state_and_type_and_opens_an_event(
        stack: dict[str, str], browser: webdriver.Chrome, tmp_path: Path) -> None:
    """Sign in from the printed URL, see counts and the SVG chart, filter events (htmx), open one."""
    events = [example_event("deployment.ready"), example_event("deployment.created"),
              example_event("transcription.completed")]
    for e in events:
        deliver(stack, e)
    wait_until(lambda: all(state(stack, e["id"]) == "succeeded" for e in events), timeout=WAIT_S,
               what="the three events to succeed")
    browser.refresh()
    bars = browser.find_elements(By.CSS_SELECTOR, "#deliveries-chart rect.bar")
    assert bars, "the chart draws this minute's deliveries"
    assert int(browser.find_element(By.ID, "count-succeeded").text) >= 3
    screenshot(browser, tmp_path, "console-overview")

    browser.find_element(By.LINK_TEXT, "Events").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#events-table .event-row"))
    Select(browser.find_element(By.ID, "filter-state")).select_by_value("succeeded")
    WebDriverWait(browser, WAIT_S).until(lambda d: "state=succeeded" in d.current_url)
    Select(browser.find_element(By.ID, "filter-type")).select_by_value("deployment.created")
    WebDriverWait(browser, WAIT_S).until(lambda d: "type=deployment.created" in d.current_url)
    WebDriverWait(browser, WAIT_S).until(lambda d: {
        (r.get_attribute("data-state"), r.get_attribute("data-type"))
        for r in d.find_elements(By.CSS_SELECTOR, "#events-table .event-row")} == {("succeeded", "deployment.created")})
    ids = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#events-table .event-link")]
    assert events[1]["id"] in ids and events[0]["id"] not in ids
    Select(browser.find_element(By.ID, "filter-type")).select_by_value("")
    WebDriverWait(browser, WAIT_S).until(lambda d: "type=deployment.created" not in d.current_url)
    screenshot(browser, tmp_path, "console-events")

    browser.find_element(By.LINK_TEXT, events[2]["id"]).click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.ID, "envelope"))
    assert browser.find_element(By.ID, "event-state").text == "succeeded"
    assert events[2]["id"] in browser.find_element(By.ID, "envelope").text
    assert browser.find_element(By.ID, "signature-header").text.startswith("t=")
    assert browser.find_elements(By.CSS_SELECTOR, "#gateway-calls tbody tr"), "the speech call with its key"
    screenshot(browser, tmp_path, "console-event")


def test_browser_replays_a_dead_lettered_event_and_sees_it_succeed(
        stack: dict[str, str], browser: webdriver.Chrome, stub_server: StubServer) -> None:
    """A 400 from the gateway parks the event; Replay on the dead-letters page; the worker then succeeds it."""
    stub_server.set_faults(route="/v1/audio/speech", script=[400])
    event = example_event("transcription.completed")
    deliver(stack, event)
    wait_until(lambda: state(stack, event["id"]) == "dead_lettered", timeout=WAIT_S, what="dead-lettered")
    browser.get(f"{stack['console']}/dead-letters")
    row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "#dead-table .event-row") if event["id"] in r.text)
    row.find_element(By.CSS_SELECTOR, "button.replay-one").click()
    WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.ID, "notice"))
    assert "replayed" in browser.find_element(By.ID, "notice").text

    def shows_succeeded(d: webdriver.Chrome) -> bool:
        d.refresh()
        return bool(d.find_element(By.ID, "event-state").text == "succeeded")

    WebDriverWait(browser, WAIT_S, poll_frequency=0.5).until(shows_succeeded)
    history = browser.find_element(By.ID, "history").text
    assert "dead_lettered" in history and "replayed" in history


def test_browser_runs_no_script_from_an_event_payload(stack: dict[str, str], browser: webdriver.Chrome) -> None:
    """<script> and <img onerror> in event data run nothing on the event and list pages; the text is shown."""
    hostile = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 2">'
    event = example_event("deployment.created")
    event["data"] = {**event["data"], "model": hostile, "status": "<b onmouseover=alert(1)>x</b>"}
    deliver(stack, event)
    wait_until(lambda: state(stack, event["id"]) != "", timeout=WAIT_S, what="stored")
    for path in (f"/events/{event['id']}", "/events", "/deployments"):
        browser.get(stack["console"] + path)
        WebDriverWait(browser, WAIT_S).until(lambda d: d.find_elements(By.TAG_NAME, "main"))
        assert browser.execute_script("return typeof window.__pwned") == "undefined", path
        assert not browser.find_elements(By.CSS_SELECTOR, "main img, main b"), path
    browser.get(f"{stack['console']}/events/{event['id']}")
    assert hostile in browser.find_element(By.ID, "envelope").text.replace('\\"', '"')
