"""The admin console at ``/admin`` driven in headless Chromium against a live ``stealproof serve``.

Selenium with Debian's ``chromium`` and ``chromium-driver``: both come from the same Debian build,
so the driver always speaks the browser's protocol version, and nothing is downloaded (no browser
build of its own, no driver manager). Skipped, with the reason, only when no browser or driver is
found. Runs on SQLite and, when 127.0.0.1:5432 answers, on PostgreSQL (the test id says which).

Set ``STEALPROOF_SCREENSHOT=PATH`` to save a screenshot of the page (docs/img/admin-console.png).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway_fixtures import (
    ADMIN_KEY,
    create_clients,
    digits_victim,
    random_digits,
    running,
    write_config,
)
from serve_db_fixtures import db_kind, db_url  # noqa: F401  (fixtures)
from stealproof.serve.db import repo
from stealproof.serve.db.base import utcnow
from stealproof.serve.db.engine import make_engine, make_sessionmaker

WAIT_S = 20.0  # every browser wait is bounded by this
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}

BROWSERS = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")
DRIVERS = ("/usr/bin/chromedriver", "chromedriver")

# mallory's seeded history: one request of 10 rows a minute for 50 minutes, more of them
# flagged as time goes on (the chart's rising flagged share)
HISTORY_MINUTES = 50
HISTORY_ROWS = 10


def _find(candidates: tuple[str, ...]) -> str | None:
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    return None


def _flagged_at(k: int) -> int:
    return min(HISTORY_ROWS, k // 4)


def seed_history(db: str, name: str) -> tuple[int, int, int]:
    """Backdated log rows + counters for ``name`` → (requests, rows, flagged rows)."""
    engine = make_engine(db)
    now = utcnow()
    try:
        with make_sessionmaker(engine).begin() as s:
            c = repo.lock_client(s, repo.require_client(s, name).id)
            for k in range(HISTORY_MINUTES):
                flagged = _flagged_at(k)
                actions = ["deceptive"] * flagged + ["normal"] * (HISTORY_ROWS - flagged)
                entry = repo.append_log(
                    s,
                    c.id,
                    "digits",
                    "1",
                    HISTORY_ROWS,
                    [f"{k:064x}"] * HISTORY_ROWS,
                    actions,
                    [0.1] * HISTORY_ROWS,
                    {},
                )
                entry.created_at = now - timedelta(minutes=HISTORY_MINUTES - k, seconds=-20)
                repo.charge(s, c, HISTORY_ROWS, flagged)
            s.flush()
    finally:
        engine.dispose()
    flagged_total = sum(_flagged_at(k) for k in range(HISTORY_MINUTES))
    return HISTORY_MINUTES, HISTORY_MINUTES * HISTORY_ROWS, flagged_total


def infer(url: str, key: str, n: int, seed: int = 0) -> httpx.Response:
    x = random_digits(n, seed=seed).numpy()
    inp = {"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
    return httpx.post(
        f"{url}/v2/models/digits/infer",
        json={"inputs": [inp]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


@pytest.fixture(scope="module")
def victim_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_victim(tmp_path_factory.mktemp("victim"))


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Chromium under the system chromedriver (skipped only when none is found)."""
    chromium, driver_path = _find(BROWSERS), _find(DRIVERS)
    if chromium is None or driver_path is None:
        missing = "chromium" if chromium is None else "chromedriver"
        pytest.skip(f"no chromium: {missing} not found (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # never let Selenium Manager download anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,1080",
        "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--no-first-run",
        "--disable-extensions",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(WAIT_S)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def _cells(driver: Any, name: str) -> dict[str, str]:
    """The texts of a client's row, read in one script (the page re-renders rows on refresh)."""
    cells: dict[str, str] = driver.execute_script(
        "const tds = document.querySelectorAll("
        '  `#clients tr[data-client="${arguments[0]}"] td[data-field]`);'
        "return Object.fromEntries([...tds].map((td) => [td.dataset.field, td.innerText.trim()]));",
        name,
    )
    return cells


def test_console_lists_clients_blocks_and_revokes(
    browser: Any,
    victim_path: Path,
    db_url: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    config = write_config(tmp_path, victim_path, db_url)
    keys = create_clients(db_url, "alice", "bob", "mallory")
    keys.update(create_clients(db_url, "carol", quota=500))
    h_requests, h_rows, h_flagged = seed_history(db_url, "mallory")
    wait = WebDriverWait(
        browser, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
    )

    def click(css: str) -> None:
        """Click the element ``css`` (again if the page re-rendered it in between: bounded)."""
        wait.until(lambda d: d.find_element(By.CSS_SELECTOR, css).click() is None)

    with running(config) as server:
        url = server.url
        for i in range(3):
            assert infer(url, keys["alice"], 4, seed=i).status_code == 200
        assert infer(url, keys["bob"], 2).status_code == 200
        assert infer(url, keys["mallory"], 5).status_code == 200

        # the page: no data without the key; the key goes in a form, never the URL
        page = httpx.get(f"{url}/admin", timeout=10)
        assert (
            page.status_code == 200
            and "script-src 'self'" in page.headers["content-security-policy"]
        )
        browser.get(f"{url}/admin")
        wait.until(ec.visibility_of_element_located((By.ID, "admin-key")))
        browser.find_element(By.ID, "admin-key").send_keys("not-the-admin-key")
        browser.find_element(By.ID, "login").click()
        wait.until(lambda d: "rejected" in d.find_element(By.ID, "status").text)
        assert browser.find_element(By.ID, "admin-key").is_displayed()
        assert not browser.find_elements(By.CSS_SELECTOR, "#clients tr[data-client]")
        browser.find_element(By.ID, "admin-key").send_keys(ADMIN_KEY)
        browser.find_element(By.ID, "login").click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#clients tr[data-client]")) == 4)
        assert ADMIN_KEY not in browser.current_url
        assert browser.execute_script("return sessionStorage.getItem('stealproof.adminKey')") == (
            ADMIN_KEY
        )

        names = [
            tr.get_attribute("data-client")
            for tr in browser.find_elements(By.CSS_SELECTOR, "#clients tr[data-client]")
        ]
        assert sorted(names) == ["alice", "bob", "carol", "mallory"]
        alice = _cells(browser, "alice")
        assert alice["rows_used"] == "12"
        assert alice["quota_rows"] == "unlimited"
        assert alice["flagged_share"] == "0.0 % (0)"
        assert alice["standing"] == "ok"
        assert alice["last_seen"] != "never"
        assert _cells(browser, "bob")["rows_used"] == "2"
        carol = _cells(browser, "carol")
        assert carol == {
            "name": "carol",
            "rows_used": "0",
            "quota_rows": "500",
            "flagged_share": "—",
            "standing": "ok",
            "last_seen": "never",
        }
        mallory = _cells(browser, "mallory")
        assert mallory["rows_used"] == str(h_rows + 5)
        share = 100 * h_flagged / (h_rows + 5)
        assert mallory["flagged_share"] == f"{share:.1f} % ({h_flagged})"

        # mallory's chart: the series endpoint's counts, drawn as SVG
        series = httpx.get(
            f"{url}/v1/admin/clients/mallory/series",
            params={"bucket": 60, "points": 60},
            headers=ADMIN,
            timeout=10,
        ).json()
        assert len(series["points"]) == 60 and not series["truncated"]
        assert sum(p["requests"] for p in series["points"]) == h_requests + 1
        assert sum(p["rows"] for p in series["points"]) == h_rows + 5
        assert sum(p["flagged_rows"] for p in series["points"]) == h_flagged
        shares = [p["flagged_share"] for p in series["points"] if p["flagged_share"] is not None]
        assert max(shares) == 1.0 and min(shares) == 0.0
        click('#clients tr[data-client="mallory"] .details')
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chart svg rect")) >= 40)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#chart svg circle")) >= 40
        assert browser.find_element(By.ID, "detail-name").text == "mallory"

        # block bob in the page → bob's next prediction request gets 403, alice's still 200
        click('#clients tr[data-client="bob"] button.block')
        wait.until(lambda d: _cells(d, "bob")["standing"] == "blocked")
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#chart svg rect")) >= 40)
        if shot := os.environ.get("STEALPROOF_SCREENSHOT"):
            Path(shot).parent.mkdir(parents=True, exist_ok=True)
            assert browser.save_screenshot(shot)
        blocked = infer(url, keys["bob"], 1)
        assert blocked.status_code == 403, blocked.text
        assert "blocked" in blocked.json()["error"]
        assert infer(url, keys["alice"], 1).status_code == 200

        # revoke carol's key in the page → carol's next request gets 401
        key_id = httpx.get(f"{url}/v1/admin/clients/carol/keys", headers=ADMIN, timeout=10).json()[
            0
        ]["key_id"]
        assert infer(url, keys["carol"], 1).status_code == 200
        click('#clients tr[data-client="carol"] .details')
        revoke = f'#keys tr[data-key="{key_id}"] button.revoke'
        click(revoke)  # asks to confirm
        wait.until(ec.alert_is_present()).accept()
        wait.until(lambda d: not d.find_elements(By.CSS_SELECTOR, revoke))
        assert infer(url, keys["carol"], 1).status_code == 401
        keys_after = httpx.get(f"{url}/v1/admin/clients/carol/keys", headers=ADMIN, timeout=10)
        assert keys_after.json()[0]["revoked_at"] is not None

        # unblock bob in the page → served again
        click('#clients tr[data-client="bob"] button.unblock')
        wait.until(lambda d: _cells(d, "bob")["standing"] == "ok")
        assert infer(url, keys["bob"], 1).status_code == 200


