"""The web playground in a real browser: Debian's chromium + chromium-driver through Selenium,
against a live `sugar serve` on the shipped checkpoint and its built-in collection (with an
API key). Skipped where Chromium is absent; `.ci/run` installs it. Screenshots of each page at
1280 and 390 px wide go to $SUGAR_BROWSER_ARTIFACTS (default build/browser-artifacts)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import make_image
from tests.server_fixtures import free_port

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
if not (CHROMIUM and DRIVER):
    pytest.skip("Debian chromium and chromium-driver are not installed", allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
KEY = "playground-key"
ARTIFACTS = Path(os.environ.get("SUGAR_BROWSER_ARTIFACTS", ROOT / "build" / "browser-artifacts"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SUGAR_HOME": str(home), "SUGAR_MAX_IMAGE_PIXELS": "262144",
           "SUGAR_READY_CACHE_S": "0"}
    log = open(home / "serve.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "sugar_cli.main", "serve", "--port", str(port), "--api-key", KEY],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 300
    while True:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=5) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            log.close()
            raise RuntimeError("sugar serve did not become ready:\n" + (home / "serve.log").read_text()[-3000:])
        time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def driver():
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,900"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(DRIVER), options=opts)
    d.implicitly_wait(0)
    yield d
    d.quit()


def wait(d, cond, timeout=60):
    """Until `cond()` is truthy; an element that a re-render replaced while `cond` read it
    (a search answered in between) is read again at the next poll."""
    from selenium.common.exceptions import StaleElementReferenceException

    return WebDriverWait(d, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(lambda _: cond())


def api(url, method, path, body=None):
    req = urllib.request.Request(url + path, method=method, data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def console_errors(d) -> list[str]:
    return [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]


def no_alert(d) -> bool:
    try:
        _ = d.switch_to.alert
    except NoAlertPresentException:
        return True
    return False


def search(d, text, prefix=""):
    box = d.find_element(By.ID, "search-text")
    box.clear()
    box.send_keys(text)
    src = d.find_element(By.ID, "search-source")
    src.clear()
    if prefix:
        src.send_keys(prefix)
    d.find_element(By.ID, "search-go").click()


def library_settled(d) -> None:
    """Until the library list has rendered its newest read: the click that starts a read sets
    aria-busy="true" before it returns, so the list left from an earlier test never passes."""
    wait(d, lambda: d.find_element(By.ID, "doc-list").get_attribute("aria-busy") == "false")


def library_page_with(d, selector: str) -> None:
    """Open the library (its list is read when the tab opens) and page on to `selector`: the
    newest documents are on the last page."""
    d.find_element(By.ID, "tab-search").click()
    d.find_element(By.ID, "tab-library").click()
    library_settled(d)
    while not d.find_elements(By.CSS_SELECTOR, selector):
        page = d.find_element(By.ID, "doc-page").text
        assert d.find_element(By.ID, "doc-next").is_enabled(), page
        d.find_element(By.ID, "doc-next").click()
        library_settled(d)


def shoot(d, name):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for width in (1280, 390):
        d.set_window_size(width, 900)
        time.sleep(0.2)
        d.save_screenshot(str(ARTIFACTS / f"{name}-{width}.png"))
    d.set_window_size(1280, 900)


def test_1_api_key_prompt_then_text_search_shows_cards_with_loaded_images(server, driver):
    d = driver
    d.get(server + "/")  # redirects to /ui
    assert d.current_url.endswith("/ui")
    assert not d.find_element(By.ID, "key-form").is_displayed()  # asked only when a request needs it
    search(d, "The banner of House")
    wait(d, lambda: d.find_element(By.ID, "key-form").is_displayed())  # 401 -> the key prompt
    d.find_element(By.ID, "key-input").send_keys("wrong")
    d.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait(d, lambda: "refused" in d.find_element(By.ID, "key-error").text)  # 401 again: asked again
    d.find_element(By.ID, "key-input").send_keys(KEY)
    d.find_element(By.CSS_SELECTOR, "#key-form button").click()
    wait(d, lambda: len(d.find_elements(By.CSS_SELECTOR, "#search-results .card")) >= 3)
    wait(d, lambda: d.execute_script(
        "const im=[...document.querySelectorAll('#search-results img')];"
        "return im.length>0 && im.every(i=>i.complete && i.naturalWidth>0)"))
    assert float(d.find_element(By.ID, "search-results").get_attribute("data-render-ms")) <= 300
    assert "score" in d.find_element(By.CSS_SELECTOR, "#search-results .card .scores").text
    assert d.execute_script("return sessionStorage.getItem('sugar.apiKey')") == KEY
    assert not d.find_element(By.ID, "key-form").is_displayed()
    shoot(d, "search")


def test_2_debounced_typing_sends_one_request(server, driver):
    d = driver
    d.execute_script("""
      window.__calls = 0; const f = window.fetch;
      window.fetch = (...a) => { if (String(a[0]).includes('/retrieve')) window.__calls++; return f(...a); };""")
    box = d.find_element(By.ID, "search-text")
    box.clear()
    for ch in "House banner colour":
        box.send_keys(ch)
    time.sleep(1.2)
    assert d.execute_script("return window.__calls") == 1


def test_2b_ranking_mode_is_sent_and_cards_show_both_scores(server, driver):
    from selenium.webdriver.support.ui import Select

    d = driver
    d.execute_script("""
      window.__bodies = []; const f = window.fetch;
      window.fetch = (...a) => { if (String(a[0]).includes('/retrieve')) window.__bodies.push(a[1].body);
                                 return f(...a); };""")
    select = Select(d.find_element(By.ID, "search-mode"))
    for mode, first_id in (("lexical", "house-vyd"), ("hybrid", "house-vyd")):
        select.select_by_value(mode)
        d.execute_script("document.getElementById('search-results').replaceChildren()")
        search(d, "What colour is the banner of House Vyd?")
        wait(d, lambda: len(d.find_elements(By.CSS_SELECTOR, "#search-results .card")) >= 1)
        assert json.loads(d.execute_script("return window.__bodies.at(-1)"))["mode"] == mode
        card = d.find_element(By.CSS_SELECTOR, "#search-results .card")
        assert card.get_attribute("data-id") == first_id
        assert "words" in card.find_element(By.CSS_SELECTOR, ".scores").text
    select.select_by_value("")  # back to the server's default: no mode sent
    search(d, "House Vyd")
    wait(d, lambda: len(d.execute_script("return window.__bodies")) == 3)
    assert "mode" not in json.loads(d.execute_script("return window.__bodies.at(-1)"))


def test_3_image_search_via_file_input(server, driver, tmp_path):
    d = driver
    d.find_element(By.ID, "search-text").clear()
    img = tmp_path / "q.png"
    make_image(3, (64, 64)).save(img)
    d.find_element(By.ID, "search-image").send_keys(str(img))
    wait(d, lambda: "results in" in d.find_element(By.ID, "search-meta").text
         and d.find_element(By.ID, "search-image-name").text == "q.png")
    assert d.find_elements(By.CSS_SELECTOR, "#search-results .card")


def test_4_oversized_image_shows_the_servers_message(server, driver, tmp_path):
    d = driver
    big = tmp_path / "big.png"
    make_image(4, (800, 800)).save(big)
    d.find_element(By.ID, "search-image").send_keys(str(big))
    wait(d, lambda: "exceeds the limit of 262144" in d.find_element(By.ID, "search-error").text)
    assert d.find_element(By.ID, "search-error").text.startswith("422: ")


def test_5_ask_streams_and_lists_cited_documents(server, driver, tmp_path):
    d = driver
    d.find_element(By.ID, "tab-ask").click()
    d.find_element(By.ID, "ask-text").send_keys("Describe the image.")
    # a scene of the training world: the shipped model captions it in several tokens (a noise
    # image gets a one-token answer, and one token cannot show an answer growing)
    import random

    from training.world import WorldSplit

    img = tmp_path / "scene.png"
    WorldSplit("test", 0).scene(random.Random(5)).render(64).save(img)
    d.find_element(By.ID, "ask-image").send_keys(str(img))
    max_tokens = d.find_element(By.ID, "ask-max")
    max_tokens.clear()
    max_tokens.send_keys("24")
    d.execute_script("""
      window.__lens = []; const el = document.getElementById('ask-answer');
      new MutationObserver(() => window.__lens.push(el.textContent.length))
        .observe(el, {childList: true, characterData: true, subtree: true});""")
    d.execute_script("""
      window.__bodies = []; const f = window.fetch;
      window.fetch = (url, opts) => {
        if (opts && opts.body) window.__bodies.push(opts.body);
        return f(url, opts); };""")
    d.find_element(By.ID, "ask-retrieval").click()  # off: the model captions the image (many tokens)
    d.find_element(By.ID, "ask-go").click()
    wait(d, lambda: "tokens/s" in d.find_element(By.ID, "ask-timings").text, timeout=120)
    sent = json.loads(d.execute_script("return window.__bodies")[-1])
    # LLaVA's order, the one the model is trained on: the image, then the question
    assert [s["type"] for s in sent["query"]["slices"]] == ["image", "text"], sent["query"]
    lens = d.execute_script("return window.__lens")
    assert len({n for n in lens if n > 0}) >= 2, lens  # the answer grew token by token
    assert not d.find_elements(By.CSS_SELECTOR, "#ask-docs li")  # no retrieval, nothing cited
    d.find_element(By.ID, "ask-retrieval").click()  # on again: the documents used are listed
    d.find_element(By.ID, "ask-go").click()
    wait(d, lambda: d.find_elements(By.CSS_SELECTOR, "#ask-docs li"), timeout=120)
    cited = d.find_elements(By.CSS_SELECTOR, "#ask-docs li")
    assert "cited" in cited[0].text and "score" in cited[0].text
    shoot(d, "ask")


def test_6_upload_markdown_with_image_search_it_then_delete(server, driver, tmp_path):
    d = driver
    md = tmp_path / "zephyr.md"
    md.write_text("# Zephyrine notes\n\nThe zephyrine lantern hangs by the quay.\n\n![the lantern](lantern.png)\n")
    make_image(6, (64, 64)).save(tmp_path / "lantern.png")
    d.find_element(By.ID, "tab-library").click()
    d.find_element(By.ID, "upload-files").send_keys(f"{md}\n{tmp_path / 'lantern.png'}")
    d.find_element(By.ID, "upload-go").click()
    wait(d, lambda: d.find_element(By.ID, "upload-summary").is_displayed())
    rows = [r.text for r in d.find_elements(By.CSS_SELECTOR, "#upload-summary tbody tr")]
    assert any(r.startswith("zephyr.md added") for r in rows), rows
    wait(d, lambda: "count" in d.find_element(By.ID, "index-stats").text)
    shoot(d, "library")
    d.find_element(By.ID, "tab-search").click()
    d.find_element(By.ID, "search-image").clear()
    d.execute_script("document.getElementById('search-image').value='';")
    search(d, "zephyrine lantern", prefix="upload:zephyr")
    wait(d, lambda: any("Zephyrine" in c.text for c in d.find_elements(By.CSS_SELECTOR, "#search-results .card")))
    card = d.find_element(By.CSS_SELECTOR, "#search-results .card")
    doc_id = card.get_attribute("data-id")
    card.click()
    wait(d, lambda: d.find_element(By.ID, "doc-dialog").is_displayed())
    # the metadata: one key per line, long values wrapped inside the dialog (issue #22)
    meta = d.find_element(By.CSS_SELECTOR, "#doc-dialog-body pre.meta")
    assert '"source": "upload:zephyr.md"' in meta.text and len(meta.text.splitlines()) > 3
    assert meta.value_of_css_property("white-space") == "pre-wrap"
    assert meta.size["width"] <= d.find_element(By.ID, "doc-dialog").size["width"]
    # Delete asks first (issue #22): dismissed, nothing is deleted; accepted, it is
    d.find_element(By.ID, "doc-delete").click()
    wait(d, lambda: not no_alert(d))
    assert doc_id in d.switch_to.alert.text
    d.switch_to.alert.dismiss()
    assert api(server, "GET", f"/documents/{doc_id}")["id"] == doc_id
    d.find_element(By.ID, "doc-delete").click()
    wait(d, lambda: not no_alert(d))
    d.switch_to.alert.accept()
    wait(d, lambda: not d.find_element(By.ID, "doc-dialog").is_displayed())
    with pytest.raises(urllib.error.HTTPError) as e:
        api(server, "GET", f"/documents/{doc_id}")
    assert e.value.code == 404


def test_6b_the_library_list_asks_before_delete(server, driver):
    d = driver
    api(server, "POST", "/documents", {"id": "aaa-to-delete", "slices": [{"type": "text", "text": "Delete me."}]})
    button = "#doc-list button[aria-label='delete aaa-to-delete']"
    library_page_with(d, button)
    d.find_element(By.CSS_SELECTOR, button).click()
    wait(d, lambda: not no_alert(d))
    d.switch_to.alert.dismiss()
    assert api(server, "GET", "/documents/aaa-to-delete")["id"] == "aaa-to-delete"
    d.find_element(By.CSS_SELECTOR, button).click()
    wait(d, lambda: not no_alert(d))
    d.switch_to.alert.accept()
    wait(d, lambda: not d.find_elements(By.CSS_SELECTOR, button))
    with pytest.raises(urllib.error.HTTPError) as e:
        api(server, "GET", "/documents/aaa-to-delete")
    assert e.value.code == 404
    d.find_element(By.ID, "tab-search").click()  # where the next test starts


def test_6c_the_library_deletes_a_whole_source_after_saying_how_many(server, driver):
    d = driver
    for i in range(3):
        api(server, "PUT", f"/documents/zz-chunk-{i}", {"slices": [{"type": "text", "text": f"Chunk {i}."}],
                                                        "metadata": {"source": "upload:zz-notes.md"}})
    button = "#doc-list button[aria-label='delete source upload:zz-notes.md']"
    library_page_with(d, button)
    d.find_elements(By.CSS_SELECTOR, button)[0].click()
    wait(d, lambda: not no_alert(d))
    assert "Delete all 3 documents of upload:zz-notes.md?" in d.switch_to.alert.text
    d.switch_to.alert.dismiss()
    assert api(server, "POST", "/documents/count", {"filters": {"source": "upload:zz-notes.md"}})["count"] == 3
    d.find_elements(By.CSS_SELECTOR, button)[0].click()
    wait(d, lambda: not no_alert(d))
    d.switch_to.alert.accept()
    wait(d, lambda: not d.find_elements(By.CSS_SELECTOR, button))
    assert api(server, "POST", "/documents/count", {"filters": {"source": "upload:zz-notes.md"}})["count"] == 0
    assert d.find_element(By.ID, "doc-page").get_attribute("data-last-deleted") == "3"
    d.find_element(By.ID, "tab-search").click()


def test_6d_explain_shows_which_slices_aligned(server, driver):
    d = driver
    d.find_element(By.ID, "tab-search").click()
    d.find_element(By.ID, "search-explain").click()
    try:
        search(d, "What colour is the banner of House Vyd?")
        wait(d, lambda: d.find_elements(By.CSS_SELECTOR, "#search-results .card .explanation li"))
        card = d.find_element(By.CSS_SELECTOR, "#search-results .card")
        [line] = card.find_elements(By.CSS_SELECTOR, ".explanation li")  # one query slice
        assert line.text.startswith("query slice 1 → ") and "weight" in line.text and "cosine" in line.text
        shoot(d, "explain")
    finally:
        d.find_element(By.ID, "search-explain").click()


def test_6e_a_slow_older_page_never_draws_over_the_newer_one(server, driver):
    d = driver
    library_page_with(d, "#doc-list li")
    if not d.find_element(By.ID, "doc-next").is_enabled():  # a page with pages either side
        d.find_element(By.ID, "doc-prev").click()
        library_settled(d)
    if not d.find_element(By.ID, "doc-prev").is_enabled():
        d.find_element(By.ID, "doc-next").click()
        library_settled(d)
    assert d.find_element(By.ID, "doc-prev").is_enabled() and d.find_element(By.ID, "doc-next").is_enabled()
    shown = d.find_element(By.ID, "doc-page").text
    first_id = d.find_element(By.CSS_SELECTOR, "#doc-list li span").text
    # the next /documents/scroll answer (the page after) arrives 1.5 s late
    d.execute_script("""
      const real = window.fetch; let slowed = false;
      window.fetch = (url, init) => {
        if (!slowed && String(url).includes('/documents/scroll')) {
          slowed = true;
          return new Promise((ok) => setTimeout(ok, 1500)).then(() => real(url, init));
        }
        return real(url, init);
      };""")
    try:
        d.find_element(By.ID, "doc-next").click()
        assert d.find_element(By.ID, "doc-list").get_attribute("aria-busy") == "true"
        d.find_element(By.ID, "doc-prev").click()  # back, answered at once
        library_settled(d)
        time.sleep(2)  # the late answer has come and gone
        assert d.find_element(By.ID, "doc-page").text == shown
        assert d.find_element(By.CSS_SELECTOR, "#doc-list li span").text == first_id
        assert d.find_element(By.ID, "doc-list").get_attribute("aria-busy") == "false"
    finally:
        d.get(server + "/ui")  # a fresh page: the real fetch again
    d.find_element(By.ID, "tab-search").click()


def test_7_document_text_with_markup_renders_inert(server, driver):
    d = driver
    evil = 'Quokka <script>alert("x")</script> <img src=x onerror=alert(1)> end'
    api(server, "POST", "/documents", {"id": "evil-doc", "slices": [{"type": "text", "text": evil}],
                                       "metadata": {"title": "<b onmouseover=alert(2)>t</b>"}})
    search(d, "Quokka script alert", prefix="")
    card = wait(d, lambda: d.find_element(By.CSS_SELECTOR, "#search-results .card[data-id='evil-doc']"))
    evil_card = "#search-results .card[data-id='evil-doc']"
    wait(d, lambda: "<b onmouseover" in d.find_element(By.CSS_SELECTOR, evil_card).text)
    card = d.find_element(By.CSS_SELECTOR, evil_card)
    assert evil in card.text and "<b onmouseover=alert(2)>t</b>" in card.text  # shown as text
    assert not d.find_elements(By.CSS_SELECTOR,
                               "#search-results script, #search-results img[src='x'], #search-results b")
    time.sleep(0.5)
    assert no_alert(d)
    api(server, "DELETE", "/documents/evil-doc")


def test_8_ui_headers_csp_and_page_weight(server):
    with urllib.request.urlopen(server + "/ui", timeout=10) as r:
        csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    weight = sum(len(urllib.request.urlopen(server + p, timeout=10).read())
                 for p in ("/ui", "/ui/app.js", "/ui/style.css"))
    assert weight <= 200_000, weight
    with pytest.raises(urllib.error.HTTPError) as e:  # the page's files need no key; the API does
        urllib.request.urlopen(server + "/documents", timeout=10)
    assert e.value.code == 401


def test_9_no_console_errors_on_the_happy_path(server, driver):
    d = driver
    d.get_log("browser")  # drop what the earlier tests (401s and 422s on purpose) logged
    d.get(server + "/ui")  # sessionStorage keeps the key
    for tab in ("tab-ask", "tab-library", "tab-search"):
        d.find_element(By.ID, tab).click()
    search(d, "House")
    wait(d, lambda: len(d.find_elements(By.CSS_SELECTOR, "#search-results .card")) >= 1)
    d.find_element(By.ID, "tab-library").click()
    wait(d, lambda: "count" in d.find_element(By.ID, "index-stats").text)
    time.sleep(0.5)
    assert console_errors(d) == []
