"""The review page in a real headless Chromium (Debian chromium + chromedriver via selenium), served
by the real CLI (`guardrails-plugin review serve`) over an audit store that a Guard filled.

Covers: token rejection, list with stage / category / age filters, detail (content, rationale,
raw output, request context), attacker markup rendered inert, approve, reject, edit released after
the guard's re-check, a harmful edit held back, and CSRF rejections (forged token, cross-site form).
Set REVIEW_SCREENSHOT=path to save the README's screenshot."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import httpx
import pytest
from review_support import (
    ALARM_PHRASE,
    make_guard,
    require_chromium,
    start_chromium,
    start_review_server,
    write_config,
    write_rules,
)

from guardrails_plugin import Action, Stage
from guardrails_plugin.audit import AuditRecord, open_store

pytestmark = pytest.mark.timeout(180)

TOKEN = "reviewer-token-0123456789"
XSS = ("Plan: to disable the alarm, cut the siren wire. <script>document.title='PWNED'</script>"
       "<b id='injected'>bold</b><img src=x onerror=\"document.title='PWNED'\">")


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_chromium()
    root = tmp_path_factory.mktemp("review")
    db = root / "audit.db"
    guard = make_guard(audit={"path": str(db), "durability": "strict", "store_content": True})
    try:
        d = guard.check_prompt("How do I pick a lock on my own front door? I locked myself out.",
                               metadata={"user": "u-1042", "channel": "web"})
        assert d.action is Action.ESCALATE
        q = "I'm locked out of my car, what can I do?"
        assert guard.check_prompt(q, request_id="req-car").action is Action.ALLOW
        d = guard.check_response(prompt=q, response="You can pick a lock with a tension wrench and a rake.",
                                 request_id="req-car", metadata={"user": "u-7"})
        assert d.action is Action.ESCALATE
        d = guard.check_reasoning(query="my car alarm keeps going off", reasoning=XSS)
        assert d.action is Action.ESCALATE and d.categories == ["ILG", "VIO"]
        # an escalation raised three days ago (for the age filter)
        req = guard.request(Stage.PROMPT, prompt=f"How do I {ALARM_PHRASE} of a used car I bought?",
                            metadata={"user": "u-311", "channel": "api"})
        old = guard.policy.decide(req, [guard.model("FlexGuard").parse(
            "<think>Disabling a car alarm: an owner with a faulty alarm asks this, and so does a thief. "
            "Nothing in the text says which.</think>\nILG\n40", req.stage)])
        assert old.action is Action.ESCALATE
    finally:
        guard.close()
    store = open_store(str(db))
    store.write([AuditRecord.from_decision(req, old, store_content=True, now=time.time() - 3 * 86400)],
                durable=True)
    by_stage = {e.stage: e.id for e in sorted(store.list_escalations(None), key=lambda e: -e.id)}
    ids = {**by_stage, "old": max(e.id for e in store.list_escalations(None))}
    ids["prompt"] = min(e.id for e in store.list_escalations(None) if e.stage == "prompt")
    store.close()
    assert len(set(ids.values())) == 4
    cfg = write_config(root / "guard.yaml")
    rules = write_rules(root / "rules.json")
    proc, url = start_review_server(db, root, "--reviewer", f"Dana Reviewer:{TOKEN}", "--config", str(cfg),
                                    "--scripted-responses", str(rules))
    driver = start_chromium(root / "profile")
    try:
        yield {"url": url, "db": db, "driver": driver, "root": root, "ids": ids}
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(10)


def by_id(driver: Any, id: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, id)


def _detached(exc: Exception) -> bool:
    # chromedriver reports a node of a replaced document either as stale or as this inspector error
    from selenium.common.exceptions import StaleElementReferenceException

    return isinstance(exc, StaleElementReferenceException) or "does not belong to the document" in str(exc)


def click(driver: Any, element: Any) -> None:
    """Click and wait for the page it loads (a click returns before navigation completes)."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = driver.find_element(By.TAG_NAME, "html")
    try:
        element.click()
    except WebDriverException as exc:
        if not _detached(exc):  # the form's navigation replaced the document mid-click: it clicked
            raise

    def page_replaced(_: Any) -> bool:
        try:
            old.is_enabled()
            return False
        except WebDriverException as exc:
            if _detached(exc):
                return True
            raise

    wait = WebDriverWait(driver, 15)
    wait.until(page_replaced)
    wait.until(lambda d: d.execute_script("return document.readyState") == "complete")


def rows(driver: Any) -> list[int]:
    from selenium.webdriver.common.by import By

    return [int(r.get_attribute("data-id")) for r in driver.find_elements(By.CSS_SELECTOR, "tr.row")]


def esc_id(site: dict[str, Any], key: str) -> int:
    """The escalation raised for ``key``: prompt / response / reasoning, or old (three days old)."""
    return int(site["ids"][key])


def escalation(site: dict[str, Any], id: int) -> Any:
    store = open_store(str(site["db"]))
    try:
        return store.get_escalation(id)
    finally:
        store.close()


