"""The console in a real headless Chromium (Debian's chromium and chromium-driver, through Selenium) against a real
``ztdns serve`` of examples/console.toml with traffic: log in, find a blocked query in the query log, explain it, add
a one-click exception and see it take effect on a real DNS query; explain a blocked name and add an exception in the
policy editor; hostile names shown in the query log, detections and elsewhere never run. Screenshots are kept in
build/console-screenshots/."""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.rcode
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from fixtures.server import ServerProcess, udp_query
from fixtures.unbound import free_port

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "build" / "console-screenshots"
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
TOKEN = "ztd_development-console-token-do-not-use-in-production"
HOSTILE_IDENTITY = "<img src=x onerror=alert(1)>"
HOSTILE_NAME = "<img/src=x/onerror=window.__xss=1>.corp.example"
HOSTILE_DOMAIN = "<img/src=x/onerror=alert(2)>.example"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()), reason="needs chromium and chromium-driver"),
]

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service as ChromeService  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as ec  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


class Console:
    def __init__(self, directory: Path, server: ServerProcess, url: str, dns_port: int) -> None:
        self.directory, self.server, self.url, self.dns_port = directory, server, url, dns_port

    def api(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
        import ssl

        context = ssl.create_default_context(cafile=str(self.directory / "console-pki" / "ca.crt"))
        request = urllib.request.Request(
            self.url.rstrip("/") + path,
            data=body,
            method=method,
            headers={"authorization": f"Bearer {TOKEN}", **(headers or {})},
        )
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return json.loads(response.read())


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    """examples/console.toml, its `ztdns pki` header commands run as written, on free ports."""
    root = tmp_path_factory.mktemp("console")
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("pki", "console-pki", "state"))
    example = root / "examples" / "console.toml"
    text = example.read_text()
    for line in text.splitlines():
        if line.startswith("#   ztdns pki "):
            command = shlex.split(line[1:])[1:]
            subprocess.run([sys.executable, "-m", "ztdns", *command], cwd=root, check=True, capture_output=True)
    admin, dns_port, metrics = free_port(), free_port(), free_port()
    for old, new in (
        ('"127.0.0.1:9443"', f'"127.0.0.1:{admin}"'),
        ('"127.0.0.1:5300"', f'"127.0.0.1:{dns_port}"'),
        ('"127.0.0.1:9153"', f'"127.0.0.1:{metrics}"'),
    ):
        assert old in text
        text = text.replace(old, new)
    with ServerProcess(text, root / "examples", name="console-test.toml") as server:
        assert f"ztdns: listening on admin https://127.0.0.1:{admin}/" in server.stderr
        yield Console(root / "examples", server, f"https://127.0.0.1:{admin}/", dns_port)


@pytest.fixture(scope="module")
def browser(console: Console, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    cert = x509.load_pem_x509_certificate((console.directory / "console-pki" / "console.crt").read_bytes())
    spki = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1366,900",
        # Trust exactly the development server certificate (its key), not every certificate.
        f"--ignore-certificate-errors-spki-list={base64.b64encode(hashlib.sha256(spki).digest()).decode()}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=ChromeService(executable_path=str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    SHOTS.mkdir(parents=True, exist_ok=True)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: WebDriver, condition: Any, timeout: float = 15) -> Any:
    return WebDriverWait(driver, timeout).until(condition)


def shot(driver: WebDriver, name: str) -> None:
    assert driver.save_screenshot(str(SHOTS / f"{name}.png"))


def login(driver: WebDriver, console: Console) -> None:
    driver.get(console.url)
    driver.delete_all_cookies()  # each test logs in afresh
    driver.refresh()
    token = wait(driver, ec.visibility_of_element_located((By.ID, "token")))
    assert driver.switch_to.active_element == token  # the form has the keyboard focus
    token.send_keys(TOKEN, Keys.ENTER)  # keyboard only
    wait(driver, ec.visibility_of_element_located((By.ID, "queries-total")))


def test_log_in_explain_add_an_exception_and_see_it_served(console: Console, browser: WebDriver) -> None:
    allowed = udp_query(console.dns_port, "wiki.corp.example")
    blocked = udp_query(console.dns_port, "files.partner.example")
    assert allowed.rcode() == dns.rcode.NOERROR and blocked.rcode() == dns.rcode.NXDOMAIN
    assert [(o.code, o.text) for o in blocked.options] == [(15, "policy=corp rule=default-deny")]
    udp_query(console.dns_port, "banner.ads.corp.example")

    login(browser, console)
    assert int(browser.find_element(By.ID, "queries-total").text) >= 3
    assert int(browser.find_element(By.ID, "queries-blocked").text) >= 2
    shot(browser, "1-overview")

    browser.get(console.url + "#identities")
    wait(browser, ec.visibility_of_element_located((By.ID, "explain-client"))).send_keys("127.0.0.1")
    browser.find_element(By.ID, "explain-name").send_keys("files.partner.example", Keys.ENTER)
    decision = wait(browser, ec.visibility_of_element_located((By.ID, "explain-decision")))
    assert decision.text == "deny"
    assert "default-deny" in browser.find_element(By.ID, "explain-result").text
    shot(browser, "2-explain-blocked")

    browser.get(console.url + "#editor")
    editor = wait(browser, ec.visibility_of_element_located((By.ID, "config-text")))
    text = editor.get_attribute("value")
    assert text is not None and '"portal.partner.example"]' in text
    # First a mistake: the editor shows file:line:key problems and does not offer to apply.
    broken = text.replace('"portal.partner.example"]', '"portal.partner.example", "*.*.partner.example"]')
    browser.execute_script("arguments[0].value = arguments[1]", editor, broken)
    editor.send_keys(" ")  # a real keystroke: the page's input handler runs
    browser.find_element(By.ID, "config-check").click()
    problems = wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, "#config-problems table")))
    assert "policies.corp.allow[3]" in problems.text
    assert not browser.find_element(By.ID, "config-apply").is_enabled()
    shot(browser, "3-editor-invalid")
    fixed = text.replace('"portal.partner.example"]', '"portal.partner.example", "files.partner.example"]')
    browser.execute_script("arguments[0].value = arguments[1]", editor, fixed.rstrip("\n"))
    editor.send_keys(Keys.END, "\n")
    browser.find_element(By.ID, "config-check").click()
    added = '+allow = ["corp.example", "**.corp.example", "portal.partner.example", "files.partner.example"]'
    # The diff of the first check is on the page already: wait for this one's.
    wait(browser, ec.text_to_be_present_in_element((By.ID, "config-diff"), added))
    apply = wait(browser, ec.element_to_be_clickable((By.ID, "config-apply")))
    shot(browser, "4-editor-diff")
    apply.click()
    wait(browser, ec.visibility_of_element_located((By.ID, "config-applied")))
    shot(browser, "5-editor-applied")

    answer = udp_query(console.dns_port, "files.partner.example")
    assert answer.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rr in answer.answer[0]] == ["198.51.100.20"]
    assert '"files.partner.example"]' in (console.directory / "console-test.toml").read_text()
    audit = (console.directory / "state" / "admin-audit.jsonl").read_text().splitlines()
    change = json.loads(audit[-1])
    assert (change["who"], change["via"], change["method"], change["status"]) == (
        "token:development",
        "session",
        "PUT",
        200,
    )


