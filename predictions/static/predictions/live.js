// Result pages refresh themselves while jobs are unfinished: the server renders the page
// again and only the #live part is swapped, so there is one template and no JSON renderer.
(function () {
  const POLL_MS = 1500;

  async function refresh() {
    const live = document.getElementById("live");
    if (!live || !live.hasAttribute("data-live")) return;
    try {
      const response = await fetch(location.href, { headers: { Accept: "text/html" } });
      if (response.ok) {
        const page = new DOMParser().parseFromString(await response.text(), "text/html");
        const fresh = page.getElementById("live");
        if (fresh) {
          live.replaceWith(document.adoptNode(fresh));
          // The swapped part is new to screen readers; the persistent region announces it.
          if (fresh.dataset.summary !== live.dataset.summary) {
            document.getElementById("announce").textContent = fresh.dataset.summary;
          }
        }
      }
    } catch (error) {
      // A network blip: try again on the next tick.
    }
    setTimeout(refresh, POLL_MS);
  }

  setTimeout(refresh, POLL_MS);
})();
