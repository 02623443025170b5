// The upload page: each image is posted to the REST API on its own (so each has its own
// progress bar and its own refusal reason), all into one batch; the batch's event stream
// then reports each job's changes until every job has finished.
(function () {
  const FINISHED = ["succeeded", "failed", "cancelled", "expired"];
  // An upload whose answer did not come (the network failed, or the server took longer
  // than this) is sent again, up to ATTEMPTS times in all, with the Idempotency-Key of its
  // first try: if the server did store it, the resend answers with that job, not a second.
  const ATTEMPTS = 4;
  const TIMEOUT_MS = 120000;
  // While some job waits for admission, where the batch stands is asked for this often.
  const QUEUE_POLL_MS = 5000;
  const form = document.getElementById("upload");
  const picker = document.getElementById("files");
  const dropzone = document.getElementById("dropzone");
  const topK = document.getElementById("top_k");
  const list = document.getElementById("jobs");
  const announcer = document.getElementById("announce");
  const formMessage = document.getElementById("form-message");
  const overall = document.getElementById("overall");
  const allEntries = []; // every upload of this page, refused ones included
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const entries = new Map(); // job id -> the list item's parts
  let batchId = null; // a promise, so images uploaded at once share one batch
  let stream = null; // the batch's EventSource while some job is unfinished
  let queue = null; // where the batch's waiting jobs stand (the batch detail's "queue")
  let watchingQueue = false;

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function predictionList(predictions) {
    const ol = element("ol", "preds");
    for (const p of predictions) {
      const li = element("li", "pred");
      const track = element("span", "track");
      const bar = element("span", "bar");
      bar.style.display = "block";
      bar.style.width = `${(p.score * 100).toFixed(1)}%`;
      track.setAttribute("aria-hidden", "true");
      track.append(bar);
      li.append(element("span", "label", p.label), element("span", "score", p.score.toFixed(3)), track);
      ol.append(li);
    }
    return ol;
  }

  // "2/5 done, 1 failed, 3 refused": a refused upload made no job, so it is counted apart
  // from the jobs, not as one done.
  function showOverall() {
    const count = (status) => allEntries.filter((entry) => entry.last === status).length;
    const refused = count("refused");
    const accepted = allEntries.length - refused;
    const done = allEntries.filter((entry) => FINISHED.includes(entry.last)).length;
    const parts = [];
    if (accepted) parts.push(`${done}/${accepted} done`);
    if (count("failed")) parts.push(`${count("failed")} failed`);
    if (refused) parts.push(`${refused} refused`);
    let text = parts.join(", ");
    if (queue && count("queued")) {
      text += `, ${queue.waiting} queued: ${queue.ahead ? `${queue.ahead} ahead of them` : "next"}`;
      if (queue.estimated_start_s !== null) text += `, about ${queue.estimated_start_s} s`;
    }
    overall.textContent = text;
    overall.hidden = false;
  }

  function setStatus(entry, status) {
    entry.last = status;
    entry.status.textContent = status;
    entry.status.className = `status status-${status}`;
    showOverall();
  }

  // "refused": the server turned the upload down and made no job; "failed": a job that
  // ran and failed, or an upload that never reached the server.
  function fail(entry, reason, status = "failed") {
    // The API's refusals name the file ("photo.jpg: ..."); the card's title already does.
    if (reason.startsWith(`${entry.name}: `)) reason = reason.slice(entry.name.length + 2);
    entry.progress.hidden = true;
    setStatus(entry, status);
    entry.result.replaceChildren(element("p", "error", reason));
    announcer.textContent = `${entry.name}: ${status}, ${reason}`;
  }

  function show(entry, job) {
    if (entry.last === job.status) return;
    if (job.status === "failed" || job.status === "expired") {
      return fail(entry, job.error, job.status);
    }
    setStatus(entry, job.status);
    let message = `${entry.name}: ${job.status}`;
    if (job.status === "succeeded") {
      entry.result.replaceChildren(predictionList(job.predictions));
      if (job.predictions.length) message += `, top label ${job.predictions[0].label}`;
    }
    announcer.textContent = message;
  }

  function addEntry(file) {
    const item = element("li", "job");
    const thumb = element("img");
    thumb.alt = "";
    // A file the browser cannot show (not an image, say) gets a note, not a broken image.
    thumb.addEventListener("error", () => thumb.replaceWith(element("span", "placeholder", "no preview")));
    thumb.src = URL.createObjectURL(file);
    const body = element("div");
    const entry = {
      name: file.name,
      title: element("div", "name", file.name),
      status: element("span", "status", "uploading"),
      progress: element("progress"),
      result: element("div", "result"),
      last: "uploading",
    };
    entry.progress.max = 1;
    entry.progress.value = 0;
    entry.progress.setAttribute("aria-label", `upload of ${file.name}`);
    body.append(entry.title, entry.status, entry.progress, entry.result);
    item.append(thumb, body);
    list.append(item); // in the order the files were chosen
    allEntries.push(entry);
    showOverall();
    return entry;
  }

  function ensureBatch() {
    if (batchId === null) {
      batchId = fetch("/api/batches/", {
        method: "POST",
        headers: { "X-CSRFToken": csrf, Accept: "application/json" },
      }).then(async (response) => {
        const body = await response.json().catch(() => ({}));
        if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
        const link = document.querySelector("#batch-link a");
        link.href = `/batches/${body.id}/`;
        link.textContent = `batch ${body.id}`;
        link.parentElement.hidden = false;
        return body.id;
      });
      batchId.catch(() => { batchId = null; });
    }
    return batchId;
  }

  // One key per image, made when the images are chosen: each image is an upload of its own.
  function newKey() {
    // randomUUID exists only on secure pages (https or localhost); make run may serve plain
    // http on another address (STACK_WEB_HOST).
    if (crypto.randomUUID) return crypto.randomUUID();
    return [...crypto.getRandomValues(new Uint8Array(16))]
      .map((byte) => byte.toString(16).padStart(2, "0"))
      .join("");
  }

  function send(file, batch, entry, key, attempt = 1) {
    const data = new FormData();
    data.append("image", file);
    data.append("top_k", topK.value);
    data.append("batch", batch);
    const timeout = document.getElementById("timeout_s").value;
    if (timeout) data.append("timeout_s", timeout);
    data.append("priority", document.getElementById("priority").value);
    const model = document.getElementById("model");
    if (model) {
      const [name, version] = model.value.split(":");
      data.append("model", name);
      data.append("model_version", version);
    }
    const callback = document.getElementById("callback_url");
    if (callback && callback.value) data.append("callback_url", callback.value);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/jobs/");
    xhr.setRequestHeader("X-CSRFToken", csrf);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.setRequestHeader("Idempotency-Key", key);
    xhr.timeout = TIMEOUT_MS;
    const retry = (reason) => {
      if (attempt >= ATTEMPTS) return fail(entry, reason);
      entry.status.textContent = `uploading (try ${attempt + 1} of ${ATTEMPTS})`;
      entry.progress.value = 0;
      setTimeout(() => send(file, batch, entry, key, attempt + 1), 1000 * 2 ** (attempt - 1));
    };
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) entry.progress.value = e.loaded / e.total; };
    xhr.onerror = () => retry("the upload did not reach the server");
    xhr.ontimeout = () => retry(`no answer from the server in ${TIMEOUT_MS / 1000} s`);
    xhr.onload = () => {
      let job = {};
      try { job = JSON.parse(xhr.responseText); } catch (e) { /* not JSON: reported below */ }
      // The page sends no seq, so its only 409 is the key's: an earlier try is still being
      // stored, and asking again gets its job.
      if (xhr.status === 409 && attempt > 1) return retry(job.error);
      if (xhr.status !== 202) return fail(entry, job.error || `HTTP ${xhr.status}`, "refused");
      entry.progress.hidden = true;
      const link = element("a", null, entry.name);
      link.href = `/jobs/${job.id}/`;
      entry.title.replaceChildren(link);
      entries.set(job.id, entry);
      show(entry, job);
      listen();
      watchQueue();
    };
    xhr.send(data);
  }

  function upload(files) {
    formMessage.hidden = true;
    for (const file of files) {
      const entry = addEntry(file);
      const key = newKey();
      ensureBatch().then((batch) => send(file, batch, entry, key), (error) => fail(entry, error.message));
    }
  }

  // The event stream tells of the jobs' changes, not of the jobs ahead of them: the
  // batch's detail says where its waiting jobs stand.
  async function watchQueue() {
    if (watchingQueue) return;
    watchingQueue = true;
    while (allEntries.some((entry) => entry.last === "queued")) {
      try {
        const url = `/api/batches/${await batchId}/?page_size=1`;
        const response = await fetch(url, { headers: { Accept: "application/json" } });
        if (response.ok) {
          queue = (await response.json()).queue;
          showOverall();
        }
      } catch (error) {
        // A network blip: ask again after the pause.
      }
      await new Promise((resolve) => setTimeout(resolve, QUEUE_POLL_MS));
    }
    queue = null;
    watchingQueue = false;
  }

  function unfinished() {
    return [...entries.values()].some((entry) => !FINISHED.includes(entry.last));
  }

  async function listen() {
    if (stream) return;
    stream = "opening"; // so that uploads finishing meanwhile do not open a second one
    // A minute back: a job that finished before the stream opened is still reported.
    const since = Date.now() - 60000;
    stream = new EventSource(`/api/batches/${await batchId}/events?since=${since}`);
    stream.addEventListener("job", (event) => {
      const job = JSON.parse(event.data);
      const entry = entries.get(job.id);
      if (entry) show(entry, job);
      if (!unfinished()) {
        stream.close();
        stream = null;
      }
    });
  }

  // A visible alert: role="alert" has screen readers read it out too.
  function complain(message, field) {
    formMessage.textContent = message;
    formMessage.hidden = false;
    field.focus();
  }

  // The page checks the form itself (the form has novalidate): the browser's own bubble
  // would leave an earlier message on the page, and says nothing to some screen readers.
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!picker.files.length) return complain("Choose one or more images first.", picker);
    if (!topK.checkValidity() || topK.value === "") {
      return complain(`Top-k must be a whole number from ${topK.min} to ${topK.max}.`, topK);
    }
    upload([...picker.files]);
    picker.value = "";
  });
  // Choosing files answers "Choose one or more images first."
  picker.addEventListener("change", () => { formMessage.hidden = true; });

  // Dropped files join the chosen ones; like them, they wait for the Upload button.
  function addToSelection(files) {
    const selection = new DataTransfer();
    for (const file of [...picker.files, ...files]) selection.items.add(file);
    picker.files = selection.files;
    picker.dispatchEvent(new Event("change"));
  }
  // The drop zone is a button, so Enter and Space open the picker as a click does.
  dropzone.addEventListener("click", () => picker.click());
  dropzone.addEventListener("dragover", (e) => { e.preventDefault(); dropzone.classList.add("over"); });
  // A file dropped beside the zone would otherwise make the browser leave the page.
  document.addEventListener("dragover", (e) => e.preventDefault());
  document.addEventListener("drop", (e) => e.preventDefault());
  dropzone.addEventListener("dragleave", () => dropzone.classList.remove("over"));
  dropzone.addEventListener("drop", (e) => {
    e.preventDefault();
    dropzone.classList.remove("over");
    addToSelection(e.dataTransfer.files);
  });
})();
