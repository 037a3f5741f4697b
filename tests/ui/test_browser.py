"""The UI in a real browser: `streamlit run ui/main.py` against a real backend, driven by headless Chromium.

This is what AppTest cannot show: the page as the browser renders it (the charts are drawn, not only sent), the
streaming fragment's own timer refreshing the page with nobody clicking, and the page's text after real clicks.
Screenshots land in ``test-artifacts/``; ``ui-overview.png`` is the one committed as ``docs/ui.png``.

Chromium is Debian's (``require_tool``: under CI=true a missing browser fails, never skips); Playwright only
drives it (``executable_path``), it never downloads a browser.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx2
import pytest
from playwright.sync_api import Browser, Locator, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from app.tools.processes import free_port
from tests.support import ARTIFACTS, ServerProcess, require_tool
from tests.ui.support import StreamlitProcess

pytestmark = pytest.mark.slow

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
VIEWPORT = {"width": 1440, "height": 3000}
WAIT_S = 60.0


@pytest.fixture(scope="module")
def chromium() -> str:
    return require_tool("chromium")


@pytest.fixture(scope="module")
def ui(backend: ServerProcess) -> Iterator[StreamlitProcess]:
    with StreamlitProcess(backend.url) as process:
        yield process


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser: Browser, ui: StreamlitProcess) -> Iterator[Page]:
    """A fresh browser session on the UI, once the page says the backend is ready."""
    context = browser.new_context(viewport=VIEWPORT)
    tab = context.new_page()
    tab.set_default_timeout(WAIT_S * 1000)
    tab.goto(ui.url)
    tab.get_by_text("Backend ready").first.wait_for()
    yield tab
    context.close()


def metric(page: Page, label: str) -> str:
    card = page.locator('[data-testid="stMetric"]').filter(has=page.get_by_text(label, exact=True))
    return card.locator('[data-testid="stMetricValue"]').inner_text().strip()


def count(page: Page, label: str) -> int:
    return int(metric(page, label).replace(",", ""))


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT_S) -> None:
    """Poll a condition of the page with a deadline (the page updates itself; there is no event to wait on)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting until {what}")
        time.sleep(0.1)  # polling interval, not synchronisation


def alert(page: Page, pattern: str) -> str:
    """The text of the banner (success, warning, error) matching ``pattern``, once it is shown."""
    banner = page.locator('[data-testid="stAlertContainer"]').filter(has_text=re.compile(pattern))
    banner.wait_for()
    return banner.inner_text()


def assert_no_traceback(page: Page) -> None:
    text = page.locator("body").inner_text()
    assert "Traceback" not in text
    assert "unexpected problem" not in text


def screenshot(page: Page, name: str, *, above: str | None = None) -> Path:
    """Save the page (down to the heading ``above``, if given) under test-artifacts/."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    page.mouse.wheel(0, -100_000)  # Streamlit scrolls its own container; back to the top for the picture
    clip = None
    if above is not None:
        box = page.get_by_role("heading", name=above).bounding_box()
        assert box is not None
        clip = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": box["y"] - 24}
    with contextlib.suppress(PlaywrightTimeoutError):  # cosmetic: a picture without the "running" indicator
        page.get_by_test_id("stStatusWidget").wait_for(state="hidden", timeout=5_000)
    page.screenshot(path=path, clip=clip)
    return path


def drawn_charts(page: Page) -> int:
    """Charts that Vega has actually drawn (a canvas or svg inside the chart element)."""
    return page.locator('[data-testid="stVegaLiteChart"] canvas, [data-testid="stVegaLiteChart"] svg').count()


def test_generate_batch_draws_the_charts_and_an_extreme_reading_is_flagged(page: Page):
    assert count(page, "Readings") == 0
    page.get_by_role("button", name="Generate Batch").click()
    wait_until(lambda: drawn_charts(page) >= 4, "the signal and score charts are drawn")
    wait_until(lambda: count(page, "Readings") == 64, "the Readings counter shows the batch")
    flagged = count(page, "Flagged")

    page.get_by_role("button", name="Inject Extreme Reading").click()
    wait_until(lambda: count(page, "Readings") == 65, "the extreme reading is counted")
    assert count(page, "Flagged") == flagged + 1 > 0
    assert metric(page, "Recall") != "\u2014"
    assert page.get_by_text("detected").first.is_visible()
    assert_no_traceback(page)
    assert screenshot(page, "ui-browser-inject.png").stat().st_size > 0


def why_panel(page: Page) -> Locator:
    """The bordered container of the why-panel (the innermost one holding its heading)."""
    return page.locator('[data-testid="stVerticalBlock"]').filter(has=page.get_by_text("Why flagged")).last


def tooltip_after_hovering(page: Page, mark: Locator, shows: str) -> str:
    """Hover a Vega mark and return the tooltip's text once it shows ``shows`` (Vega fills one shared tooltip
    element on each hover: waiting for the content, not a delay, says this hover's tooltip is up)."""
    mark.hover()
    page.wait_for_function(
        "text => (document.querySelector('#vg-tooltip-element')?.innerText || '').includes(text)", arg=shows
    )
    return page.locator("#vg-tooltip-element").inner_text()


def fields(tooltip: str) -> dict[str, str]:
    """A Vega tooltip's rows (a key cell, then a value cell) as a dict."""
    cells = [cell.strip() for cell in tooltip.split("\n") if cell.strip()]
    return dict(zip(cells[::2], cells[1::2], strict=False))


