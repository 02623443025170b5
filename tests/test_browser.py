"""The upload page in a real headless Chromium (Debian's, driven by Playwright) against the
live server and the whole pipeline: sign in, upload the three photos, watch them succeed."""

import re
from datetime import timedelta
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from common.uploads import upload_pixel_limits
from predictions.models import Job
from serving.inference import IMAGENET_LABELS_FILE
from tests.conftest import DATA, REPO
from tests.factories import BatchFactory, JobFactory, PredictionFactory, finish_later

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
    expect(page.locator("#overall")).to_have_text("3/3 done")
    screenshot(page, "upload-page")

    page.locator("#batch-link a").click()
    expect(page.locator("tbody tr")).to_have_count(3)
    expect(page.locator(".counts")).to_contain_text("succeeded 3")
    expect(page.locator("tbody .note")).to_have_count(3)
    expect(page.locator("tbody .note").first).to_have_text(
        "random weights: not a real classification"
    )
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
    expect(item.locator(".status")).to_have_text("refused")
    # The card's title names the file: its message does not repeat the name.
    expect(item.locator(".name")).to_have_text("notes.jpg")
    expect(item.locator(".error")).to_have_text(re.compile(r"^file is not an image"))
    expect(page.locator("#overall")).to_have_text("1 refused")
    screenshot(page, "upload-refused")


def not_images(folder: Path, *names: str) -> list[Path]:
    paths = [folder / name for name in names]
    for path in paths:
        path.write_text("just text, renamed")
    return paths


def test_cards_keep_the_order_of_selection_and_refusals_are_counted_apart(page, tmp_path):
    chosen = [PHOTOS[1], *not_images(tmp_path, "a.jpg", "b.jpg"), PHOTOS[2]]
    page.set_input_files("#files", chosen)
    page.get_by_role("button", name="Upload").click()
    statuses = page.locator("#jobs .status")
    expect(statuses).to_have_count(4)
    expect(page.locator("#jobs .name")).to_have_text([path.name for path in chosen])
    accepted = re.compile(r"^(?!refused)")  # queued, or further if a worker runs
    expect(statuses).to_have_text([accepted, "refused", "refused", accepted])
    # Done of the accepted ones, then the refused: a refusal is not a finished job.
    expect(page.locator("#overall")).to_have_text(re.compile(r"^\d/2 done, 2 refused"))


def drop(page: Page, paths: list[Path]) -> None:
    """Drop files on the drop zone as from the desktop (Playwright has no file drop of its
    own): a DataTransfer made in the page carries them."""
    files = [{"name": path.name, "bytes": list(path.read_bytes())} for path in paths]
    page.evaluate(
        """files => {
            const data = new DataTransfer();
            for (const f of files) data.items.add(new File([new Uint8Array(f.bytes)], f.name));
            const zone = document.getElementById("dropzone");
            const options = {dataTransfer: data, bubbles: true, cancelable: true};
            zone.dispatchEvent(new DragEvent("drop", options));
        }""",
        files,
    )


def test_dropped_files_join_the_selection_and_wait_for_the_upload_button(page):
    expect(page.locator("#hint")).to_contain_text("the Upload button sends them")
    page.set_input_files("#files", PHOTOS[0])
    drop(page, [PHOTOS[1]])
    drop(page, [PHOTOS[2]])
    expect(page.locator("#jobs > li")).to_have_count(0)
    assert page.eval_on_selector("#files", "p => [...p.files].map(f => f.name)") == [
        photo.name for photo in PHOTOS
    ]
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#jobs .name")).to_have_text([photo.name for photo in PHOTOS])
    assert page.eval_on_selector("#files", "p => p.files.length") == 0


def test_an_upload_whose_answer_is_lost_is_resent_with_its_key_and_makes_one_job(pipeline, page):
    """The first answer is dropped after the server stored the upload, as a failing network
    would: the page sends the upload again with the same Idempotency-Key. What must hold is
    the end: one job, made once, and its result; the states between may pass too fast to see."""
    keys = []

    def lose_the_first_answer(route):
        keys.append(route.request.headers.get("idempotency-key"))
        if len(keys) == 1:
            route.fetch()  # the server stores the upload and answers...
            route.abort("connectionreset")  # ...and the page never hears so
        else:
            route.continue_()

    page.route("**/api/jobs/", lose_the_first_answer)
    page.set_input_files("#files", PHOTOS[1])
    page.get_by_role("button", name="Upload").click()
    item = page.locator("#jobs > li")
    expect_succeeded(page, 1)
    assert len(keys) == 2 and keys[0] == keys[1], keys
    assert re.fullmatch(r"[0-9a-f-]{32,36}", keys[0]), keys
    jobs = page.request.get("/api/jobs/").json()
    assert jobs["count"] == 1
    expect(item.locator(".name a")).to_have_attribute("href", f"/jobs/{jobs['results'][0]['id']}/")


