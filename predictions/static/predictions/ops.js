// The operations page: asks /ops/data.json every POLL_MS and draws its figures, the same
// reading /metrics serves, as a table and uPlot charts (vendor/uplot-*, no build step).
(function () {
  const POLL_MS = 5000;
  // An hour of readings at POLL_MS: the live chart shows at most that.
  const HISTORY = 720;
  const COLOURS = ["#2f6fb5", "#c0392b", "#1f7a3a", "#8e44ad", "#d68910", "#117a8b", "#5a6270"];
  const QUEUED = ["queued", "preprocessed", "submitted"];

  const root = document.getElementById("ops");
  const charts = {};
  const history = { times: [], series: {} };

  function versionName(entry) {
    return entry.version === null ? entry.model : `${entry.model}:${entry.version}`;
  }

  // "0.99" as "p99": rounded, since 0.99 * 100 is 98.99999999999999 in floating point.
  function percentile(quantile) {
    return `p${Math.round(Number(quantile) * 1000) / 10}`;
  }

  function text(value) {
    return value === null || value === undefined ? "–" : String(value);
  }

  function cell(tag, value, figure) {
    const element = document.createElement(tag);
    element.textContent = text(value);
    if (figure) {
      element.dataset.figure = figure;
      element.className = "num";
    }
    return element;
  }

  function drawTable(data) {
    const list = document.getElementById("jobs-by-status");
    list.replaceChildren(
      ...Object.entries(data.jobs).map(([status, count]) => {
        const item = document.createElement("li");
        item.dataset.status = status;
        const badge = document.createElement("span");
        badge.className = `status status-${status}`;
        badge.textContent = status;
        item.append(badge, ` ${count}`);
        return item;
      })
    );
    document.getElementById("dead-letters").textContent =
      data.dead_letters === null ? "Kafka unreachable" : String(data.dead_letters);
    const rows = data.versions.map((entry) => {
      const row = document.createElement("tr");
      row.dataset.version = versionName(entry);
      row.append(
        cell("th", versionName(entry)),
        cell("td", entry.workers, "workers"),
        cell("td", entry.lag, "lag"),
        ...QUEUED.map((status) => cell("td", entry.queue[status], status)),
        cell("td", entry.jobs_per_minute, "jobs_per_minute"),
        cell("td", entry.succeeded_last_hour, "succeeded_last_hour"),
        cell("td", entry.failed_last_hour, "failed_last_hour")
      );
      return row;
    });
    document.querySelector("#versions tbody").replaceChildren(...rows);
    const counted = new Date(data.counted_at * 1000);
    const time = document.getElementById("counted-at");
    time.dateTime = counted.toISOString();
    time.textContent = counted.toLocaleTimeString();
  }

  // A chart is made again when its series change (a version registered), else given the
  // new data: uPlot redraws in place.
  function chart(key, element, options, data) {
    const labels = options.series.map((series) => series.label).join("\n");
    const width = Math.max(element.clientWidth, 280);
    const existing = charts[key];
    if (existing && existing.labels === labels && existing.width === width) {
      existing.plot.setData(data);
      return;
    }
    if (existing) existing.plot.destroy();
    const plot = new uPlot({ width, height: 220, ...options }, data, element);
    charts[key] = { plot, labels, width };
  }

  function lines(names, spanGaps) {
    return [{}].concat(
      names.map((label, index) => ({
        label,
        stroke: COLOURS[index % COLOURS.length],
        width: 2,
        spanGaps,
      }))
    );
  }

  function drawPerMinute(data) {
    const minutes = data.window_minutes;
    const times = Array.from({ length: minutes }, (_, i) => data.counted_at - (minutes - 1 - i) * 60);
    const names = data.versions.map(versionName);
    chart(
      "per-minute",
      document.getElementById("chart-per-minute"),
      { series: lines(names, false), scales: { y: { range: (u, min, max) => [0, Math.max(max, 1)] } } },
      [times, ...data.versions.map((entry) => entry.per_minute)]
    );
  }

  function drawQueue(data) {
    // The figures change once per count, however often they are asked for.
    const fresh = history.times[history.times.length - 1] !== data.counted_at;
    if (fresh) history.times.push(data.counted_at);
    const names = [];
    for (const entry of data.versions) {
      const depth = QUEUED.reduce((sum, status) => sum + entry.queue[status], 0);
      names.push(`${versionName(entry)} queued`, `${versionName(entry)} lag`);
      const depths = (history.series[names[names.length - 2]] ||= []);
      const lags = (history.series[names[names.length - 1]] ||= []);
      if (fresh) {
        depths.push(depth);
        lags.push(entry.lag);
      }
    }
    // A series that came later is padded with gaps before its first reading.
    for (const name of names) {
      const values = history.series[name];
      while (values.length < history.times.length) values.unshift(null);
    }
    if (history.times.length > HISTORY) {
      history.times.shift();
      for (const values of Object.values(history.series)) values.shift();
    }
    chart(
      "queue",
      document.getElementById("chart-queue"),
      {
        series: lines(names, true),
        scales: {
          // From the readings themselves: for a single one uPlot would span 1,000 days.
          x: {
            time: true,
            range: () => {
              const last = history.times[history.times.length - 1];
              return [history.times.length > 1 ? history.times[0] : last - 60, last];
            },
          },
          y: { range: (u, min, max) => [0, Math.max(max, 1)] },
        },
      },
      [history.times.slice(), ...names.map((name) => history.series[name].slice())]
    );
  }

  function drawLatency(data) {
    const container = document.getElementById("latency");
    for (const entry of data.versions) {
      const name = versionName(entry);
      let block = container.querySelector(`[data-version="${CSS.escape(name)}"]`);
      if (!block) {
        block = document.createElement("section");
        block.className = "latency";
        block.dataset.version = name;
        block.innerHTML = "<h4></h4><p class=\"muted none\">No succeeded job in the last hour.</p><div class=\"chart\"></div><div class=\"table-wrap\"><table><thead></thead><tbody></tbody></table></div>";
        block.querySelector("h4").textContent = name;
        container.append(block);
      }
      const stages = Object.keys(entry.stage_seconds);
      const quantiles = Object.keys(entry.stage_seconds[stages[0]]);
      const ms = (stage, q) => {
        const seconds = entry.stage_seconds[stage][q];
        return seconds === null ? null : seconds * 1000;
      };
      const timed = stages.some((stage) => quantiles.some((q) => ms(stage, q) !== null));
      block.querySelector(".none").hidden = timed;
      block.querySelector(".chart").hidden = !timed;
      block.querySelector(".table-wrap").hidden = !timed;
      const key = `latency ${name}`;
      if (!timed) {
        if (charts[key]) charts[key].plot.destroy();
        delete charts[key];
        continue;
      }
      const head = document.createElement("tr");
      head.append(cell("th", "stage"), ...quantiles.map((q) => cell("th", `${percentile(q)} ms`)));
      // The table-wrap's: uPlot's legend is a table too.
      block.querySelector(".table-wrap thead").replaceChildren(head);
      block.querySelector(".table-wrap tbody").replaceChildren(
        ...stages.map((stage) => {
          const row = document.createElement("tr");
          row.dataset.stage = stage;
          row.append(
            cell("th", stage),
            ...quantiles.map((q) => {
              const value = ms(stage, q);
              return cell("td", value === null ? null : value.toFixed(1), percentile(q));
            })
          );
          return row;
        })
      );
      chart(
        key,
        block.querySelector(".chart"),
        {
          series: lines(quantiles.map((q) => `${percentile(q)} ms`), false).map((series, index) =>
            index ? { ...series, points: { show: true, size: 7 } } : series
          ),
          scales: { x: { time: false, range: [-0.5, stages.length - 0.5] } },
          axes: [
            { splits: () => stages.map((_, index) => index), values: (u, splits) => splits.map((i) => stages[i] || "") },
            { size: 64 },
          ],
        },
        [stages.map((_, index) => index), ...quantiles.map((q) => stages.map((stage) => ms(stage, q)))]
      );
    }
  }

  async function poll() {
    const error = document.getElementById("ops-error");
    try {
      const response = await fetch(root.dataset.url, { headers: { Accept: "application/json" } });
      if (!response.ok) throw new Error(`the figures could not be had (HTTP ${response.status})`);
      const data = await response.json();
      drawTable(data);
      drawPerMinute(data);
      drawQueue(data);
      drawLatency(data);
      error.textContent = "";
      root.dataset.drawn = String(data.counted_at);
    } catch (failure) {
      error.textContent = failure.message;
    }
    setTimeout(poll, POLL_MS);
  }

  poll();
})();
