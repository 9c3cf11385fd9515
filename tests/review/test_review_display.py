"""Issue 25, finding 5 in a real headless Chromium: what the reviewer sees is what was written.

Escalations with bidi controls in the content, reason, categories, note and request id, a lone
surrogate in the request metadata, and 3,000-character ids, reasons and categories without a
space. The checks read the rendered page: the on-screen position of each character, the page's
width and the Approve button's position. Bounded: one browser, three tests."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from review_support import make_guard, require_chromium, start_chromium, start_review_server

from guardrails_plugin import Action, Decision, Stage
from guardrails_plugin.audit import AuditRecord, open_store

pytestmark = pytest.mark.timeout(180)

TOKEN = "display-token-0123456789"
RLO, PDF = "\u202e", "\u202c"
CONTENT = f"Pay to account 1234{RLO}5678{PDF} today"
REASON = f"risk 0.45 in escalate band {RLO}9043{PDF}"
NOTE = f"checked {RLO}2109{PDF} ok"
LONG = 3000


def _record(guard: Any, text: str, *, reason: str, categories: list[str], request_id: str,
            metadata: dict[str, Any]) -> AuditRecord:
    req = guard.request(Stage.PROMPT, prompt=text, request_id=request_id, metadata=metadata)
    d = Decision(action=Action.ESCALATE, stage=Stage.PROMPT, text=text, reason=reason, risk=0.45,
                 categories=categories, request_id=request_id)
    return AuditRecord.from_decision(req, d, store_content=True, now=time.time())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    require_chromium()
    root = tmp_path_factory.mktemp("display")
    db = root / "audit.db"
    guard = make_guard()
    store = open_store(str(db))
    try:
        store.write([
            _record(guard, CONTENT, reason=REASON, categories=[f"ILG{RLO}21{PDF}"], request_id=f"req-{RLO}77{PDF}",
                    metadata={"user": "u-\ud800-broken", "channel": f"web{RLO}55{PDF}"}),
            _record(guard, "a resolved one", reason="risk 0.45", categories=["ILG"], request_id="req-noted",
                    metadata={}),
            _record(guard, "long fields", reason="R" * LONG, categories=["C" * LONG], request_id="Q" * LONG,
                    metadata={"trace": "T" * LONG}),
        ], durable=True)
        ids = {e.request_id: e.id for e in store.list_escalations(None)}
        bidi, noted, long = ids[f"req-{RLO}77{PDF}"], ids["req-noted"], ids["Q" * LONG]
        store.resolve(noted, True, resolver="dana", note=NOTE)
    finally:
        store.close()
        guard.close()
    proc, url = start_review_server(db, root, "--reviewer", f"dana:{TOKEN}", "--config", _config(root))
    driver = start_chromium(root / "profile")
    try:
        driver.get(url + "/login")
        driver.find_element("id", "token").send_keys(TOKEN)
        driver.find_element("id", "login-submit").click()
        _wait(driver, lambda d: d.current_url.endswith("/escalations"))
        yield {"url": url, "driver": driver, "bidi": bidi, "noted": noted, "long": long}
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(10)


def _config(root: Any) -> str:
    from review_support import write_config

    return str(write_config(root / "guard.yaml"))


def _wait(driver: Any, cond: Any) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 15).until(cond)


#: (character, left, top) of every character of an element's text as laid out on screen
POSITIONS = """
const out = [];
const walk = document.createTreeWalker(arguments[0], NodeFilter.SHOW_TEXT);
let node;
while ((node = walk.nextNode())) {
  for (let i = 0; i < node.data.length; i++) {
    const r = document.createRange(); r.setStart(node, i); r.setEnd(node, i + 1);
    const b = r.getBoundingClientRect();
    out.push([node.data[i], b.left, b.top]);
  }
}
return out;
"""


def assert_in_written_order(driver: Any, css: str, digits: str) -> None:
    """The characters of ``digits`` (written after a bidi override) stand on screen left to right
    in the order they were written: nothing reversed them."""
    el = driver.find_element("css selector", css)
    pos = driver.execute_script(POSITIONS, el)
    chars = [ch for ch, _, _ in pos]
    text = "".join(chars)
    start = text.find(digits)
    assert start >= 0, (css, text)
    xs = [pos[start + i][1] for i in range(len(digits))]
    tops = {round(pos[start + i][2]) for i in range(len(digits))}
    assert len(tops) == 1 and xs == sorted(xs), (css, list(zip(digits, xs)))
    assert RLO not in chars and PDF not in chars, css  # no live bidi control in the page
    assert "[U+202E]" in text and el.find_elements("css selector", ".hidden-badge"), css


def test_bidi_controls_are_shown_not_obeyed(site: dict[str, Any]) -> None:
    d = site["driver"]
    d.get(f"{site['url']}/escalations?status=all")
    assert_in_written_order(d, f"tr.row[data-id='{site['bidi']}'] td.preview", "5678")
    assert_in_written_order(d, f"tr.row[data-id='{site['bidi']}'] td.reason", "9043")
    assert_in_written_order(d, f"tr.row[data-id='{site['bidi']}'] td.cats", "21")
    d.get(f"{site['url']}/escalations/{site['noted']}")
    assert_in_written_order(d, "#note", "2109")
    d.get(f"{site['url']}/escalations/{site['bidi']}")
    assert_in_written_order(d, "#content", "5678")
    assert_in_written_order(d, "#reason", "9043")
    assert_in_written_order(d, "#categories", "21")
    assert_in_written_order(d, "#request-id", "77")
    assert_in_written_order(d, "#caller-metadata", "55")
    box = d.find_element("id", "edit-text").get_attribute("value")
    assert RLO not in box and "1234[U+202E]5678[U+202C]" in box  # the edit box says what it holds
    assert d.find_elements("id", "edit-hidden")


def test_a_lone_surrogate_in_metadata_is_shown_not_a_server_error(site: dict[str, Any]) -> None:
    d = site["driver"]
    d.get(f"{site['url']}/escalations/{site['bidi']}")
    assert d.find_element("id", "status").text == "pending"
    assert "u-[U+D800]-broken" in d.find_element("id", "caller-metadata").text


def test_long_unbroken_fields_wrap(site: dict[str, Any]) -> None:
    d = site["driver"]
    d.set_window_size(1280, 1000)
    for path in (f"/escalations/{site['long']}", "/escalations?status=all"):
        d.get(site["url"] + path)
        width = d.execute_script("return document.documentElement.scrollWidth")
        inner = d.execute_script("return window.innerWidth")
        assert width <= inner, (path, width, inner)
    d.get(f"{site['url']}/escalations/{site['long']}")
    approve = d.find_element("id", "approve")
    right = d.execute_script("return arguments[0].getBoundingClientRect().right", approve)
    assert approve.is_displayed() and right <= d.execute_script("return window.innerWidth")
    assert len(d.find_element("id", "request-id").text.replace("\n", "")) == LONG  # wrapped, not cut
