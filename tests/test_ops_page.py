"""The operations page in a real headless Chromium against the live server: a staff member
sees the figures /metrics serves and the database holds, drawn as charts; others are refused."""

import re
import threading

import pytest
import requests
from django.core.cache import cache
from django.db import connection
from playwright.sync_api import Page, expect, sync_playwright

from predictions.metrics import FIGURES_KEY
from predictions.models import Job
from registry.models import ModelVersion
from tests.factories import JobFactory, UserFactory
from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS
from tests.test_metrics import SCRAPER, samples
from tests.test_operations import METRICS_TOKEN, make_jobs, metrics_figures

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# UserFactory's password.
PASSWORD = "pw-for-tests"
QUEUED = ("queued", "preprocessed", "submitted")


def shown(value) -> str:
    """A count as the page writes it; "–" for one not known."""
    return "–" if value is None else str(int(value))


def shown_ms(seconds) -> str:
    return "–" if seconds is None else f"{seconds * 1000:.1f}"


def signed_in(browser, base_url: str, username: str) -> Page:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, base_url=base_url)
    page = context.new_page()
    page.goto("/accounts/login/?next=/ops/")
    page.get_by_label("User name").fill(username)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state("load")
    return page


def test_staff_see_the_figures_of_metrics_and_the_database_as_charts(
    settings, live_server, kafka_topics
):
    settings.METRICS_TOKEN = METRICS_TOKEN
    # One reading for the whole test: the page and the scrape show the same count.
    settings.METRICS_JOBS_REFRESH_SECONDS = 3600
    cache.delete(FIGURES_KEY)
    expected = make_jobs()
    second = ModelVersion.objects.get(model__name="resnet", version=2)
    timed = {
        name
        for name, figures in expected.items()
        if any(v is not None for q in figures["stage_seconds"].values() for v in q.values())
    }
    staff = UserFactory(is_staff=True)
    # Every ORM call before the browser starts: Django refuses them where its loop runs.
    scraped = samples(requests.get(f"{live_server.url}/metrics", headers=SCRAPER).text)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = signed_in(browser, live_server.url, staff.username)
        expect(page).to_have_url(f"{live_server.url}/ops/")
        expect(page.locator("#ops")).to_have_attribute("data-drawn", re.compile(r".+"))
        expect(page.get_by_role("link", name="operations")).to_be_visible()

        for name, figures in expected.items():
            from_metrics = metrics_figures(scraped, name)
            assert {key: from_metrics[key] for key in figures} == figures, name
            expect_page_shows(page, name, from_metrics)
        queued = scraped[("inferencehub_jobs", (("status", "queued"),))]
        expect(page.locator('#jobs-by-status [data-status="queued"]')).to_have_text(
            f"queued {shown(queued)}"
        )
        expect(page.locator("#dead-letters")).to_have_text(
            shown(scraped[("inferencehub_dead_letter_messages", ())])
        )
        # One chart of jobs per minute, one of the queue, one of latency per timed version.
        expect(page.locator("#chart-per-minute canvas")).to_have_count(1)
        expect(page.locator("#chart-queue canvas")).to_have_count(1)
        expect(page.locator("#latency canvas")).to_have_count(len(timed))
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=ARTIFACTS / "ops-page-1280.png", full_page=True)

        # Live: a job more, counted anew, reaches the open page without a reload.
        drawn = page.locator("#ops").get_attribute("data-drawn")
        more = threading.Thread(target=add_preprocessed_job, args=(second,))
        more.start()
        more.join()
        cache.delete(FIGURES_KEY)
        row = page.locator('#versions tbody tr[data-version="resnet:2"]')
        expect(row.locator('[data-figure="preprocessed"]')).to_have_text("2", timeout=20_000)
        assert page.locator("#ops").get_attribute("data-drawn") != drawn
        # Drawn again, the page still shows /metrics's reading, the new count.
        scraped = samples(requests.get(f"{live_server.url}/metrics", headers=SCRAPER).text)
        for name in expected:
            expect_page_shows(page, name, metrics_figures(scraped, name))
        browser.close()


def expect_page_shows(page: Page, name: str, figures: dict) -> None:
    """The version's row and latency table show these figures (metrics_figures' shape)."""
    row = page.locator(f'#versions tbody tr[data-version="{name}"]')
    for status in QUEUED:
        expect(row.locator(f'[data-figure="{status}"]')).to_have_text(
            shown(figures["queue"][status])
        )
    for figure in ("workers", "lag", "jobs_per_minute", "succeeded_last_hour", "failed_last_hour"):
        expect(row.locator(f'[data-figure="{figure}"]')).to_have_text(shown(figures[figure]))
    section = page.locator(f'#latency section[data-version="{name}"]')
    stages = figures["stage_seconds"]
    if all(seconds is None for quantiles in stages.values() for seconds in quantiles.values()):
        expect(section.locator(".none")).to_be_visible()
        expect(section.locator("canvas")).to_have_count(0)
        return
    expect(section.locator(".none")).to_be_hidden()
    # One row per stage: none written into uPlot's legend, itself a table.
    expect(section.locator("tr[data-stage]")).to_have_count(len(stages))
    for stage, quantiles in stages.items():
        cells = section.locator(f'tr[data-stage="{stage}"]')
        for quantile, seconds in quantiles.items():
            cell = cells.locator(f'[data-figure="p{float(quantile) * 100:g}"]')
            expect(cell).to_have_text(shown_ms(seconds))


def add_preprocessed_job(version) -> None:
    """Run in a thread of its own: Django refuses ORM calls where Playwright's loop runs."""
    try:
        JobFactory(routed_to=version, status=Job.Status.PREPROCESSED)
    finally:
        # The thread's own connection would outlive the test and hold up its flush.
        connection.close()


def test_a_signed_in_user_who_is_not_staff_finds_no_operations_page(live_server):
    user = UserFactory()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = signed_in(browser, live_server.url, user.username)
        assert page.goto("/ops/").status == 404
        assert page.goto("/ops/data.json").status == 404
        page.goto("/")
        expect(page.get_by_role("link", name="My jobs")).to_be_visible()
        expect(page.get_by_role("link", name="operations")).to_have_count(0)
        browser.close()
