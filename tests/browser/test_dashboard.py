"""The dashboard at / in headless Chromium, against the running service and the simulator.

Set UPDATE_SCREENSHOT=1 to rewrite docs/dashboard.png (1280x800) while the tests run.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from devtools.stack import free_port
from pipeline.core.settings import Settings
from tests.api_harness import serve
from tests.browser.conftest import Browser, StartService

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "dashboard.png"
KEY = "dashboard-key"
PRICE = re.compile(r"^\d{1,3}(,\d{3})*\.\d{2,}$")
RATE = re.compile(r"^\d+(\.\d)?$")
PRICE_WAIT_S = 15.0
UI_WAIT_S = 10.0

# Everything the tests need to know about the page, read at once (rows are replaced live).
READ_TABLE = """
return Array.from(document.querySelectorAll('#symbols-body tr')).map((row) => {
  const price = row.querySelector('.price');
  const points = row.querySelector('polyline').getAttribute('points');
  return {
    symbol: row.dataset.symbol,
    price: price.textContent,
    priced: !('empty' in price.dataset),
    points: points.split(' ').filter(Boolean).length,
  };
});
"""


def _table(driver: WebDriver) -> dict[str, dict[str, Any]]:
    return {row["symbol"]: row for row in driver.execute_script(READ_TABLE)}


def _text(driver: WebDriver, element_id: str) -> str:
    text: str = driver.execute_script(
        "return document.getElementById(arguments[0]).textContent", element_id
    )
    return text.strip()


def _until(
    driver: WebDriver, condition: Callable[[WebDriver], Any], timeout: float, what: str
) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        condition, message=f"not within {timeout:.0f} s: {what}"
    )


def _priced(symbol: str, min_points: int = 1) -> Callable[[WebDriver], dict[str, Any] | None]:
    def check(driver: WebDriver) -> dict[str, Any] | None:
        row = _table(driver).get(symbol)
        if row and row["priced"] and row["points"] >= min_points:
            return row
        return None

    return check


def _message(prefix: str) -> Callable[[WebDriver], str | None]:
    def check(driver: WebDriver) -> str | None:
        text = _text(driver, "form-message")
        return text if text.startswith(prefix) else None

    return check


def _submit_symbol(driver: WebDriver, symbol: str) -> None:
    field = driver.find_element(By.ID, "symbol-input")
    field.clear()
    field.send_keys(symbol)
    driver.find_element(By.ID, "add-button").click()


def _console_errors(driver: WebDriver, expected_statuses: tuple[int, ...] = ()) -> list[str]:
    """SEVERE console entries, except failed requests whose status the test caused on purpose
    (Chromium logs every 4xx/5xx answer to fetch() as a network error)."""
    unexpected = []
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    for entry in entries:
        if entry["level"] != "SEVERE":
            continue
        message = entry["message"]
        if entry.get("source") == "network" and any(
            f"status of {status} " in message for status in expected_statuses
        ):
            continue
        unexpected.append(message)
    return unexpected


def _tracked(url: str) -> list[str]:
    return [s["symbol"] for s in httpx.get(f"{url}/symbols").json()["symbols"]]


def _save_screenshot(driver: WebDriver) -> None:
    if os.environ.get("UPDATE_SCREENSHOT") == "1":
        driver.execute_script("window.scrollTo(0, 0); document.activeElement.blur();")
        ActionChains(driver).move_to_element(driver.find_element(By.TAG_NAME, "h1")).perform()
        assert driver.save_screenshot(str(SCREENSHOT)), f"could not write {SCREENSHOT}"


async def test_the_page_is_served_at_root_and_dashboard_and_stays_out_of_the_openapi_schema(
    make_settings: Callable[..., Settings],
) -> None:
    async with serve(make_settings(PIPELINE_ROLES="none")) as client:
        root = await client.get("/")
        dashboard = await client.get("/dashboard")
        script = await client.get("/static/dashboard.js")
        style = await client.get("/static/dashboard.css")
        unknown = await client.get("/static/../main.py")
        other = await client.get("/static/secrets.txt")
        schema = (await client.get("/openapi.json")).json()
    for page in (root, dashboard):
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert '<script src="/static/dashboard.js" defer></script>' in page.text
    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")
    assert unknown.status_code == 404
    assert other.status_code == 404
    assert other.json() == {"detail": "Not Found"}
    paths = set(schema["paths"])
    assert not paths & {"/", "/dashboard", "/static/{name}"}
    assert "/symbols" in paths


def test_the_dashboard_shows_live_prices_rates_lag_and_connections_without_console_errors(
    browser: Browser, simulator: str, start_service: StartService
) -> None:
    url = start_service(
        PIPELINE_ROLES="producer,consumer",
        SYMBOLS="BTCUSDT,ETHUSDT",
        BINANCE_WS_URL=f"ws://{simulator}",
        BINANCE_REST_URL=f"http://{simulator}",
    )
    driver = browser.open(f"{url}/")
    assert driver.title == "crypto-streaming-pipeline · dashboard"

    btc = _until(driver, _priced("BTCUSDT"), PRICE_WAIT_S, "a BTCUSDT price on the page")
    assert PRICE.match(btc["price"]), btc
    _until(driver, _priced("BTCUSDT", min_points=10), UI_WAIT_S, "a BTCUSDT sparkline")
    _until(driver, _priced("ETHUSDT", min_points=10), UI_WAIT_S, "an ETHUSDT price and sparkline")
    assert list(_table(driver)) == ["BTCUSDT", "ETHUSDT"]

    def flowing(driver: WebDriver) -> dict[str, str] | None:
        rates = {name: _text(driver, f"rate-{name}") for name in ("received", "produced", "stored")}
        numeric = all(RATE.match(rate) for rate in rates.values())
        return rates if numeric and all(float(rate) > 0 for rate in rates.values()) else None

    rates = _until(driver, flowing, UI_WAIT_S, "msgs/s in, produced and stored above 0")
    assert all(float(rate) < 1000 for rate in rates.values()), rates
    lag = _until(driver, lambda d: re.fullmatch(r"[\d,]+", _text(d, "lag")), UI_WAIT_S, "a lag")
    assert lag is not None
    assert _text(driver, "dlq") == "0"
    badges = driver.find_elements(By.CSS_SELECTOR, "#sources li[data-state='connected'] .badge")
    assert badges and badges[0].text.lower() == "connected"
    assert _text(driver, "connection-text").startswith("live")

    # Headers and labels: the table and the form are usable with a screen reader.
    headers = [
        th.get_attribute("textContent") for th in driver.find_elements(By.CSS_SELECTOR, "thead th")
    ]
    assert headers[:3] == ["Symbol", "Price", "Change"]
    label = driver.find_element(By.CSS_SELECTOR, "label[for='symbol-input']")
    assert label.text == "Add symbol"
    remove = driver.find_element(By.CSS_SELECTOR, "tr[data-symbol='BTCUSDT'] button.remove")
    assert remove.get_attribute("aria-label") == "Remove BTCUSDT"

    assert _console_errors(driver) == []


# /prices requests the page made so far (it asks only while its stream is not up).
PRICES_REQUESTS = """
return performance.getEntriesByType('resource')
  .filter((entry) => new URL(entry.name).pathname === '/prices').length;
