"""The web page in a real browser: headless Chromium (Debian's `chromium` and `chromium-driver`)
driven by selenium against a real uvicorn server over the tiny index."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from indexer.monitor.queries import QueryStore
from indexer.query.engine import QueryEngine
from indexer.server import create_app
from indexer.store.root import IndexRoot
from tests.server.fakes import FakeEngine, alert, clip_file, commit, entry
from tests.server.live import running_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WAIT_S = 60


def chrome(offline: bool = False):
    """A headless Chromium, or a failure that says what to install. `offline`: every host name
    but 127.0.0.1 fails to resolve, as on a machine with no network."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists() and not shutil.which(Path(p).name)]
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: `bash scripts/test-deps.sh` installs chromium and "
                    "chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1200,1600"):
        options.add_argument(flag)
    if offline:
        options.add_argument("--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1")
    # the driver named outright: selenium never looks for (or downloads) another one
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@contextlib.contextmanager
def serving(app, driver) -> Iterator[str]:
    """`running_server`, and the page left before the server stops: its alert feed is a response
    that never ends, which the server would wait for."""
    with running_server(app) as url:
        try:
            yield url
        finally:
            driver.get("about:blank")


@pytest.mark.timeout(240)
def test_ask_then_click_a_cited_thumbnail_to_play_the_source_there(tiny_index, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = chrome()
    engine = QueryEngine.open(IndexRoot.at(tiny_index.root))
    try:
        roots = {video.path.parent for video in tiny_index.videos.values()}
        with serving(create_app(engine, media_roots=roots), driver) as url:
            driver.get(url + "/")
            wait = WebDriverWait(driver, WAIT_S)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#stream-choices input"))  # streams polled
            driver.find_element(By.ID, "choose-b").click()
            driver.find_element(By.ID, "from-s").send_keys("3")
            driver.find_element(By.ID, "question").send_keys("What is shown on the screen?")
            driver.find_element(By.ID, "ask-button").click()

            wait.until(lambda d: d.find_element(By.ID, "answer-text").text.strip())
            thumbs = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timelines button.thumb"))
            wait.until(lambda d: d.execute_script(
                "return [...document.querySelectorAll('#timelines img')].every(i => i.complete && i.naturalWidth > 0)"))
            assert all(t.get_attribute("data-stream") == "b" for t in thumbs)
            assert driver.find_element(By.CSS_SELECTOR, "#timelines img").get_attribute("alt")

            thumb = thumbs[-1]
            start = float(thumb.get_attribute("data-start"))
            assert start >= 3.0  # the time filter reached the engine
            thumb.click()
            state = wait.until(lambda d: d.execute_script(
                "const v = document.getElementById('player');"
                "if (v.error) return {error: v.error.code};"
                "return v.readyState >= 1 && !v.seeking && v.currentTime > 0 ? {time: v.currentTime} : null;"))
            driver.save_screenshot(str(tmp_path / "page.png"))
            assert "error" not in state, f"the browser could not play the source (MediaError {state})"
            assert abs(state["time"] - start) <= tiny_index.sample_interval_s, (state, start)
    finally:
        driver.quit()
        engine.close()


@pytest.mark.timeout(120)
def test_a_local_source_outside_the_media_roots_is_not_played_and_the_page_says_how_to(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    video = tmp_path / "v.mp4"
    video.write_bytes(b"\0" * 1024)
    engine = FakeEngine([entry("file", str(video), "file")])  # its answer cites "file" 0:00-0:01
    driver = chrome()
    try:
        with serving(create_app(engine, refresh_interval_s=0), driver) as url:  # no media_roots: the default
            driver.get(url + "/")
            wait = WebDriverWait(driver, WAIT_S)
            driver.find_element(By.ID, "question").send_keys("What is shown?")
            driver.find_element(By.ID, "ask-button").click()
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timelines button.thumb"))[0].click()
            caption = wait.until(lambda d: d.find_element(By.ID, "player-caption").text)
            assert "--media-root DIR" in caption and caption.startswith("file is a local file"), caption
            assert not driver.execute_script("return document.getElementById('player').getAttribute('src')")
    finally:
        driver.quit()


@pytest.mark.timeout(120)
def test_live_streams_show_their_latest_frame_as_it_moves_on(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    engine = FakeEngine([entry("cam", "rtsp://127.0.0.1:8554/cam", "rtsp", live=True)])
    driver = chrome()
    try:
        with serving(create_app(engine, refresh_interval_s=0), driver) as url:
            driver.get(url + "/")
            wait = WebDriverWait(driver, WAIT_S)
            latest = "li[data-stream='cam'] img.latest"
            shown = "const i = document.querySelector(arguments[0]);" \
                    "return i && i.complete && i.naturalWidth > 0 ? [i.dataset.frame, i.alt] : null;"
            assert wait.until(lambda d: d.execute_script(shown, latest)) == ["1", "latest frame of cam, at 0:01"]
            new = engine.add_frame("cam", 2.0)  # a live ingest committed a frame: the page polls and shows it
            wait.until(lambda d: (d.execute_script(shown, latest) or [None])[0] == str(new))
            assert driver.execute_script(shown, latest) == [str(new), "latest frame of cam, at 0:02"]
            assert "live" in driver.find_element(By.CSS_SELECTOR, "li[data-stream='cam']").text
    finally:
        driver.quit()


@pytest.mark.timeout(120)
def test_monitor_adds_a_query_shows_alerts_as_they_are_committed_and_plays_their_clip(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    root = tmp_path / "index"
    engine = FakeEngine([entry("cam", "rtsp://127.0.0.1:8554/cam", "rtsp", live=True)], root=root)
    token = "page-token-0123456789abcdef"
    driver = chrome()
    try:
        with serving(create_app(engine, token=token, refresh_interval_s=0), driver) as url:
            driver.get(f"{url}/?token={token}")  # the page keeps it; EventSource must send it as ?token=
            wait = WebDriverWait(driver, WAIT_S)
            tile = "const i = document.querySelector('#live-tiles li[data-stream=\"cam\"] img');" \
                   "return i && i.complete && i.naturalWidth > 0 ? i.dataset.frame : null;"
            assert wait.until(lambda d: d.execute_script(tile)) == "1"
            new = engine.add_frame("cam", 2.0)
            wait.until(lambda d: d.execute_script(tile) == str(new))  # the tile follows the live stream

            # a standing query from the form; pause it
            driver.find_element(By.ID, "watch-condition").send_keys("a red van at the gate")
            driver.find_element(By.ID, "watch-streams").send_keys("cam")
            driver.find_element(By.ID, "watch-webhook").send_keys("https://hooks.example/van")
            driver.find_element(By.ID, "watch-add").click()
            query = ("const q = document.querySelector(\"li[data-query='q1']\"); "
                     "return q && [q.className, q.textContent];")
            listed = wait.until(lambda d: d.execute_script(query))  # the list is redrawn: no element kept
            secret = QueryStore(IndexRoot.at(root)).get("q1").webhooks[0].secret
            assert listed[0] == "query" and "a red van at the gate" in listed[1] and "cam" in listed[1]
            assert secret in driver.find_element(By.ID, "watch-status").text  # shown once, to copy
            driver.find_element(By.CSS_SELECTOR, "li[data-query='q1'] button.toggle").click()
            assert wait.until(lambda d: (d.execute_script(query) or [""])[0] == "query paused")
            assert QueryStore(IndexRoot.at(root)).get("q1").paused

            # alerts committed after the page loaded arrive by the feed, newest on top
            wait.until(lambda d: d.find_element(By.ID, "feed-status").text.startswith("Live"))
            assert not driver.find_elements(By.CSS_SELECTOR, "#alerts li")
            commit(root, [alert("a1", "open", query_id="q1")])
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#alerts li[data-alert='a1'][data-status='open']"))
            commit(root, [alert("a1", "closed", query_id="q1", clip=clip_file(root, "a1.mp4")),
                          alert("b2", "open", query_id="q1", wall_start=2000.0, thumbnail=None)])
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#alerts li[data-alert='a1'][data-status='closed']"))
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#alerts li[data-alert='b2']"))
            assert [li.get_attribute("data-alert") for li in driver.find_elements(By.CSS_SELECTOR, "#alerts li")] \
                == ["b2", "a1"]
            card = driver.find_element(By.CSS_SELECTOR, "#alerts li[data-alert='a1'] button")
            assert "CLOSED" in card.text.upper() and "a red van" in card.text and "Yes, a red van." in card.text
            wait.until(lambda d: d.execute_script(
                "const i = document.querySelector('#alerts li[data-alert=\"a1\"] img');"
                "return i.complete && i.naturalWidth > 0;"))

            card.click()
            video = driver.find_element(By.ID, "alert-player")
            assert video.get_attribute("src") == f"{url}/api/alerts/a1/clip?token={token}"
            state = wait.until(lambda d: d.execute_script(
                "const v = document.getElementById('alert-player');"
                "return v.error ? {error: v.error.code} : v.readyState >= 1 ? {duration: v.duration} : null;"))
            driver.save_screenshot(str(tmp_path / "monitor.png"))
            assert "error" not in state, f"the browser could not play the clip (MediaError {state})"
            assert abs(state["duration"] - 2.0) < 0.2

            driver.find_element(By.CSS_SELECTOR, "#alerts li[data-alert='b2'] button").click()
            assert "still open" in driver.find_element(By.ID, "alert-caption").text
    finally:
        driver.quit()


@pytest.mark.timeout(120)
def test_docs_render_every_operation_with_no_network(tmp_path):
    """/docs in a browser that cannot resolve any host but 127.0.0.1: Swagger UI's script, styles
    and favicon come from the server itself, and it draws the API's operations."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    engine = FakeEngine([entry("cam", "rtsp://127.0.0.1:8554/cam", "rtsp", live=True)])
    app = create_app(engine, refresh_interval_s=0)
    driver = chrome(offline=True)
    try:
        with serving(app, driver) as url:
            driver.get(url + "/docs")
            wait = WebDriverWait(driver, WAIT_S)
            wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-summary-path"))
            shown = {e.get_attribute("data-path") for e in driver.find_elements(By.CSS_SELECTOR,
                                                                                ".opblock-summary-path")}
            documented = set(app.openapi()["paths"])
            assert "/api/ask" in documented and shown == documented
            assert "llamavid-indexer" in driver.find_element(By.CSS_SELECTOR, ".info .title").text
            fetched = driver.execute_script(
                "return performance.getEntriesByType('resource').map(e => e.name).concat([location.href]);")
            assert any(u.endswith("swagger-ui-bundle.js") for u in fetched)
            assert all(u.startswith(url) for u in fetched), fetched
    finally:
        driver.quit()