def test_console_routes_need_the_admin_key(victim_path: Path, tmp_path: Path) -> None:
    """The page is a data-free shell; its data routes refuse a missing or wrong key (401)."""
    from fastapi.testclient import TestClient

    from serve_db_fixtures import temp_database
    from stealproof.serve.app import create_app
    from stealproof.serve.settings import load_settings

    with temp_database("sqlite", tmp_path) as db:
        create_clients(db, "alice")
        config = write_config(tmp_path, victim_path, db)
        with TestClient(create_app(load_settings(config))) as client:
            for path in ("/v1/admin/clients/alice/keys", "/v1/admin/clients/alice/series"):
                assert client.get(path).status_code == 401
                bad = client.get(path, headers={"Authorization": "Bearer nope"})
                assert bad.status_code == 401 and "admin key" in bad.json()["error"]
                assert client.get(path, headers=ADMIN).status_code == 200
            assert client.get("/v1/admin/clients/nobody/keys", headers=ADMIN).status_code == 404
            assert client.get("/v1/admin/clients/nobody/series", headers=ADMIN).status_code == 404
            too_many = client.get(
                "/v1/admin/clients/alice/series", params={"points": 100_000}, headers=ADMIN
            )
            assert too_many.status_code == 422
            page = client.get("/admin")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert ADMIN_KEY not in page.text
            for asset, kind in (("admin.js", "javascript"), ("admin.css", "css")):
                r = client.get(f"/admin/{asset}")
                assert r.status_code == 200 and kind in r.headers["content-type"]
            schema = client.get("/openapi.json").json()["paths"]
            assert "/admin" not in schema
            assert "/v1/admin/clients/{name}/series" in schema