def test_find_a_blocked_query_explain_it_and_add_a_one_click_exception(console: Console, browser: WebDriver) -> None:
    assert udp_query(console.dns_port, "share.partner.example").rcode() == dns.rcode.NXDOMAIN
    udp_query(console.dns_port, "wiki.corp.example")
    login(browser, console)
    # The overview's charts are drawn from the memory sink: a bar per minute, the blocked name on top.
    chart = wait(browser, ec.visibility_of_element_located((By.ID, "chart-blocked")))
    assert chart.tag_name == "svg" and len(chart.find_elements(By.TAG_NAME, "rect")) == 60
    wait(browser, ec.text_to_be_present_in_element((By.ID, "top-names"), "share.partner.example."))
    # Upstream health and DNSSEC from the metrics: the example's forwarder, in service until it fails.
    health = browser.find_element(By.ID, "upstream-health").text
    assert "9.9.9.9" in health and "in service" in health, health
    # The answers so far came from unsigned local data: counted insecure, none failed.
    dnssec = browser.find_element(By.ID, "dnssec-results").text.splitlines()
    assert dnssec[:2] == ["DNSSEC", "result answers"] and dnssec[-2:] == ["Validation failures by EDE code", "none"]
    results = dict(line.split() for line in dnssec[2:-2])
    assert set(results) == {"insecure"} and int(results["insecure"]) >= 2, dnssec
    shot(browser, "9-overview-charts")

    browser.get(console.url + "#querylog")
    name = wait(browser, ec.visibility_of_element_located((By.ID, "q-name")))
    name.send_keys("share.partner")
    Select(browser.find_element(By.ID, "q-decision")).select_by_value("deny")
    browser.find_element(By.ID, "querylog-search").click()
    row = wait(browser, lambda d: _only_row(d, "share.partner.example."))
    assert "deny" in row.text and "default-deny" in row.text and "laptop" in row.text
    shot(browser, "10-querylog-blocked")
    row.find_element(By.CSS_SELECTOR, "button.explain").click()
    explained = wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, "tr.explained .decision")))
    assert explained.text == "deny"
    assert "no rule matched (default deny)" in browser.find_element(By.CSS_SELECTOR, "tr.explained").text
    shot(browser, "11-querylog-explained")
    browser.find_element(By.CSS_SELECTOR, "tr.explained button.add-exception").click()
    added = wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, ".exception-added")))
    assert "policies.corp.allow" in added.text
    shot(browser, "12-exception-added")

    answer = udp_query(console.dns_port, "share.partner.example")  # the second query: answered
    assert answer.rcode() == dns.rcode.NOERROR
    assert [rr.to_text() for rr in answer.answer[0]] == ["198.51.100.30"]
    audit = (console.directory / "state" / "admin-audit.jsonl").read_text().splitlines()
    change = json.loads(audit[-1])
    assert (change["who"], change["via"], change["path"], change["status"], change["exception"]) == (
        "token:development",
        "session",
        "/v1/exceptions",
        200,
        "share.partner.example",
    )
    Select(browser.find_element(By.ID, "q-decision")).select_by_value("allow")
    browser.find_element(By.ID, "querylog-search").click()
    row = wait(browser, lambda d: _only_row(d, "share.partner.example."))
    assert "allow" in row.text
    shot(browser, "13-querylog-answered")