def test_the_upload_page_states_accepted_formats_and_limits(page, settings):
    # The live server's settings are these too: one source for the page and the checks.
    formats = "JPEG, PNG, WEBP, BMP, GIF, TIFF"
    megabytes = settings.UPLOAD_MAX_BYTES // (1024 * 1024)
    limits = upload_pixel_limits()
    megapixels, decoded_whole = f"{limits.jpeg / 1e6:g}", f"{limits.decoded_whole / 1e6:g}"
    expect(page.locator("#limits")).to_have_text(
        f"Accepted: {formats} images, up to {megabytes}.0 MB and {megapixels} megapixels each "
        f"({decoded_whole} for formats other than JPEG)."
    )


def test_upload_without_a_file_says_so_on_the_screen(page):
    page.get_by_role("button", name="Upload").click()
    message = page.locator("#form-message")
    expect(message).to_be_visible()
    expect(message).to_have_text("Choose one or more images first.")
    expect(page.locator("#jobs > li")).to_have_count(0)
    screenshot(page, "upload-no-file")
    # Choosing a file answers the message: it goes at once, not at the next press.
    page.set_input_files("#files", PHOTOS[1])
    expect(message).to_be_hidden()


def test_a_top_k_out_of_range_is_named_on_the_screen(page):
    page.get_by_role("button", name="Upload").click()
    page.set_input_files("#files", PHOTOS[1])
    page.get_by_label("Top-k").fill("5000")
    page.get_by_role("button", name="Upload").click()
    message = page.locator("#form-message")
    expect(message).to_have_text("Top-k must be a whole number from 1 to 1000.")
    expect(page.locator("#jobs > li")).to_have_count(0)
    expect(page.get_by_label("Top-k")).to_be_focused()
    page.get_by_label("Top-k").fill("7")
    page.get_by_role("button", name="Upload").click()
    expect(message).to_be_hidden()
    expect(page.locator("#jobs > li")).to_have_count(1)


@pytest.fixture
def failed_jobs(browser_user) -> list[Job]:
    """Two failed jobs of a batch: one whose original was purged, one whose stored file is
    missing."""
    batch = BatchFactory(owner=browser_user)
    common = {"owner": browser_user, "batch": batch, "status": Job.Status.FAILED}
    return [
        JobFactory(seq=0, image="", error="the model failed on this image", **common),
        JobFactory(
            seq=1,
            image="originals/missing",
            original_name="IMG_20240712_183045123_HDR_portrait_mode.jpg",
            error="preprocessing failed: cannot identify the image file, truncated upload",
            **common,
        ),
    ]


# failed_jobs comes first: the browser starts after every database write.
def test_a_failed_job_shows_no_broken_image_and_a_styled_button(failed_jobs, page):
    purged, missing = failed_jobs
    page.goto(f"/jobs/{purged.pk}/")
    expect(page.locator(".job-detail .placeholder")).to_contain_text("original image was deleted")
    expect(page.locator(".job-detail img")).to_have_count(0)
    expect(page.locator(".job-detail")).not_to_contain_text("– (–)")
    expect(page.locator(".job-detail")).to_contain_text("no result from a model yet")
    button = page.get_by_role("button", name="Try again")
    expect(button).to_have_css("background-color", "rgb(47, 111, 181)")
    expect(button).to_have_css("color", "rgb(255, 255, 255)")
    screenshot(page, "failed-job-page")

    page.goto(f"/jobs/{missing.pk}/")
    expect(page.locator(".job-detail .placeholder")).to_have_text("The image cannot be shown.")
    expect(page.locator(".job-detail img")).to_have_count(0)

    # The purged one and the one never preprocessed (no thumbnail can be made of it) get
    # the same note, made by the server rather than after a broken image.
    for url in (f"/batches/{purged.batch_id}/", "/my/jobs/"):
        page.goto(url)
        expect(page.locator("tbody tr")).to_have_count(2)
        expect(page.locator("tbody img")).to_have_count(0)
        expect(page.locator("tbody .placeholder")).to_have_text(["no image", "no image"])
    screenshot(page, "failed-my-jobs")
    page.goto(f"/batches/{purged.batch_id}/")
    screenshot(page, "failed-batch-page")