"""


def test_prices_change_without_a_reload_as_the_stream_pushes_them(
    browser: Browser, simulator: str, start_service: StartService
) -> None:
    url = start_service(
        PIPELINE_ROLES="producer,consumer",
        SYMBOLS="BTCUSDT",
        BINANCE_WS_URL=f"ws://{simulator}",
        BINANCE_REST_URL=f"http://{simulator}",
    )
    driver = browser.open(f"{url}/")
    _until(driver, _priced("BTCUSDT"), PRICE_WAIT_S, "a BTCUSDT price on the page")
    driver.execute_script("window.sameDocument = true;")

    def polling_stopped(driver: WebDriver) -> int | None:
        before: int = driver.execute_script(PRICES_REQUESTS)
        driver.execute_script("return new Promise((done) => setTimeout(done, 2000));")
        after: int = driver.execute_script(PRICES_REQUESTS)
        return after if after == before else None

    polled = _until(driver, polling_stopped, UI_WAIT_S * 2, "the page to stop polling /prices")
    shown: set[str] = set()

    def prices_moving(driver: WebDriver) -> bool:
        shown.add(_table(driver)["BTCUSDT"]["price"])
        return len(shown) >= 4

    _until(driver, prices_moving, PRICE_WAIT_S, "four different BTCUSDT prices")
    assert all(PRICE.match(price) for price in shown), shown
    assert driver.execute_script("return window.sameDocument === true") is True  # no reload
    assert driver.execute_script(PRICES_REQUESTS) == polled  # pushed, not polled
    assert _console_errors(driver) == []


def test_symbols_are_added_and_removed_through_the_page_and_a_bad_name_shows_the_422_detail(
    browser: Browser, simulator: str, start_service: StartService
) -> None:
    url = start_service(
        PIPELINE_ROLES="producer,consumer",
        SYMBOLS="BTCUSDT,ETHUSDT,SOLUSDT",
        BINANCE_WS_URL=f"ws://{simulator}",
        BINANCE_REST_URL=f"http://{simulator}",
    )
    driver = browser.open(f"{url}/dashboard")
    _until(driver, _priced("BTCUSDT"), PRICE_WAIT_S, "a BTCUSDT price on the page")

    bad = "BTC-USDT"
    refused = httpx.post(f"{url}/symbols", json={"symbol": bad})
    assert refused.status_code == 422
    _submit_symbol(driver, bad)
    shown = _until(driver, _message("422:"), UI_WAIT_S, "the 422 detail under the form")
    assert refused.json()["detail"][0]["msg"] in shown
    assert "ADAUSDT" not in _table(driver)

    _submit_symbol(driver, "adausdt")
    added = _until(driver, _message("ADAUSDT is tracked"), UI_WAIT_S, "the symbol added")
    assert added == "ADAUSDT is tracked; producers subscribe within 2 s"
    assert driver.find_element(By.ID, "symbol-input").get_attribute("value") == ""
    ada = _until(driver, _priced("ADAUSDT"), PRICE_WAIT_S, "an ADAUSDT price on the page")
    assert PRICE.match(ada["price"]), ada
    assert list(_table(driver)) == ["ADAUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT"]

    if os.environ.get("UPDATE_SCREENSHOT") == "1":  # full sparklines make a better picture
        for symbol in _table(driver):
            _until(driver, _priced(symbol, min_points=60), UI_WAIT_S, f"{symbol} sparkline full")
        _until(driver, lambda d: RATE.match(_text(d, "rate-stored")), UI_WAIT_S, "rates")
        _save_screenshot(driver)

    driver.find_element(By.CSS_SELECTOR, "tr[data-symbol='ADAUSDT'] button.remove").click()
    _until(driver, lambda d: "ADAUSDT" not in _table(d), UI_WAIT_S, "the ADAUSDT row removed")
    assert _text(driver, "form-message").startswith("ADAUSDT removed")
    assert "ADAUSDT" not in _tracked(url)
    assert list(_table(driver)) == ["BTCUSDT", "ETHUSDT", "SOLUSDT"]

    assert _console_errors(driver, expected_statuses=(422,)) == []


def test_with_api_key_set_changes_send_the_key_saved_on_the_page_and_lag_without_kafka_is_unavailable(
    browser: Browser, start_service: StartService
) -> None:
    url = start_service(
        PIPELINE_ROLES="none",
        API_KEY=KEY,
        KAFKA_BOOTSTRAP_SERVERS=f"127.0.0.1:{free_port()}",  # nothing listens: lag is 503
    )
    driver = browser.open(f"{url}/")
    _until(driver, lambda d: _text(d, "symbols-count") == "0 symbols", UI_WAIT_S, "the table")
    assert driver.find_element(By.ID, "symbols-empty").is_displayed()
    assert _text(driver, "rate-received") == "off"
    assert _text(driver, "sources-empty") == "the producer role does not run here"

    _submit_symbol(driver, "ADAUSDT")
    refused = _until(driver, _message("401:"), UI_WAIT_S, "the 401 detail under the form")
    assert refused == "401: missing or invalid X-API-Key header (enter the API key)"
    assert _tracked(url) == []

    driver.find_element(By.ID, "key-input").send_keys(KEY)
    driver.find_element(By.ID, "key-save").click()
    assert _text(driver, "key-status") == "A key is stored for this tab and sent with changes."
    assert driver.find_element(By.ID, "key-input").get_attribute("value") == ""
    assert KEY not in driver.find_element(By.TAG_NAME, "body").text

    _submit_symbol(driver, "ADAUSDT")
    _until(driver, _message("ADAUSDT is tracked"), UI_WAIT_S, "the symbol added with the key")
    _until(driver, lambda d: "ADAUSDT" in _table(d), UI_WAIT_S, "the ADAUSDT row")
    assert _table(driver)["ADAUSDT"]["price"] == "waiting for trades…"  # no pipeline here
    assert _tracked(url) == ["ADAUSDT"]
    driver.find_element(By.CSS_SELECTOR, "tr[data-symbol='ADAUSDT'] button.remove").click()
    _until(driver, lambda d: _table(d) == {}, UI_WAIT_S, "the ADAUSDT row removed")
    assert _tracked(url) == []

    _until(driver, lambda d: _text(d, "lag") == "unavailable", UI_WAIT_S, "lag unavailable")
    assert _text(driver, "lag-hint") == "Kafka did not answer"

    driver.find_element(By.ID, "key-clear").click()
    assert _text(driver, "key-status") == "No key stored."
    assert _console_errors(driver, expected_statuses=(401, 503)) == []