def _only_row(driver: WebDriver, name: str) -> Any:
    """The first row once the search shows only rows of ``name`` (the unfiltered first page is replaced)."""
    rows = driver.find_elements(By.CSS_SELECTOR, "#querylog-table tbody tr")
    try:
        return rows[0] if rows and all(name in row.text for row in rows) else False
    except StaleElementReferenceException:
        return False


def test_hostile_names_are_shown_as_text_and_never_run(console: Console, browser: WebDriver) -> None:
    config = console.api("GET", "/v1/config")
    patch = {"identities": {HOSTILE_IDENTITY: {"networks": ["192.0.2.0/24"], "policies": ["corp"]}}}
    console.api(
        "PATCH",
        "/v1/config",
        json.dumps(patch).encode(),
        {"if-match": config["etag"], "content-type": "application/merge-patch+json"},
    )
    udp_query(console.dns_port, HOSTILE_NAME)  # traffic with the hostile name
    login(browser, console)
    browser.get(console.url + "#identities")
    wait(browser, ec.text_to_be_present_in_element((By.ID, "page"), HOSTILE_IDENTITY))
    wait(browser, ec.visibility_of_element_located((By.ID, "explain-client"))).send_keys("192.0.2.7")
    browser.find_element(By.ID, "explain-name").send_keys(HOSTILE_NAME, Keys.ENTER)
    wait(browser, ec.visibility_of_element_located((By.ID, "explain-decision")))
    result = browser.find_element(By.ID, "explain-result").text
    assert HOSTILE_IDENTITY in result and "<img/src=x/onerror=window.__xss=1>" in result
    browser.get(console.url + "#editor")
    editor = wait(browser, ec.visibility_of_element_located((By.ID, "config-text")))
    assert HOSTILE_IDENTITY in (editor.get_attribute("value") or "")
    shot(browser, "6-hostile-names")
    # The query log shows the hostile name as it was asked, as text; explaining it too.
    browser.get(console.url + "#querylog")
    wait(browser, ec.visibility_of_element_located((By.ID, "q-name"))).send_keys("onerror", Keys.ENTER)
    row = wait(browser, lambda d: _only_row(d, HOSTILE_NAME.lower() + "."))
    row.find_element(By.CSS_SELECTOR, "button.explain").click()
    wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, "tr.explained .decision")))
    assert HOSTILE_NAME.lower() in browser.find_element(By.CSS_SELECTOR, "tr.explained").text
    shot(browser, "14-hostile-querylog")
    # A tunnel verdict about a hostile domain: unique names carrying ~3 kB/s (180 bytes every 50 ms plus the round
    # trip: a slow, loaded machine still sends over 1 kB/s) for 6 s, past the fast window's 5 s (observe mode:
    # logged, nothing blocked).
    for index in range(120):
        udp_query(console.dns_port, f"{index:04d}{'a' * 56}.{'b' * 60}.{'c' * 60}.{HOSTILE_DOMAIN}")
        time.sleep(0.05)
    deadline = time.monotonic() + 20
    while not console.api("GET", "/v1/detections")["detections"]:  # the detector's tick, then the sink's thread
        assert time.monotonic() < deadline, "no tunnel verdict"
        time.sleep(0.2)
    browser.get(console.url + "#detections")
    wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, "#page .detection")))
    detection = browser.find_element(By.CSS_SELECTOR, "#page .detection")
    assert "tunnel" in detection.text and "onerror" in detection.text
    detection.find_element(By.TAG_NAME, "summary").click()
    shot(browser, "15-hostile-detections")
    assert browser.execute_script("return window.__xss") is None
    assert browser.execute_script("return document.querySelectorAll('img').length") == 0
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.accept()


def test_pages_without_a_source_say_why(console: Console, browser: WebDriver) -> None:
    login(browser, console)
    for page in ("agents", "flows"):
        browser.get(console.url + f"#{page}")
        reason = wait(browser, ec.visibility_of_element_located((By.CSS_SELECTOR, "#page .reason")))
        assert "no [control] section" in reason.text
    shot(browser, "7-not-available")
    browser.get(console.url + "#lists")
    wait(browser, ec.text_to_be_present_in_element((By.ID, "page"), "No policy uses a list."))
    browser.get(console.url + "#zones")
    wait(browser, ec.text_to_be_present_in_element((By.ID, "page"), "No [authority] zones"))
    browser.get(console.url + "#attestation")
    wait(browser, ec.text_to_be_present_in_element((By.ID, "page"), "code digest"))
    shot(browser, "8-attestation")
