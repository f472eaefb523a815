"""The status page of ``gbatch watch --metrics-port``: a real daemon with two manifests, read in
a real headless Chromium (Debian's chromium + chromium-driver, through selenium); and who may
read it, asked over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from runner.adapters.webui import Request, StatusPage
from runner.emulator import Emulator
from tests.conftest import API_KEY, Gbatch

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
TOKEN = "ui-token-5d21c0"


def until(condition: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def cities(name: str, rows: list[str], labels: str = "{}") -> str:
    listed = ", ".join(f"{{city: {r}}}" for r in rows)
    return (
        f"metadata: {{name: {name}, labels: {labels}}}\nspec:\n  model: gemini-2.5-flash\n"
        f"  source: {{key: city, rows: [{listed}]}}\n"
        "  prompt: {template: 'Weather in {{ city }}?'}\n"
    )


@pytest.fixture
def daemon(gbatch: Gbatch, emulator: Emulator) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """A daemon on two manifests, both answered; yields the page's base address."""
    gbatch.write("cities.yaml", cities("cities", ["Oslo", "Lima"], labels="{team: north}"))
    gbatch.write("towns.yaml", cities("towns", ["Bergen"]))
    log = (gbatch.root / "watch.log").open("w+")
    process = subprocess.Popen(
        [sys.executable, "-m", "runner", "watch", "manifests", "--metrics-port", "0"],
        cwd=gbatch.root,
        env={**os.environ, "GBATCH_POLL_INTERVAL_S": "0.1", "GBATCH_UI_TOKEN": TOKEN},
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def base() -> str | None:
            log.seek(0)
            for line in log.read().splitlines():
                if line.startswith("status page: "):
                    return line.removeprefix("status page: ").split("/?")[0]
            return None

        until(base, "the status page address")

        def answered() -> bool:
            try:
                return gbatch.sql(
                    "select (select count(*) from cities) + (select count(*) from towns)"
                ) == [(3,)]
            except Exception:  # not written yet, or held by the daemon's write
                return False

        until(answered, "both manifests' answers", timeout=60)
        address = base()
        assert address is not None
        yield address, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.seek(0)
        output = log.read()
        log.close()
        assert "Traceback" not in output, output
        assert API_KEY not in output and TOKEN not in output


def browser(tmp_path: Path) -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), "dev.py test installs chromium"
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    options.add_argument("--window-size=1280,1100")
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def test_the_page_shows_the_daemons_manifests_jobs_events_and_runs_a_query(
    daemon: tuple[str, subprocess.Popen[str]], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    base, _ = daemon
    driver = browser(tmp_path)
    assert isinstance(driver, WebDriver)
    try:
        driver.get(f"{base}/?token={TOKEN}")
        wait = WebDriverWait(driver, 20, poll_frequency=0.05)

        def cards_done(d: WebDriver) -> bool:
            cards = d.find_elements(By.CSS_SELECTOR, "section.manifest")
            return len(cards) == 2 and all(
                c.find_element(By.CSS_SELECTOR, ".pending").text == "0" for c in cards
            )

        wait.until(cards_done)
        cards = {
            c.get_attribute("data-name"): c
            for c in driver.find_elements(By.CSS_SELECTOR, "section.manifest")
        }
        assert set(cards) == {"cities", "towns"}

        def field(name: str, css: str) -> str:
            return str(cards[name].find_element(By.CSS_SELECTOR, css).text)

        assert [field("cities", c) for c in (".status", ".succeeded", ".failed")] == [
            "ok",
            "2",
            "0",
        ]
        assert [field("towns", c) for c in (".status", ".succeeded", ".failed")] == ["ok", "1", "0"]
        assert field("cities", ".cost").startswith("$0.0000")
        assert field("cities", ".last-error") == "-"
        bar = cards["cities"].find_element(By.CSS_SELECTOR, "progress")
        assert bar.get_attribute("value") == "1"
        jobs = driver.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
        assert len(jobs) == 2
        states = [r.find_element(By.CSS_SELECTOR, ".remote-state").text for r in jobs]
        assert states == ["succeeded", "succeeded"]
        ages = [r.find_element(By.CSS_SELECTOR, ".age").text for r in jobs]
        assert all(a.endswith(("s", "m")) for a in ages), ages
        events = [e.text for e in driver.find_elements(By.CSS_SELECTOR, "#events li")]
        assert any("cities: ingested" in e for e in events), events

        box = driver.find_element(By.CSS_SELECTOR, "#query textarea")
        box.clear()
        box.send_keys("select key, text from cities order by key")
        driver.find_element(By.CSS_SELECTOR, "#query button").click()
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#query-result tbody tr"))
        rows = [
            [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
            for tr in driver.find_elements(By.CSS_SELECTOR, "#query-result tbody tr")
        ]
        assert rows == [["Lima", "echo: Weather in Lima?"], ["Oslo", "echo: Weather in Oslo?"]]
        driver.set_window_size(1200, 1500)
        driver.execute_script("window.scrollTo(0, 0)")
        driver.save_screenshot(str(tmp_path / "status-page.png"))  # as in the README

        box.clear()
        box.send_keys("copy cities to '/tmp/out.csv'")
        driver.find_element(By.CSS_SELECTOR, "#query button").click()
        error = driver.find_element(By.CSS_SELECTOR, "#query-error")
        wait.until(lambda d: error.text)
        assert "select" in error.text.lower()  # refused: read-only, one SELECT

        driver.set_window_size(390, 844)  # a phone: nothing wider than the screen
        overflow = driver.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth"
        )
        assert overflow <= 0
        driver.save_screenshot(str(tmp_path / "status-page-phone.png"))
    finally:
        driver.quit()
    assert (tmp_path / "status-page.png").stat().st_size > 10_000


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_the_api_needs_the_token_and_answers_status_and_queries(
    daemon: tuple[str, subprocess.Popen[str]],
) -> None:
    base, _ = daemon
    assert get(f"{base}/api/status")[0] == 401
    assert get(f"{base}/?token=wrong")[0] == 401
    code, body = get(f"{base}/api/status", {"Authorization": f"Bearer {TOKEN}"})
    assert code == 200
    document = json.loads(body)
    assert document["kind"] == "Status"
    assert {m["name"]: m["succeeded"] for m in document["manifests"]} == {"cities": 2, "towns": 1}
    assert len(document["jobs"]) == 2 and document["events"]
    assert get(f"{base}/healthz") == (200, "ok\n")  # open to probes, as before
    query = urllib.request.Request(
        f"{base}/api/query",
        data=json.dumps({"sql": "select count(*) as n from gbatch_jobs"}).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(query, timeout=10) as reply:
        answer = json.loads(reply.read())
    assert answer == {"columns": ["n"], "rows": [[2]], "truncated": False, "limit": 200}


def page(*, bound_host: str, token: str | None) -> StatusPage:
    return StatusPage(
        status=lambda: {"kind": "Status"},
        query=lambda sql, rows: (["n"], [(i,) for i in range(rows)]),
        bound_host=bound_host,
        token=token,
        row_limit=3,
    )


def ask(p: StatusPage, path: str = "/api/status", **headers: str) -> int:
    method = "POST" if path == "/api/query" else "GET"
    body = json.dumps({"sql": "select 1"}).encode()
    return p.reply(Request(method, path, "", {"host": "127.0.0.1:9464", **headers}, body)).code


def test_off_loopback_the_page_needs_a_token_and_on_loopback_a_loopback_host() -> None:
    assert ask(page(bound_host="0.0.0.0", token=None)) == 403
    assert ask(page(bound_host="0.0.0.0", token="t"), authorization="Bearer t") == 200
    local = page(bound_host="127.0.0.1", token=None)
    assert ask(local) == 200
    assert ask(local, host="localhost:9464") == 200
    assert ask(local, host="evil.example:9464") == 403  # DNS rebinding
    assert ask(local, "/api/query") == 415  # not JSON: no cross-site form can post it
    assert ask(local, "/api/query", **{"content-type": "application/json"}) == 200
    capped = local.reply(
        Request(
            "POST",
            "/api/query",
            "",
            {"host": "127.0.0.1", "content-type": "application/json"},
            b'{"sql": "select 1"}',
        )
    )
    assert json.loads(capped.body) == {
        "columns": ["n"],
        "rows": [[0], [1], [2]],
        "truncated": True,
        "limit": 3,
    }
