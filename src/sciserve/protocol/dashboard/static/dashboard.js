// sciserve dashboard: copy buttons, the live charts and drift alerts of a model page.
// Written for this project; no library. Polls /ui/live/{name} every second.
"use strict";

(function () {
  var SVG = "http://www.w3.org/2000/svg";
  var WINDOW = 60; // points kept: one minute at one poll a second

  function copyText(text, button) {
    function done() {
      button.textContent = "Copied";
      setTimeout(function () { button.textContent = "Copy"; }, 1500);
    }
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () { fallback(text); done(); });
    } else {
      fallback(text);
      done();
    }
  }

  function fallback(text) {
    var area = document.createElement("textarea");
    area.value = text;
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } catch (e) { /* nothing more to try */ }
    document.body.removeChild(area);
  }

  function setupCopy() {
    var buttons = document.querySelectorAll("button.copy");
    for (var i = 0; i < buttons.length; i++) {
      buttons[i].addEventListener("click", function (event) {
        var button = event.currentTarget;
        var source = document.getElementById(button.getAttribute("data-target"));
        if (source) { copyText(source.textContent, button); }
      });
    }
  }

  function clear(svg) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
  }

  function line(svg, values, max, cls) {
    if (values.length < 2) { return; }
    var points = [];
    for (var i = 0; i < values.length; i++) {
      var x = (300 * i) / (WINDOW - 1);
      var y = 98 - (96 * (values[i] || 0)) / (max || 1);
      points.push(x.toFixed(1) + "," + y.toFixed(1));
    }
    var path = document.createElementNS(SVG, "polyline");
    path.setAttribute("points", points.join(" "));
    path.setAttribute("class", cls);
    path.setAttribute("fill", "none");
    svg.appendChild(path);
  }

  function label(svg, text) {
    var t = document.createElementNS(SVG, "text");
    t.setAttribute("x", "4");
    t.setAttribute("y", "12");
    t.setAttribute("class", "axis");
    t.textContent = text;
    svg.appendChild(t);
  }

  function peak(values) {
    var m = 0;
    for (var i = 0; i < values.length; i++) { if (values[i] > m) { m = values[i]; } }
    return m;
  }

  // The q-quantile (0..1) of the requests counted in cumulative buckets
  // [[bound, count], ...], by linear interpolation inside the bucket.
  function quantile(buckets, q) {
    if (!buckets.length) { return null; }
    var total = buckets[buckets.length - 1][1];
    if (total <= 0) { return null; }
    var rank = q * total, lower = 0, before = 0;
    for (var i = 0; i < buckets.length; i++) {
      var bound = buckets[i][0], count = buckets[i][1];
      if (count >= rank) {
        if (bound === null) { return lower; }
        var inside = count - before;
        return inside > 0 ? lower + (bound - lower) * ((rank - before) / inside) : bound;
      }
      lower = bound === null ? lower : bound;
      before = count;
    }
    return lower;
  }

  function difference(now, then) {
    if (!then || then.length !== now.length) { return now; }
    var out = [];
    for (var i = 0; i < now.length; i++) { out.push([now[i][0], now[i][1] - then[i][1]]); }
    return out;
  }

  function ms(seconds) {
    if (seconds === null) { return "–"; }
    return (seconds * 1000).toFixed(seconds < 0.01 ? 2 : 1) + " ms";
  }

  function setText(id, text) {
    var el = document.getElementById(id);
    if (el) { el.textContent = text; }
  }

  // Text only (textContent): error names come from the server, never as markup.
  function showErrors(errors) {
    var body = document.getElementById("live-errors");
    if (!body) { return; }
    while (body.firstChild) { body.removeChild(body.firstChild); }
    var rows = errors.length ? errors : [["none", "", ""]];
    for (var i = 0; i < rows.length; i++) {
      var tr = document.createElement("tr");
      for (var j = 0; j < 3; j++) {
        var td = document.createElement("td");
        td.textContent = String(rows[i][j]);
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  // The drift judgement of each loaded version: one row per score above its
  // threshold, else one row saying where the version stands.  Text only:
  // feature and model names come from packages, never as markup.
  function showDrift(drift) {
    var body = document.getElementById("drift-alerts");
    if (!body || !drift || !drift.enabled) { return; }
    var alerting = false, i, j;
    while (body.firstChild) { body.removeChild(body.firstChild); }
    for (i = 0; i < drift.versions.length; i++) {
      var v = drift.versions[i];
      if (v.state === "alerting") { alerting = true; }
      var breaches = v.breaches.length ? v.breaches : [null];
      for (j = 0; j < breaches.length; j++) {
        var b = breaches[j], tr = document.createElement("tr");
        tr.className = "drift-row " + v.state;
        var cells = b
          ? [v.version, v.state.replace(/_/g, " "), b.name, b.kind, String(b.score), String(b.threshold), v.since || ""]
          : [v.version, v.state.replace(/_/g, " "), v.note, v.since || ""];
        for (var k = 0; k < cells.length; k++) {
          var td = document.createElement("td");
          td.textContent = cells[k];
          if (!b && k === 2) { td.colSpan = 4; }
          if (b && k === 2) { td.className = "feature"; }
          if (k === 1) { td.className = "state"; }
          tr.appendChild(td);
        }
        body.appendChild(tr);
      }
    }
    if (!drift.versions.length) {
      var empty = document.createElement("tr"), cell = document.createElement("td");
      cell.colSpan = 7;
      cell.textContent = "No version of this model is loaded.";
      empty.appendChild(cell);
      body.appendChild(empty);
    }
    var summary = document.getElementById("drift-summary");
    if (summary) {
      var served = document.getElementById("drift").getAttribute("data-served") || "";
      summary.className = alerting ? "alerting" : "quiet";
      summary.textContent = alerting
        ? "Drift alert: the traffic of " + served + " no longer looks like its reference."
        : "No drift alert.";
    }
  }

  function setupLive() {
    var section = document.getElementById("live");
    if (!section) { return; }
    var url = section.getAttribute("data-url");
    var previous = null, history = { rps: [], p50: [], p99: [] };

    function push(key, value) {
      history[key].push(value);
      if (history[key].length > WINDOW) { history[key].shift(); }
    }

    function draw(data) {
      var rps = null, rowsPerSecond = null, p50 = null, p99 = null;
      if (previous) {
        var dt = Math.max(data.time - previous.time, 0.001);
        rps = (data.requests - previous.requests) / dt;
        rowsPerSecond = (data.rows - previous.rows) / dt;
        var recent = difference(data.latency_buckets, previous.latency_buckets);
        p50 = quantile(recent, 0.5);
        p99 = quantile(recent, 0.99);
      }
      if (p50 === null) {
        p50 = quantile(data.latency_buckets, 0.5);
        p99 = quantile(data.latency_buckets, 0.99);
      }
      setText("live-requests", String(data.requests));
      setText("live-rps", rps === null ? "–" : rps.toFixed(1));
      setText("live-rows", rowsPerSecond === null ? "–" : rowsPerSecond.toFixed(1));
      setText("live-p50", ms(p50));
      setText("live-p99", ms(p99));
      setText("live-queue", String(data.queue_depth));
      setText("live-failures", String(data.failures));
      push("rps", rps || 0);
      push("p50", p50 === null ? 0 : p50 * 1000);
      push("p99", p99 === null ? 0 : p99 * 1000);

      var chart = document.getElementById("chart-rps");
      clear(chart);
      line(chart, history.rps, peak(history.rps), "series-a");
      label(chart, "max " + peak(history.rps).toFixed(1) + "/s");

      chart = document.getElementById("chart-latency");
      clear(chart);
      var top = peak(history.p99);
      line(chart, history.p50, top, "series-a");
      line(chart, history.p99, top, "series-b");
      label(chart, "max " + top.toFixed(2) + " ms");

      chart = document.getElementById("chart-batches");
      clear(chart);
      var sizes = data.batch_sizes, most = 0, i;
      for (i = 0; i < sizes.length; i++) { if (sizes[i][1] > most) { most = sizes[i][1]; } }
      var width = sizes.length ? 300 / sizes.length : 300;
      for (i = 0; i < sizes.length; i++) {
        var h = (90 * sizes[i][1]) / (most || 1);
        var bar = document.createElementNS(SVG, "rect");
        bar.setAttribute("x", (i * width + 2).toFixed(1));
        bar.setAttribute("y", (98 - h).toFixed(1));
        bar.setAttribute("width", Math.max(width - 4, 1).toFixed(1));
        bar.setAttribute("height", h.toFixed(1));
        bar.setAttribute("class", "bar");
        var title = document.createElementNS(SVG, "title");
        title.textContent = "batch size " + sizes[i][0] + ": " + sizes[i][1] + " batches";
        bar.appendChild(title);
        chart.appendChild(bar);
      }
      label(chart, sizes.length ? "sizes " + sizes[0][0] + "…" + sizes[sizes.length - 1][0] : "no batches yet");
      showErrors(data.errors);
      showDrift(data.drift);
      previous = data;
    }

    function poll() {
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (response) {
          if (!response.ok) { throw new Error("HTTP " + response.status); }
          return response.json();
        })
        .then(function (data) {
          draw(data);
          setText("live-state", "Updated " + new Date().toLocaleTimeString());
        })
        .catch(function (error) { setText("live-state", "No live numbers: " + error.message); })
        .then(function () { setTimeout(poll, 1000); });
    }
    poll();
  }

  document.addEventListener("DOMContentLoaded", function () {
    setupCopy();
    setupLive();
  });
})();
