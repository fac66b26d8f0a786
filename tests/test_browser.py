"""The workbench in a real browser: Debian's Chromium driven by Playwright (pytest-playwright).

Picks the fusion task, runs an example, opens the heatmap, runs a two-system comparison, and
saves full-page screenshots to docs/_screenshots/ (gitignored; the best are copied to
docs/screenshots/ by hand). Without Chromium this fails, unless BERTGEN_SKIP_BROWSER=1.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("BERTGEN_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parents[1] / "docs" / "_screenshots"
NOT_EMPTY = re.compile(r"\S")
TIMEOUT = 60_000  # ms: a first generation loads the model


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args):
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        if os.environ.get("BERTGEN_SKIP_BROWSER") == "1":
            pytest.skip("BERTGEN_SKIP_BROWSER=1 and no Chromium")
        pytest.fail(f"Chromium not found at {CHROMIUM}: `apt-get install chromium`, set BERTGEN_CHROMIUM, "
                    "or set BERTGEN_SKIP_BROWSER=1 to skip the browser tests")
    return {**browser_type_launch_args, "executable_path": CHROMIUM,
            "args": ["--disable-gpu", "--no-sandbox", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run"]}


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """The app on a free local port, offering only tiny random checkpoints (never the bundled
    ones: the test must not depend on what trained weights happen to write)."""
    from test_app import make_tiny_checkpoint

    import ui
    from bertgen import tasks
    from ui.settings import Settings

    root = tmp_path_factory.mktemp("browser")
    bundled, tasks.BUNDLED_DIR = tasks.BUNDLED_DIR, root / "no-bundled-checkpoints"
    make_tiny_checkpoint(root / "models" / "tiny-fusion", "sentence-fusion")
    make_tiny_checkpoint(root / "models" / "tiny-fusion-b", "sentence-fusion", seed=1)
    old_temp, os.environ["GRADIO_TEMP_DIR"] = os.environ.get("GRADIO_TEMP_DIR"), str(root / "gradio")
    demo = ui.build_app(Settings(models_dir=root / "models", runs_dir=root / "runs"))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=port, quiet=True,
                **ui.launch_kwargs())
    try:
        yield demo.local_url
    finally:
        demo.close()
        tasks.BUNDLED_DIR = bundled
        if old_temp is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = old_temp


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_generate_attention_and_compare(page, app_url):
    from playwright.sync_api import expect

    page.set_viewport_size({"width": 1280, "height": 900})
    page.goto(app_url)
    # Fusion task (switch away and back, so the task change handler runs too).
    page.get_by_role("radio", name="Sentence splitting").check()
    expect(page.locator("#task_about")).to_contain_text("One long sentence in", timeout=TIMEOUT)
    page.get_by_role("radio", name="Sentence fusion").check()
    expect(page.locator("#task_about")).to_contain_text("Two sentences in", timeout=TIMEOUT)

    # An example, generated.
    page.locator("#examples").get_by_text("The lighthouse was built in 1872", exact=False).click()
    expect(page.locator("#input_text textarea")).to_have_value(re.compile("lighthouse"))
    page.locator("#generate_btn").click()
    expect(page.locator("#stats")).to_contain_text("tokens/s", timeout=TIMEOUT)
    expect(page.locator("#output_text textarea")).to_have_value(NOT_EMPTY)
    shot(page, "generate")

    # The heatmap of that output.
    page.get_by_role("tab", name="Attention", exact=True).click()
    expect(page.locator("#attention_source")).to_contain_text("while writing", timeout=TIMEOUT)
    expect(page.locator("#heatmap .js-plotly-plot .heatmaplayer image")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#attention_highlight")).to_be_visible()
    shot(page, "attention")

    # Two systems side by side.
    page.get_by_role("tab", name="Compare", exact=True).click()
    page.locator("#compare_reference textarea").fill("The lighthouse, built in 1872, guided ships along the rocky coast for a century.")
    page.locator("#compare_btn").click()
    expect(page.locator("#compare_table")).to_contain_text("tokens/s", timeout=TIMEOUT)
    for i in (0, 1):
        expect(page.locator(f"#cmp{i}_output textarea")).to_have_value(NOT_EMPTY)
        expect(page.locator(f"#cmp{i}_heatmap .js-plotly-plot .heatmaplayer image")).to_be_visible(timeout=TIMEOUT)
    expect(page.locator("#compare_table")).to_contain_text("BLEU")
    shot(page, "compare")
