"""History jobs on the dashboard: started from the page, shown with a progress bar to done."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.browser.conftest import Browser, StartService

pytestmark = pytest.mark.integration

JOB_WAIT_S = 30.0

READ_JOBS = """
return Array.from(document.querySelectorAll('#jobs-body tr')).map((row) => {
  const bar = row.querySelector('progress');
  return {
    id: Number(row.dataset.id),
    state: row.dataset.state,
    title: row.querySelector('th').textContent,
    progress: bar.hasAttribute('value') ? bar.value : null,
    cancellable: row.querySelector('button') !== null,
  };
});
"""


def _jobs(driver: WebDriver) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = driver.execute_script(READ_JOBS)
    return jobs


def _until(driver: WebDriver, condition: Any, timeout: float, what: str) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        condition, message=f"not within {timeout:.0f} s: {what}"
    )


def test_a_history_job_is_started_from_the_page_and_its_bar_fills_to_done(
    browser: Browser, simulator: str, start_service: StartService
) -> None:
    url = start_service(
        PIPELINE_ROLES="producer,consumer",
        SYMBOLS="BTCUSDT",
        BINANCE_WS_URL=f"ws://{simulator}",
        BINANCE_REST_URL=f"http://{simulator}",
    )
    driver = browser.open(f"{url}/")
    _until(
        driver,
        lambda d: d.find_element(By.ID, "jobs-empty").is_displayed(),
        JOB_WAIT_S,
        "the empty jobs panel",
    )
    field = driver.find_element(By.ID, "job-symbol")
    field.send_keys("ethusdt")
    driver.find_element(By.ID, "job-button").click()  # the last 24 hours: the simulator's tape

    def queued(d: WebDriver) -> str | None:
        text: str = d.find_element(By.ID, "job-message").text
        return text if text.startswith("Job #") else None

    message = _until(driver, queued, JOB_WAIT_S, "the job queued")
    assert message.startswith("Job #1 queued: ETHUSDT")

    def done(d: WebDriver) -> dict[str, Any] | None:
        jobs = _jobs(d)
        return jobs[0] if jobs and jobs[0]["state"] == "done" else None

    job = _until(driver, done, JOB_WAIT_S, "the job done on the page")
    assert job["title"] == "#1 ETHUSDT"
    assert job["progress"] == 1
    assert not job["cancellable"]
    stored = httpx.get(f"{url}/backfills/1").json()
    assert stored["state"] == "done" and stored["stored"] == stored["fetched"]
    headers = [
        th.get_attribute("textContent")
        for th in driver.find_elements(By.CSS_SELECTOR, "#jobs-table thead th")
    ]
    assert headers[:4] == ["Job", "Window (UTC)", "State", "Progress"]
