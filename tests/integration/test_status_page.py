"""The status page at ``/ui/`` in headless Chromium (Debian's ``chromium`` and its
``chromedriver``), against a real API with stand-in agents.

Chromium is driven through chromedriver (WebDriver, with selenium); every browser step runs
in a thread, since the API under test serves from this test's event loop. The screenshot of
the admin's view is kept as an artifact: its path is printed (``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from bismuth_core.layout import ContainerStatus
from tests.support.apiserver import bearer, definition

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT = 15.0  # seconds a condition may take to show on the page (it refreshes every 3 s)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    """Headless Chromium with a fresh profile, talking to nothing but the API under test."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def text_of(driver: WebDriver, element_id: str) -> str:
    element = driver.find_element(By.ID, element_id)
    return str(element.text) if element.is_displayed() else ""


def wait_for(driver: WebDriver, what: str, condition: Callable[[WebDriver], bool]) -> None:
    WebDriverWait(driver, WAIT, poll_frequency=0.1).until(condition, f"page never showed {what}")


def sign_in(driver: WebDriver, token: str) -> None:
    wait_for(driver, "the token form", lambda d: d.find_element(By.ID, "login").is_displayed())
    field = driver.find_element(By.ID, "token")
    field.clear()
    field.send_keys(token)
    driver.find_element(By.ID, "submit").click()


async def in_browser(step: Callable[[], object]) -> None:
    await asyncio.to_thread(step)


async def test_status_page_shows_nodes_functions_and_failures(
    browser, api, standins, http, tmp_path
):
    healthy = await standins.add()
    failing = await standins.add(status=ContainerStatus.FAILED)
    await api.sees_nodes(healthy.ip, failing.ip)  # so the two replicas go one to each
    body = definition(max_instances=2, routes=[{"hostname": "shop.example"}])
    async with http.post(f"{api.url}/function", json=body) as resp:
        fid = (await resp.json())["id"]
    _, acme = await api.tenant("acme")
    theirs = definition(routes=[{"hostname": "acme.example"}])
    async with http.post(f"{api.url}/function", json=theirs, headers=bearer(acme)) as resp:
        assert resp.status == 200
    async with http.get(f"{api.url}/function/{fid}") as resp:
        replicas = {
            b["backend"]["ip"]: b["backend"]["container_id"]
            for b in (await resp.json())["backends"]
        }
    screenshot = tmp_path / "status-page.png"

    def wrong_token_is_refused() -> None:
        browser.get(f"{api.url}/ui/")
        sign_in(browser, "bth_0123456789abcdef_" + "A" * 43)
        wait_for(browser, "the refusal", lambda d: "refused this token" in text_of(d, "error"))
        assert "unknown or revoked token" in text_of(browser, "error")
        assert browser.find_element(By.ID, "login").is_displayed()
        assert not browser.find_element(By.ID, "status").is_displayed()

    def admin_sees_everything() -> None:
        sign_in(browser, api.admin_token)
        wait_for(browser, "the function", lambda d: "shop.example" in text_of(d, "functions"))
        assert text_of(browser, "error") == ""
        functions = text_of(browser, "functions")
        assert fid in functions and "1/2" in functions and "1 Failed, 1 Running" in functions
        assert f"{healthy.ip}: Running" in functions and f"{failing.ip}: Failed" in functions
        assert "acme.example" in functions  # an admin sees every tenant's
        nodes = browser.find_element(By.ID, "nodes").text.splitlines()
        assert any(line.startswith(f"{healthy.ip} alive enabled standin") for line in nodes)
        assert any("4 " in line and "8Gi" in line for line in nodes)  # capacity
        failures = text_of(browser, "failures")
        assert replicas[failing.ip] in failures and "shop.example" in failures
        assert replicas[healthy.ip] not in failures
        assert "admin" in text_of(browser, "who")
        assert browser.save_screenshot(str(screenshot))

    await in_browser(wrong_token_is_refused)
    await in_browser(admin_sees_everything)
    print(f"status page screenshot: {screenshot}")
    assert screenshot.stat().st_size > 10_000

    await healthy.stop()  # the page follows on its own: the node's agent is gone

    def node_loss_shows() -> None:
        wait_for(
            browser,
            "the lost node",
            lambda d: any(
                line.startswith(f"{healthy.ip} gone")
                for line in d.find_element(By.ID, "nodes").text.splitlines()
            ),
        )

    def tenant_sees_its_own() -> None:
        browser.find_element(By.ID, "signout").click()
        sign_in(browser, acme)
        wait_for(browser, "the tenant's function", lambda d: "acme" in text_of(d, "functions"))
        assert "shop.example" not in text_of(browser, "functions")
        assert not browser.find_element(By.ID, "nodes-section").is_displayed()
        assert "shop.example" not in text_of(browser, "failures")
        assert "tenant" in text_of(browser, "who")

    await in_browser(node_loss_shows)
    await in_browser(tenant_sees_its_own)


async def test_page_needs_no_token_but_its_data_does(api, http):
    async with http.get(f"{api.url}/ui", headers={"Authorization": ""}) as resp:
        page = await resp.text()
        assert resp.status == 200 and resp.url.path == "/ui/"
        assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
        assert '<script src="app.js"' in page and "http" not in page.split("<body>")[0]
    for asset, kind in (("app.js", "text/javascript"), ("style.css", "text/css")):
        async with http.get(f"{api.url}/ui/{asset}") as resp:
            assert resp.status == 200 and resp.content_type == kind
    async with http.get(f"{api.url}/status", headers={"Authorization": ""}) as resp:
        assert resp.status == 401
