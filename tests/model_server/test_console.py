"""The operator's console (/ui) and the API page (/docs) in a real headless Chromium
(Debian's, driven by selenium; nothing downloaded): the page shows the served model
and the registry, the try-a-user box shows what /v1/recommend answers, and a
rollback without the admin token is refused; before the first version, it says the
server answers from trending. A screenshot is kept as an artefact
(.test-artifacts/console.png)."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.scenarios.models import publish
from bench.scenarios.users import apply, events_for
from devtools.processes import ServiceProcess
from streamrec import registry
from tests.model_server.conftest import Served

pytestmark = pytest.mark.integration

ARTIFACTS = Path(__file__).resolve().parents[2] / ".test-artifacts"
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture
def browser() -> Iterator[object]:
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("Debian's chromium and chromium-driver are not installed (make binaries)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--window-size=1400,1000"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_the_console_shows_the_model_a_users_answer_and_refuses_a_rollback_without_token(
    served: Served, browser: object, tmp_path: Path
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    second = publish(served.models, served.root, parent=served.first.version)
    asyncio.run(apply(served.settings, events_for("ada", served.items[:5])))
    settings = served.settings
    with ServiceProcess(settings, ["serve"], tmp_path / "serve.log", settings.serve_port):
        url = f"http://127.0.0.1:{settings.serve_port}"
        wait = WebDriverWait(browser, 20)
        browser.get(f"{url}/ui")
        wait.until(lambda d: d.find_element(By.ID, "model-version").text == second.version)

        # The page redraws itself every 2 s: each read and click is retried on a
        # redrawn element.
        def versions(d: WebDriver) -> list[str | None] | None:
            try:
                rows = d.find_elements(By.CSS_SELECTOR, "#versions tr")
                return [r.get_attribute("data-version") for r in rows] or None
            except StaleElementReferenceException:
                return None

        assert wait.until(versions) == [second.version, served.first.version]

        browser.find_element(By.ID, "user-input").send_keys("ada")
        browser.find_element(By.ID, "user-go").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#recommendations li[data-item]"))
        shown = [
            li.get_attribute("data-item")
            for li in browser.find_elements(By.CSS_SELECTOR, "#recommendations li[data-item]")
        ]
        asked = httpx.post(f"{url}/v1/recommend", json={"user_id": "ada", "k": 10}).json()
        assert shown == [i["item_id"] for i in asked["items"]]
        history = browser.find_elements(By.CSS_SELECTOR, "#history li")
        assert [li.text.split(" ")[0] for li in history] == served.items[:5]
        wait.until(lambda d: d.find_element(By.ID, "live-rate").text not in ("", "…"))

        def click_rollback(d: WebDriver) -> bool:
            row = f'#versions tr[data-version="{served.first.version}"] button.rollback'
            try:
                d.find_element(By.CSS_SELECTOR, row).click()
            except StaleElementReferenceException:
                return False
            return True

        wait.until(click_rollback)
        wait.until(lambda d: "refused (401" in d.find_element(By.ID, "rollback-status").text)
        assert registry.current_version(served.root) == second.version
        ARTIFACTS.mkdir(exist_ok=True)
        browser.execute_script("window.scrollTo(0, 0)")
        browser.save_screenshot(str(ARTIFACTS / "console.png"))

        browser.get(f"{url}/docs")
        wait.until(lambda d: "streamrec model server" in d.find_element(By.TAG_NAME, "body").text)
        assert "/v1/events" in browser.find_element(By.TAG_NAME, "body").text


def test_before_the_first_version_the_console_says_the_server_answers_from_trending(
    served: Served, browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    settings = served.settings.model_copy(
        update={"registry": tmp_path / "empty-registry", "serve_wait_for_model": True}
    )
    with ServiceProcess(settings, ["serve"], tmp_path / "serve.log", settings.serve_port):
        browser.get(f"http://127.0.0.1:{settings.serve_port}/ui")
        wait = WebDriverWait(browser, 20)
        wait.until(lambda d: d.find_element(By.ID, "refreshed").text.startswith("updated"))
        assert "answering from trending" in browser.find_element(By.ID, "model-version").text
        browser.find_element(By.ID, "user-input").send_keys("nobody")
        browser.find_element(By.ID, "user-go").click()
        status = "no model yet, fallback: trending"
        wait.until(lambda d: d.find_element(By.ID, "user-status").text == status)
