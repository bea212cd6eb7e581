// Modelsmith dashboard: table filters, charts, and following the log's tip.
(function () {
  "use strict";

  // Filters: an input or select with class "filter", data-target (a table id) and
  // data-field (a row attribute, data-<field>); a checkbox filters on the value "yes".
  // A row stays when every filter with a value matches it (text: substring).
  function applyFilters(tableId) {
    var table = document.getElementById(tableId);
    if (!table) { return; }
    var filters = document.querySelectorAll('.filter[data-target="' + tableId + '"]');
    var rows = table.querySelectorAll(":scope > tbody > tr");
    var shown = 0;
    rows.forEach(function (row) {
      var keep = true;
      filters.forEach(function (f) {
        var want = f.type === "checkbox" ? (f.checked ? "yes" : "") : f.value.trim();
        if (!want) { return; }
        var have = row.getAttribute("data-" + f.getAttribute("data-field")) || "";
        if (f.tagName === "SELECT" || f.type === "checkbox") {
          if (have.split(" ").indexOf(want) < 0) { keep = false; }
        } else if (have.toLowerCase().indexOf(want.toLowerCase()) < 0) {
          keep = false;
        }
      });
      row.classList.toggle("hidden", !keep);
      if (keep) { shown += 1; }
    });
    var count = document.querySelector('[data-count="' + tableId + '"]');
    if (count) { count.textContent = String(shown); }
  }
  document.querySelectorAll(".filter").forEach(function (f) {
    var target = f.getAttribute("data-target");
    f.addEventListener("input", function () { applyFilters(target); });
    f.addEventListener("change", function () { applyFilters(target); });
  });

  // Charts: <div class="chart" data-chart="ID"> with <script type="application/json"
  // id="ID"> holding a Plotly figure ({data, layout}) made by plotly's Python package.
  document.querySelectorAll("[data-chart]").forEach(function (el) {
    if (typeof Plotly === "undefined") { return; }
    var spec = document.getElementById(el.getAttribute("data-chart"));
    if (!spec) { return; }
    var fig = JSON.parse(spec.textContent);
    Plotly.newPlot(el, fig.data, fig.layout || {}, { displaylogo: false, responsive: true });
  });

  // The dashboard follows the log: when its tip moves, the page is read again.
  var body = document.body;
  if (body.getAttribute("data-static") === "no" && window.fetch) {
    var tip = body.getAttribute("data-tip");
    var follow = document.getElementById("follow");
    setInterval(function () {
      fetch("/api/tip", { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (answer) {
          if (answer && (answer.tip || "") !== tip) {
            if (follow) { follow.textContent = "the log moved: reading it again"; }
            window.location.reload();
          }
        })
        .catch(function () {
          if (follow) { follow.textContent = "the dashboard is not answering"; }
        });
    }, 3000);
  }
}());
