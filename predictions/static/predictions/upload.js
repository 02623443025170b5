// The upload page: each image is posted to the REST API on its own (so each has its own
// progress bar and its own refusal reason), all into one batch; the batch is then polled
// until every job has finished.
(function () {
  const POLL_MS = 1000;
  const FINISHED = ["succeeded", "failed"];
  const form = document.getElementById("upload");
  const picker = document.getElementById("files");
  const dropzone = document.getElementById("dropzone");
  const topK = document.getElementById("top_k");
  const list = document.getElementById("jobs");
  const announcer = document.getElementById("announce");
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const entries = new Map(); // job id -> the list item's parts
  let batchId = null; // a promise, so images uploaded at once share one batch
  let polling = false;

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

  function setStatus(entry, status) {
    entry.status.textContent = status;
    entry.status.className = `status status-${status}`;
  }

  function fail(entry, reason) {
    entry.progress.hidden = true;
    entry.last = "failed";
    setStatus(entry, "failed");
    entry.result.replaceChildren(element("p", "error", reason));
    announcer.textContent = `${entry.name}: failed, ${reason}`;
  }

  function show(entry, job) {
    if (entry.last === job.status) return;
    if (job.status === "failed") return fail(entry, job.error);
    entry.last = job.status;
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
    list.prepend(item);
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

  function send(file, batch, entry) {
    const data = new FormData();
    data.append("image", file);
    data.append("top_k", topK.value);
    data.append("batch", batch);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/api/jobs/");
    xhr.setRequestHeader("X-CSRFToken", csrf);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) entry.progress.value = e.loaded / e.total; };
    xhr.onerror = () => fail(entry, "the upload did not reach the server");
    xhr.onload = () => {
      let job = {};
      try { job = JSON.parse(xhr.responseText); } catch (e) { /* not JSON: reported below */ }
      if (xhr.status !== 202) return fail(entry, job.error || `upload refused (HTTP ${xhr.status})`);
      entry.progress.hidden = true;
      const link = element("a", null, entry.name);
      link.href = `/jobs/${job.id}/`;
      entry.title.replaceChildren(link);
      entries.set(job.id, entry);
      show(entry, job);
      poll();
    };
    xhr.send(data);
  }

  function upload(files) {
    for (const file of files) {
      const entry = addEntry(file);
      ensureBatch().then((batch) => send(file, batch, entry), (error) => fail(entry, error.message));
    }
  }

  async function poll() {
    if (polling) return;
    polling = true;
    while ([...entries.values()].some((entry) => !FINISHED.includes(entry.last))) {
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      try {
        const response = await fetch(`/api/batches/${await batchId}/`, { headers: { Accept: "application/json" } });
        if (!response.ok) continue;
        for (const job of (await response.json()).jobs) {
          const entry = entries.get(job.id);
          if (entry) show(entry, job);
        }
      } catch (error) {
        // A network blip: the next round asks again.
      }
    }
    polling = false;
  }

  form.addEventListener("submit", (e) => {
    e.preventDefault();
    if (!picker.files.length) {
      announcer.textContent = "Choose one or more images first.";
      picker.focus();
      return;
    }
    upload([...picker.files]);
    picker.value = "";
  });
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
    upload([...e.dataTransfer.files]);
  });
})();