def lines_of_word(page: Page, selector: str, word: str) -> list[int]:
    """On how many lines `word` is drawn in each element: 1 when it is not split."""
    return page.eval_on_selector_all(
        selector,
        """(nodes, word) => nodes.filter(node => node.textContent.includes(word)).map(node => {
            const text = node.firstChild;
            const range = document.createRange();
            range.setStart(text, text.data.indexOf(word));
            range.setEnd(text, text.data.indexOf(word) + word.length);
            return new Set([...range.getClientRects()].map(rect => Math.round(rect.top))).size;
        })""",
        word,
    )


def test_error_text_wraps_between_words_at_390_pixels(failed_jobs, page):
    page.set_viewport_size({"width": 390, "height": 844})
    for url in (f"/batches/{failed_jobs[0].batch_id}/", "/my/jobs/"):
        page.goto(url)
        expect(page.locator("tbody .error")).to_have_count(2)
        assert lines_of_word(page, "tbody .error", "preprocessing") == [1], url
        assert lines_of_word(page, "tbody .error", "failed") == [1, 1], url
        # A long file name gives way instead (it has no spaces to wrap at).
        overflow = page.eval_on_selector(
            ".table-wrap", "wrap => wrap.scrollWidth - wrap.clientWidth"
        )
        assert overflow <= 0, f"{url}: the table is {overflow} px wider than the screen"


@pytest.fixture
def admin_jobs(browser_user) -> list[Job]:
    """erin as staff with the app's permissions, and jobs of long file names for the list:
    one with its original stored, one purged, one failed."""
    from django.contrib.auth.models import Permission
    from django.core.files.uploadedfile import SimpleUploadedFile

    from predictions import uploads

    browser_user.is_staff = True
    browser_user.save()
    browser_user.user_permissions.set(
        Permission.objects.filter(content_type__app_label="predictions")
    )
    upload = SimpleUploadedFile("a-fox-in-the-garden-at-dusk.png", (DATA / "fox.png").read_bytes())
    stored = uploads.create_jobs(owner=browser_user, uploads=[upload], top_k=5)[0]
    # Its widest row, whatever a Celery worker of another test did with it meanwhile: served
    # by a Kubernetes pod, with ImageNet's longest label. The list must fit with it.
    Job.objects.filter(pk=stored.pk).update(
        status=Job.Status.SUCCEEDED,
        model_name="resnet50",
        model_version=12,
        model_weights="random",
        worker="inferencehub-worker-resnet50-7d9f8b6c5d-x2k4q:123456",
        preprocessed_at=stored.created_at,
        finished_at=stored.created_at + timedelta(seconds=12.345),
    )
    longest = max(IMAGENET_LABELS_FILE.read_text().splitlines(), key=len)
    PredictionFactory(job=stored, rank=1, label=longest, score=0.123456)
    common = {"owner": browser_user, "model_name": "resnet50", "model_weights": "random"}
    return [
        stored,
        JobFactory(original_name="holiday-photo-number-0042.jpeg", image="", **common),
        JobFactory(status=Job.Status.FAILED, error="preprocessing failed", image="", **common),
    ]


def test_the_admin_job_list_fits_1280_pixels(admin_jobs, page):
    page.goto("/admin/predictions/job/")
    expect(page.locator("#site-name")).to_have_text("InferenceHub")
    expect(page.locator("#result_list tbody tr")).to_have_count(3)
    expect(page.locator("#result_list")).to_contain_text("holiday-photo-number-0042.jpeg")
    expect(page.locator("#result_list")).to_contain_text("random weights")
    # The list scrolls inside its own box when too wide; every column must fit in it.
    overflow = page.evaluate(
        "(r => r.scrollWidth - r.clientWidth)(document.querySelector('.results'))"
    )
    # Each column's width, to tell which one grew when this fails.
    widths = page.evaluate(
        "[...document.querySelectorAll('#result_list thead th')]"
        ".map(th => th.className + ': ' + th.offsetWidth)"
    )
    assert overflow <= 0, f"the job list is {overflow} px wider than its box: {widths}"
    screenshot(page, "admin-job-list")

    page.goto(f"/admin/predictions/job/{admin_jobs[1].pk}/change/")
    expect(page.locator("text=The original was purged")).to_be_visible()
    expect(page.locator("input[name=_save]")).to_have_count(0)
    screenshot(page, "admin-job-page")


