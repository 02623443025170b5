// Result pages update themselves while jobs are unfinished, without polling: the batch
// page listens to the batch's event stream (data-events), the job page asks the API to
// hold its answer until the job finishes (data-wait). On a change the server renders the
// page again and only the #live part is swapped, so there is one template.
(function () {
  // After an answer that could not be had (network, server busy): wait before asking again.
  const BACKOFF_MS = 3000;

  async function swap() {
    const live = document.getElementById("live");
    const response = await fetch(location.href, { headers: { Accept: "text/html" } });
    if (!response.ok) return live;
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("live");
    if (!fresh) return live;
    live.replaceWith(document.adoptNode(fresh));
    // The swapped part is new to screen readers; the persistent region announces it.
    if (fresh.dataset.summary !== live.dataset.summary) {
      document.getElementById("announce").textContent = fresh.dataset.summary;
    }
    return fresh;
  }

  function listen(url) {
    const source = new EventSource(url);
    let swapping = false;
    // A "counts" event comes when the stream opens and whenever jobs changed.
    source.addEventListener("counts", async () => {
      if (swapping) return;
      swapping = true;
      try {
        const fresh = await swap();
        if (!fresh.hasAttribute("data-live")) source.close();
      } catch (error) {
        // A network blip: the next event tries again.
      }
      swapping = false;
    });
  }

  // As the job page's template writes it.
  function queueText(queue) {
    let text = queue.position ? `queued: ${queue.position} ahead of it` : "queued: next";
    if (queue.estimated_start_s !== null) text += `, about ${queue.estimated_start_s} s`;
    return text;
  }

  // While the job waits for admission the page asks with a short wait (its data-wait) and
  // writes where the job stands from the answer; any other answer renders the page again.
  async function waitForJob() {
    for (;;) {
      const live = document.getElementById("live");
      if (!live || !live.hasAttribute("data-live")) return;
      try {
        const response = await fetch(live.dataset.wait, { headers: { Accept: "application/json" } });
        const job = response.ok ? await response.json() : null;
        const held = job && response.headers.get("Retry-After") === null;
        const queue = document.getElementById("queue");
        if (job && job.queue && queue) queue.textContent = queueText(job.queue);
        else if (held) await swap();
        if (held) continue;
      } catch (error) {
        // A network blip: ask again after the pause.
      }
      await new Promise((resolve) => setTimeout(resolve, BACKOFF_MS));
    }
  }

  const live = document.getElementById("live");
  if (live && live.dataset.events) listen(live.dataset.events);
  else if (live && live.dataset.wait) waitForJob();

  // An image that cannot be shown (its stored original deleted by hand, say) becomes a
  // note instead of a broken-image icon; images of swapped-in parts are caught too.
  function replaceBroken(img) {
    const note = document.createElement("span");
    note.className = "placeholder";
    note.textContent = img.dataset.fallback;
    img.replaceWith(note);
  }
  document.addEventListener("error", (e) => {
    if (e.target instanceof HTMLImageElement && e.target.dataset.fallback) replaceBroken(e.target);
  }, true);
  for (const img of document.querySelectorAll("img[data-fallback]")) {
    if (img.complete && img.naturalWidth === 0) replaceBroken(img);
  }
})();