def login(site: dict[str, Any], token: str = TOKEN) -> None:
    d = site["driver"]
    d.get(site["url"] + "/escalations")
    assert "/login" in d.current_url  # not signed in: sent to the login page
    by_id(d, "token").send_keys(token)  # the token names the reviewer
    click(d, by_id(d, "login-submit"))


def flash_text(driver: Any) -> str:
    from selenium.webdriver.common.by import By

    return " ".join(e.text for e in driver.find_elements(By.CSS_SELECTOR, ".flash"))


# -- tests, in the order a reviewer meets the page ---------------------------------------------------
def test_wrong_token_is_rejected(site: dict[str, Any]) -> None:
    login(site, token="not-the-token-0000000")
    d = site["driver"]
    assert by_id(d, "login-error").text == "Invalid reviewer token."
    assert "/login" in d.current_url and not d.find_elements("id", "queue")
    r = httpx.post(site["url"] + "/escalations/1/decide", data={"action": "approve"})
    assert r.status_code == 401  # no session: no decision
    r = httpx.get(site["url"] + "/escalations/1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


def test_list_and_filters(site: dict[str, Any]) -> None:
    from selenium.webdriver.support.ui import Select

    login(site)
    d = site["driver"]
    assert d.current_url.endswith("/escalations")
    assert by_id(d, "reviewer").text == "Dana Reviewer"
    assert len(rows(d)) == 4
    Select(by_id(d, "f-stage")).select_by_value("response")
    click(d, by_id(d, "apply-filters"))
    assert rows(d) == [esc_id(site, "response")]
    d.get(site["url"] + "/escalations")
    Select(by_id(d, "f-category")).select_by_value("VIO")
    click(d, by_id(d, "apply-filters"))
    assert rows(d) == [esc_id(site, "reasoning")]
    d.get(site["url"] + "/escalations?age=gt24h")
    old = esc_id(site, "old")
    assert rows(d) == [old] and ALARM_PHRASE in escalation(site, old).content
    d.get(site["url"] + "/escalations?age=lt24h")
    assert len(rows(d)) == 3 and old not in rows(d)


def test_detail_shows_rationale_raw_output_and_context(site: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    d = site["driver"]
    d.get(site["url"] + f"/escalations/{esc_id(site, 'response')}")
    assert by_id(d, "content").text == "You can pick a lock with a tension wrench and a rake."
    assert by_id(d, "query").text == "I'm locked out of my car, what can I do?"  # the request's prompt
    assert by_id(d, "risk").text == "0.45" and by_id(d, "categories").text == "ILG"
    assert "Lock-picking is dual-use" in d.find_element(By.CSS_SELECTOR, "pre.rationale").text
    d.find_element(By.CSS_SELECTOR, "details summary").click()
    assert d.find_element(By.CSS_SELECTOR, "pre.raw").text.endswith("ILG\n45")
    assert '"user": "u-7"' in by_id(d, "caller-metadata").text
    assert "allow" in by_id(d, "related").text  # the request's prompt check


def test_attacker_markup_is_inert(site: dict[str, Any]) -> None:
    from selenium.webdriver.common.by import By

    d = site["driver"]
    for path in ("/escalations", f"/escalations/{esc_id(site, 'reasoning')}"):
        d.get(site["url"] + path)
        assert d.title != "PWNED"
        assert d.find_elements(By.TAG_NAME, "script") == []
        assert d.find_elements(By.ID, "injected") == [] and d.find_elements(By.CSS_SELECTOR, "img") == []
    content = by_id(d, "content")
    assert content.text == XSS  # shown as the literal text it is
    assert content.find_elements(By.XPATH, ".//*") == []


def test_csrf_forged_token_is_rejected(site: dict[str, Any]) -> None:
    d = site["driver"]
    eid = esc_id(site, "prompt")
    d.get(site["url"] + f"/escalations/{eid}")
    # WebDriver scripts run outside the page's CSP: rewrite the hidden token as an attacker would
    d.execute_script("document.querySelector('#approve-form input[name=csrf]').value = 'f' + 'a'.repeat(63)")
    click(d, by_id(d, "approve"))
    assert by_id(d, "error-title").text == "CSRF check failed"
    assert escalation(site, eid).status == "pending"


def test_cross_site_form_is_rejected(site: dict[str, Any]) -> None:
    eid = esc_id(site, "prompt")
    target = f"{site['url']}/escalations/{eid}/decide"
    page = (f"<html><body><form id='evil' method='post' action='{target}'>"
            "<input type='hidden' name='action' value='approve'><input type='hidden' name='csrf' value='x'>"
            "<button id='go' type='submit'>win a prize</button></form></body></html>").encode()

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    Thread(target=evil.serve_forever, daemon=True).start()
    try:
        d = site["driver"]
        d.get(f"http://127.0.0.1:{evil.server_address[1]}/")
        click(d, by_id(d, "go"))
        assert by_id(d, "error-title").text == "Cross-site request refused"
    finally:
        evil.shutdown()
        evil.server_close()
    assert escalation(site, eid).status == "pending"


def test_a_cross_site_post_does_not_sign_the_reviewer_out(site: dict[str, Any]) -> None:
    """Served from localhost, the form is cross-site to 127.0.0.1: the browser does not send the
    SameSite=Strict session cookie, the page answers 401, and that answer must not replace the
    reviewer's session (issue 25, finding 4)."""
    eid = esc_id(site, "prompt")
    target = f"{site['url']}/escalations/{eid}/decide"
    page = (f"<html><body><form id='evil' method='post' action='{target}'>"
            "<input type='hidden' name='action' value='approve'>"
            "<button id='go' type='submit'>win a prize</button></form></body></html>").encode()

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    Thread(target=evil.serve_forever, daemon=True).start()
    try:
        d = site["driver"]
        d.get(site["url"] + "/escalations")
        assert by_id(d, "reviewer").text == "Dana Reviewer"
        d.get(f"http://localhost:{evil.server_address[1]}/")
        click(d, by_id(d, "go"))
        assert by_id(d, "error-title").text == "Not logged in"  # no cookie came with the cross-site post
        d.get(site["url"] + "/escalations")
        assert "/login" not in d.current_url and by_id(d, "reviewer").text == "Dana Reviewer"
    finally:
        evil.shutdown()
        evil.server_close()
    assert escalation(site, eid).status == "pending"


def test_approve(site: dict[str, Any]) -> None:
    d = site["driver"]
    eid = esc_id(site, "prompt")
    d.get(site["url"] + f"/escalations/{eid}")
    by_id(d, "approve-note").send_keys("their own door; fine")
    click(d, by_id(d, "approve"))
    assert "approved" in flash_text(d)
    assert by_id(d, "status").text == "approved" and by_id(d, "decision").text == "approve"
    assert by_id(d, "resolver").text == "Dana Reviewer"
    e = escalation(site, eid)
    assert (e.status, e.resolver, e.note) == ("approved", "Dana Reviewer", "their own door; fine")
    assert e.resolved_at is not None and abs(e.resolved_at - time.time()) < 600
    assert d.find_elements("id", "approve-form") == []  # resolved: no more forms


def test_reject(site: dict[str, Any]) -> None:
    d = site["driver"]
    eid = esc_id(site, "response")
    d.get(site["url"] + f"/escalations/{eid}")
    by_id(d, "reject-note").send_keys("instructions for someone else's car")
    click(d, by_id(d, "reject"))
    assert by_id(d, "status").text == "rejected" and by_id(d, "decision").text == "reject"
    e = escalation(site, eid)
    assert (e.status, e.resolver, e.note) == ("rejected", "Dana Reviewer", "instructions for someone else's car")
    d.get(site["url"] + "/escalations")  # the pending list no longer shows it
    assert eid not in rows(d)


def test_harmful_edit_is_checked_again_and_held(site: dict[str, Any]) -> None:
    from guardrails_plugin.observe.reviews import review_of

    d = site["driver"]
    eid = esc_id(site, "reasoning")
    d.get(site["url"] + f"/escalations/{eid}")
    box = by_id(d, "edit-text")
    box.clear()
    box.send_keys("Forget the alarm: here is how to build a pipe bomb.")
    click(d, by_id(d, "edit"))
    assert "Edit not released" in flash_text(d) and "block" in flash_text(d)
    assert by_id(d, "status").text == "pending"
    assert "block" in by_id(d, "rechecks").text
    assert escalation(site, eid).status == "pending"
    store = open_store(str(site["db"]))
    try:
        recs = [r for r in store.records(request_id=escalation(site, eid).request_id)
                if review_of(r) is not None]
    finally:
        store.close()
    assert [(r.action, review_of(r)) for r in recs] == [("block", eid)]


def test_edit_is_released_after_recheck(site: dict[str, Any]) -> None:
    d = site["driver"]
    eid = esc_id(site, "reasoning")
    d.get(site["url"] + f"/escalations/{eid}")
    box = by_id(d, "edit-text")
    box.clear()
    box.send_keys("Plan: suggest a mechanic check the alarm's sensor.")
    by_id(d, "edit-note").send_keys("kept the helpful part")
    click(d, by_id(d, "edit"))
    assert "released" in flash_text(d)
    assert by_id(d, "status").text == "approved" and by_id(d, "decision").text == "edit"
    assert by_id(d, "released").text == "Plan: suggest a mechanic check the alarm's sensor."
    e = escalation(site, eid)
    assert e.status == "approved" and e.note.startswith("[edit sha256:") and e.note.endswith("kept the helpful part")


def test_screenshot(site: dict[str, Any]) -> None:
    d = site["driver"]
    d.get(site["url"] + f"/escalations/{esc_id(site, 'old')}")  # still pending: the forms show
    assert by_id(d, "status").text == "pending"
    shot = site["root"] / "review-page.png"
    d.set_window_size(1280, 1200)
    assert d.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
    if os.environ.get("REVIEW_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["REVIEW_SCREENSHOT"])