@pytest.fixture
def failed_job(browser_user) -> Job:
    # Made before the browser starts (see the browser fixture).
    return JobFactory(owner=browser_user, status=Job.Status.FAILED, error="inference failed: boom")


def test_try_again_on_a_failed_jobs_page_queues_it_and_stays_on_the_page(failed_job, page):
    page.goto(f"/jobs/{failed_job.pk}/")
    expect(page.locator(".error")).to_have_text("inference failed: boom")
    page.get_by_role("button", name="Try again").click()
    # Back on the job's own page, not on the API's answer.
    expect(page).to_have_url(re.compile(rf"/jobs/{failed_job.pk}/$"))
    # A second attempt began. Its outcome depends on whether a Celery worker of the session
    # is running (this factory job has no stored image, so a worker fails it again).
    expect(page.locator(".job-detail tr", has_text="attempts").locator("td")).to_have_text("2")
    expect(page.locator(".stages caption")).to_contain_text("Stages of attempt 2")
    expect(page.get_by_text("inference failed: boom")).to_have_count(0)


def test_swagger_try_it_out_uploads_an_image_as_shipped(page):
    page.goto("/api/docs/")
    operation = page.locator("#operations-jobs-jobs_create")
    operation.locator(".opblock-summary").click()
    operation.get_by_role("button", name="Try it out").click()
    operation.locator("input[type=file]").first.set_input_files(PHOTOS[1])
    operation.get_by_role("button", name="Execute").click()
    answer = operation.locator(".live-responses-table tbody tr.response")
    expect(answer.locator(".response-col_status")).to_have_text("202", timeout=30_000)
    expect(answer.locator(".response-col_description")).to_contain_text('"status": "queued"')


@pytest.fixture
def my_jobs(browser_user) -> list[Job]:
    """30 jobs of erin's, one in three failed, and one of someone else's."""
    from django.utils import timezone

    from tests.factories import PredictionFactory

    JobFactory(original_name="not-erins.jpg", image="")
    jobs = []
    for n in range(30):
        failed = n % 3 == 0
        job = JobFactory(
            owner=browser_user,
            image="",
            original_name=f"garden-{n:02}.jpg",
            status=Job.Status.FAILED if failed else Job.Status.SUCCEEDED,
            error="preprocessing failed: truncated file" if failed else "",
            created_at=timezone.now() - timezone.timedelta(minutes=n),
        )
        if not failed:
            PredictionFactory(job=job, rank=1, label="daisy", score=0.8)
        jobs.append(job)
    return jobs


def test_my_jobs_lists_filters_and_pages_ones_own_jobs(my_jobs, page):
    page.get_by_role("link", name="My jobs").click()
    expect(page.get_by_role("heading", name="My jobs")).to_be_visible()
    expect(page.locator(".job-list tbody tr")).to_have_count(25)
    expect(page.locator("main")).to_contain_text("30 jobs")
    expect(page.locator("main")).not_to_contain_text("not-erins.jpg")
    expect(page.locator(".pager")).to_contain_text("page 1 of 2")
    screenshot(page, "my-jobs")

    page.get_by_label("failed").check()
    page.get_by_label("File name").fill("garden-1")
    page.get_by_role("button", name="Filter").click()
    # garden-10 .. garden-19, of which 12, 15 and 18 failed.
    expect(page.locator(".job-list tbody tr")).to_have_count(3)
    expect(page.get_by_label("failed")).to_be_checked()
    expect(page.get_by_role("link", name="next")).to_have_count(0)
    screenshot(page, "my-jobs-filtered")


@pytest.fixture
def big_batch(browser_user) -> tuple:
    """A batch of 60 finished jobs and one still being inferred."""
    batch = BatchFactory(owner=browser_user)
    for n in range(60):
        JobFactory(owner=browser_user, batch=batch, seq=n, image="", status=Job.Status.SUCCEEDED)
    waiting = JobFactory(
        owner=browser_user, batch=batch, seq=60, image="", status=Job.Status.SUBMITTED
    )
    return batch, waiting


