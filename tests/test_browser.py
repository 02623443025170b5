"""The upload page in a real headless Chromium (Debian's, driven by Playwright) against the
live server and the whole pipeline: sign in, upload the three photos, watch them succeed."""

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import DATA, REPO

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]

ARTIFACTS = REPO / "test-artifacts"
PHOTOS = [DATA / name for name in ("bolete.jpg", "fox.png", "toaster.png")]
PASSWORD = "browser-password"
# Debian's Chromium, never a browser Playwright would download.
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Generous: two random-weight ResNet50 workers share two cores with everything else.
PIPELINE_TIMEOUT_MS = 300_000


@pytest.fixture
def browser_user(django_user_model):
    return django_user_model.objects.create_user("erin", password=PASSWORD)


@pytest.fixture
def browser(browser_user, live_server):
    # Started after every database write: Django refuses ORM calls in a thread where
    # Playwright's event loop runs.
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, live_server) -> Page:
    """A signed-in page at desktop width."""
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=live_server.url)
    page = context.new_page()
    page.goto("/")
    expect(page).to_have_url(f"{live_server.url}/accounts/login/?next=/")
    page.get_by_label("User name").fill("erin")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(f"{live_server.url}/")
    page.wait_for_load_state("load")  # the page's script has attached its handlers
    yield page
    context.close()


def screenshot(page: Page, name: str) -> None:
    # Every image (thumbnails come from the job-image view) must have loaded first.
    page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    for width in (1280, 390):
        page.set_viewport_size({"width": width, "height": 900})
        page.screenshot(path=ARTIFACTS / f"{name}-{width}.png", full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})


def expect_succeeded(page: Page, count: int) -> None:
    jobs = page.locator("#jobs > li")
    expect(jobs).to_have_count(count)
    for index in range(count):
        expect(jobs.nth(index).locator(".status")).to_have_text(
            "succeeded", timeout=PIPELINE_TIMEOUT_MS
        )
        expect(jobs.nth(index).locator(".preds li")).to_have_count(5)


def test_three_photos_uploaded_through_the_page_succeed_with_labels(pipeline, page):
    expect(page.locator(".warning")).to_contain_text("random weights")
    page.set_input_files("#files", PHOTOS)
    page.get_by_role("button", name="Upload").click()
    expect_succeeded(page, 3)
    names = page.locator("#jobs .name").all_inner_texts()
    assert sorted(names) == sorted(photo.name for photo in PHOTOS)
    for label in page.locator("#jobs .preds .label").all_inner_texts():
        assert label.strip()
    expect(page.locator("#announce")).not_to_be_empty()
    screenshot(page, "upload-page")

    page.locator("#batch-link a").click()
    expect(page.locator("tbody tr")).to_have_count(3)
    expect(page.locator(".counts")).to_contain_text("succeeded 3")
    screenshot(page, "batch-page")

    page.locator("tbody tr a").first.click()
    expect(page.locator(".preds li")).to_have_count(5)
    expect(page.locator("img[src*='/image/480/']")).to_have_js_property("naturalWidth", 480)
    screenshot(page, "job-page")


def test_the_page_works_from_the_keyboard_alone(pipeline, page):
    def tab_to(selector: str) -> None:
        for _ in range(20):
            page.keyboard.press("Tab")
            if page.evaluate(f"document.activeElement.matches({selector!r})"):
                return
        raise AssertionError(f"Tab never reached {selector}")

    # Playwright intercepts file choosers only while a listener exists; one registered now
    # rules out a press racing the interception that expect_file_chooser switches on.
    page.on("filechooser", lambda chooser: None)
    # The drop zone opens the file picker with Enter, as a button does.
    tab_to("#dropzone")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    chooser.value.set_files(PHOTOS[1])
    # And so does the file input itself; then the Upload button is pressed with Space.
    tab_to("#files")
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Space")
    chooser.value.set_files(PHOTOS[2])
    tab_to("#upload-button")
    page.keyboard.press("Space")
    expect_succeeded(page, 1)
    assert page.locator("#jobs .name").inner_text() == PHOTOS[2].name


def test_a_refused_upload_shows_its_reason(page, tmp_path: Path):
    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("just text, renamed")
    page.set_input_files("#files", not_an_image)
    page.keyboard.press("Tab")  # leave the picker; submitting is the button's job
    page.get_by_role("button", name="Upload").click()
    item = page.locator("#jobs > li")
    expect(item.locator(".status")).to_have_text("failed")
    expect(item.locator(".error")).to_contain_text("notes.jpg: file is not an image")