def test_a_flagged_reading_shows_why_on_hover_in_the_bars_and_in_the_details(page: Page):
    page.get_by_role("button", name="Inject Extreme Reading").click()
    panel = why_panel(page)
    panel.get_by_text("the last flagged reading").wait_for()
    headline = panel.get_by_text(re.compile(r"has \d+ % of the credit"))  # not the bar chart's axis title
    top = headline.locator("strong").inner_text()
    assert top in {"voltage", "current", "frequency"}
    assert "outside the EN 50160 limits" in headline.inner_text(), "an extreme reading breaks the supply limits"
    panel.get_by_test_id("stDataFrame").wait_for()  # the per-feature details

    # The bar chart of the shares, drawn: one bar per feature of the one flagged reading.
    bars = panel.locator('[data-testid="stVegaLiteChart"]').locator("g.mark-rect path")
    wait_until(lambda: bars.count() == 3, "the reading's three shares are drawn as bars")
    bar = fields(tooltip_after_hovering(page, bars.first, "share"))
    assert bar["feature"] in {"voltage", "current", "frequency"}
    assert bar["share"].endswith("%")
    assert bar["top feature"] == top

    # The flagged marker on the voltage chart says why when hovered, at the same time as the bar names it.
    voltage = page.locator('[data-testid="stVegaLiteChart"]').first.locator("g.mark-symbol path").first
    marker = fields(tooltip_after_hovering(page, voltage, "why: top feature"))
    assert marker["outcome"] == "detected"
    assert marker["why: top feature"] == top
    assert [marker[f"{f} share"].endswith("%") for f in ("voltage", "current", "frequency")] == [True] * 3
    assert marker["voltage vs training band"].startswith("above ")
    assert marker["voltage EN 50160"].startswith("OUTSIDE 207 to 253 V")
    assert float(marker["voltage z"]) > 10
    assert marker["time (UTC)"] == bar["time (UTC)"]
    assert_no_traceback(page)
    screenshot(page, "ui-browser-why.png")


def test_streaming_refreshes_the_page_by_itself_until_stopped(page: Page):
    page.get_by_role("button", name="Start streaming").click()
    # Nobody clicks from here on: only the fragment's run_every timer can add batches.
    wait_until(lambda: count(page, "Readings") >= 3 * 64, "three batches were streamed")
    assert page.get_by_role("button", name="Stop streaming").is_visible()
    page.get_by_role("button", name="Stop streaming").click()
    page.get_by_role("button", name="Start streaming").wait_for()
    assert_no_traceback(page)


def test_an_unreachable_backend_shows_the_banner_and_the_page_keeps_working(page: Page):
    url = f"http://127.0.0.1:{free_port()}"
    field = page.get_by_role("textbox", name="Backend URL")
    field.fill(url)
    field.press("Enter")
    banner = alert(page, re.escape(f"Backend unreachable at {url}: Connection refused"))
    assert "keeps running" in banner
    page.get_by_role("button", name="Generate Batch").click()
    page.get_by_role("button", name="Burst Load").click()
    report = alert(page, r"Burst Load \(done\)")
    assert re.search(r"0 ok, \d+ errors", report), report
    assert count(page, "Readings") == 0
    assert_no_traceback(page)
    screenshot(page, "ui-browser-unreachable.png")


def test_overview_screenshot_with_a_stream_and_a_concurrent_burst(page: Page):
    """The picture in the README (docs/ui.png): some streamed batches, an injected fault, a concurrent burst."""
    for batches in range(1, 7):
        page.get_by_role("button", name="Generate Batch").click()
        wait_until(lambda n=batches: count(page, "Readings") == 64 * n, f"{batches} batches are counted")
    page.get_by_role("spinbutton", name="Requests per burst").fill("300")
    page.get_by_role("spinbutton", name="Requests per burst").press("Enter")
    page.get_by_role("button", name="Concurrent Burst", exact=True).click()
    report = alert(page, r"Concurrent Burst \(done\)")
    assert "300 requests" in report
    assert "300 ok, 0 errors" in report
    wait_until(lambda: drawn_charts(page) >= 7, "the live and load charts are drawn")
    assert_no_traceback(page)
    assert screenshot(page, "ui-overview.png", above="Backend and model").stat().st_size > 0


def test_closing_the_tab_ends_its_stream_subscription(browser: Browser, backend: ServerProcess, tmp_path: Path):
    """A session's NATS subscription goes with the session: a closed tab leaves no connection (and no thread)
    behind in the UI process, however many visitors came and went."""
    from tests.stream.support import NatsServer

    def connections(server: NatsServer) -> int:
        return int(httpx2.get(f"{server.url}/connz", timeout=10).json()["num_connections"])

    with (
        NatsServer(tmp_path / "store") as nats_server,
        StreamlitProcess(backend.url, NATS_URL=nats_server.nats_url) as ui,
    ):
        context = browser.new_context(viewport=VIEWPORT)
        tab = context.new_page()
        tab.set_default_timeout(WAIT_S * 1000)
        tab.goto(ui.url)
        tab.get_by_text("Subscribed").first.wait_for()
        wait_until(lambda: connections(nats_server) == 1, "the page's subscription is the server's one client")
        context.close()
        wait_until(lambda: connections(nats_server) == 0, "the closed tab's subscription has ended")