def test_a_big_batch_page_pages_exports_and_updates_from_its_event_stream(big_batch, page):

    batch, waiting = big_batch
    page.goto(f"/batches/{batch.pk}/")
    expect(page.locator("tbody tr")).to_have_count(50)
    expect(page.locator(".pager")).to_contain_text("page 1 of 2")
    expect(page.get_by_role("link", name="CSV")).to_have_attribute(
        "href", f"/api/batches/{batch.pk}/export/?format=csv"
    )
    expect(page.locator(".counts")).to_contain_text("submitted 1")
    # Stored as the result bridge stores it, while the page is open.
    thread = finish_later([waiting], after_s=[2])
    expect(page.locator(".counts")).to_contain_text("succeeded 61", timeout=20_000)
    thread.join()
    expect(page.locator("#announce")).to_contain_text("61 succeeded")
    screenshot(page, "batch-page-big")
    page.get_by_role("link", name="next").click()
    expect(page.locator("tbody tr")).to_have_count(11)

    with page.expect_download() as download:
        page.get_by_role("link", name="CSV").click()
    assert download.value.suggested_filename == f"batch-{batch.pk}.csv"


def test_an_unknown_page_gets_the_branded_page(page):
    page.goto("/no/such/page/")
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    expect(page.get_by_role("link", name="Back to the upload page")).to_be_visible()
    screenshot(page, "not-found")


@pytest.fixture
def waiting_job(browser_user) -> Job:
    return JobFactory(owner=browser_user, image="", status=Job.Status.SUBMITTED)


def test_the_job_page_shows_the_result_when_it_is_stored(waiting_job, page):

    page.goto(f"/jobs/{waiting_job.pk}/")
    expect(page.locator(".job-detail .status")).to_have_text("submitted")
    # Stored as the result bridge stores it, while the page waits on ?wait=.
    thread = finish_later([waiting_job], after_s=[2])
    expect(page.locator(".job-detail .status")).to_have_text("succeeded", timeout=20_000)
    thread.join()
    expect(page.locator(".preds .label")).to_have_text("red fox")
    expect(page.locator("#announce")).to_have_text("Status: succeeded")


@pytest.fixture
def queued_behind_others(browser_user) -> Job:
    """Erin's third job waiting for a model version, with 3 of another user's waiting too
    and 6 of the version's jobs finished just now: 2 of Erin's and 2 of the other's come
    first (owners take turns, Erin's id first), about 10 s each."""
    from django.utils import timezone

    from registry.services import register_version
    from tests.factories import UserFactory

    version = register_version(name="queue-page", source="keras", input_size=64, classes=3)
    other = UserFactory()
    erins = [JobFactory(owner=browser_user, routed_to=version, image="") for _ in range(3)]
    for _ in range(3):
        JobFactory(owner=other, routed_to=version, image="")
    for _ in range(6):
        JobFactory(routed_to=version, status=Job.Status.SUCCEEDED, finished_at=timezone.now())
    return erins[-1]


def test_a_queued_jobs_page_shows_how_many_jobs_are_ahead_of_it(queued_behind_others, page):
    import threading
    import time

    from django.utils import timezone

    job = queued_behind_others
    page.goto(f"/jobs/{job.pk}/")
    expect(page.locator("#queue")).to_have_text("queued: 4 ahead of it, about 50 s")

    def admit_erins_older_jobs():  # as the dispatcher would, while the page is open
        time.sleep(1)
        Job.objects.filter(owner=job.owner).exclude(pk=job.pk).update(admitted_at=timezone.now())

    thread = threading.Thread(target=admit_erins_older_jobs)
    thread.start()
    expect(page.locator("#queue")).to_have_text("queued: next, about 10 s", timeout=20_000)
    thread.join()


@pytest.fixture
def others_waiting(browser_user) -> None:
    """Another user's 2 jobs waiting on the unregistered path, whose turn comes next."""
    from predictions import selectors
    from tests.factories import UserFactory

    other = UserFactory()
    for _ in range(2):
        JobFactory(owner=other, image="")
    selectors.remember_served(None, "normal", browser_user.pk)


def test_the_upload_page_says_where_its_waiting_jobs_stand(others_waiting, page, settings):
    settings.DISPATCH_IN_FLIGHT_PER_MODEL = 0  # nothing is admitted: the upload waits
    page.set_input_files("#files", PHOTOS[:1])
    page.get_by_role("button", name="Upload").click()
    expect(page.locator("#jobs .status")).to_have_text("queued")
    expect(page.locator("#overall")).to_have_text(
        "0/1 done, 1 queued: 1 ahead of them", timeout=20_000
    )
