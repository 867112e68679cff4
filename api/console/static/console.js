// The console's charts (Chart.js) and the live run page, which polls its run's JSON every 2 s while it is active.
"use strict";
(function () {
  const COLORS = ["#2855c8", "#1f8a4c", "#c0392b", "#b7791f", "#7b3fb0", "#0f8a94", "#6b7280"];
  const OUTCOME_COLORS = { accepted: "#1f8a4c", edited: "#d69e2e", rejected: "#c0392b", shown: "#9aa5b8" };
  const data = (id) => { const el = document.getElementById(id); return el ? JSON.parse(el.textContent) : null; };
  const alpha = (hex, a) => hex + Math.round(a * 255).toString(16).padStart(2, "0");
  const base = { responsive: true, maintainAspectRatio: false, animation: false, interaction: { mode: "index", intersect: false } };

  // A line with its interval as a shaded band: two invisible lines (low, high) filled between.
  function banded(label, color, points, key) {
    return [
      { label: label + " low", data: points.map((p) => p.low), borderWidth: 0, pointRadius: 0, fill: false, band: true },
      { label: label + " high", data: points.map((p) => p.high), borderWidth: 0, pointRadius: 0, backgroundColor: alpha(color, 0.15), fill: "-1", band: true },
      { label: label, data: points.map((p) => p[key]), borderColor: color, backgroundColor: color, pointRadius: 2, spanGaps: true, fill: false },
    ];
  }
  const hideBands = { labels: { filter: (item, chart) => !chart.datasets[item.datasetIndex].band } };

  function overview() {
    const s = data("overview-data");
    if (!s) return;
    new Chart(document.getElementById("chart-outcomes"), {
      type: "bar",
      data: { labels: s.labels, datasets: Object.entries(s.outcomes).map(([o, v]) => ({ label: o, data: v, backgroundColor: OUTCOME_COLORS[o] })) },
      options: { ...base, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
    });
    const acc = [], dist = [];
    s.versions.forEach((v, i) => {
      const c = COLORS[i % COLORS.length];
      acc.push(...banded(v.model, c, v.acceptance, "rate"));
      dist.push(...banded(v.model, c, v.distance, "mean"));
    });
    new Chart(document.getElementById("chart-acceptance"), {
      type: "line", data: { labels: s.labels, datasets: acc },
      options: { ...base, plugins: { legend: hideBands }, scales: { y: { min: 0, max: 1 } } },
    });
    new Chart(document.getElementById("chart-distance"), {
      type: "line", data: { labels: s.labels, datasets: dist },
      options: { ...base, plugins: { legend: hideBands }, scales: { y: { beginAtZero: true } } },
    });
  }

  function canary() {
    const c = data("canary-data");
    if (!c) return;
    const sides = [[c.a_name + " (canary)", c.a], [c.b_name + " (baseline)", c.b]];
    new Chart(document.getElementById("chart-canary"), {
      type: "bar",
      data: {
        labels: sides.map((s) => s[0]),
        datasets: [
          { label: "acceptance rate", type: "line", data: sides.map((s) => s[1].rate), showLine: false, pointRadius: 7, pointStyle: "rectRot", borderColor: "#141a26", backgroundColor: "#141a26" },
          { label: "95% interval", data: sides.map((s) => [s[1].low, s[1].high]), backgroundColor: ["#2855c855", "#9aa5b888"], borderColor: ["#2855c8", "#6b7280"], borderWidth: 1, barPercentage: 0.4 },
        ],
      },
      options: { ...base, indexAxis: "x", scales: { y: { min: 0, max: 1 } } },
    });
  }

  function curveDatasets(curve) {
    const sets = [];
    let i = 0;
    for (const [stage, points] of Object.entries(curve || {})) {
      const keys = new Set();
      points.forEach((p) => Object.keys(p).forEach((k) => { if (k !== "step" && typeof p[k] === "number") keys.add(k); }));
      for (const k of keys) {
        if (!/loss|reward|accuracy|margin/.test(k)) continue;
        const color = COLORS[i++ % COLORS.length];
        sets.push({ label: stage + " " + k, data: points.filter((p) => typeof p[k] === "number").map((p) => ({ x: p.step, y: p[k] })),
          borderColor: color, backgroundColor: color, pointRadius: 1, yAxisID: /loss/.test(k) ? "y" : "y2" });
      }
    }
    return sets;
  }

  function run() {
    const box = document.getElementById("live");
    if (!box) return;
    const first = data("run-data");
    const chart = new Chart(document.getElementById("chart-curves"), {
      type: "line",
      data: { datasets: curveDatasets(first.curve) },
      options: { ...base, parsing: true, scales: { x: { type: "linear", title: { display: true, text: "step" } },
        y: { position: "left", title: { display: true, text: "loss" } }, y2: { position: "right", grid: { drawOnChartArea: false } } } },
    });
    function show(r) {
      const p = r.progress || {};
      document.getElementById("run-stage").textContent = p.stage || "-";
      const bar = document.getElementById("run-bar");
      bar.max = p.total || 1; bar.value = r.status === "succeeded" ? bar.max : p.step || 0;
      document.getElementById("run-step").textContent = p.total ? `step ${p.step}/${p.total}` : "";
      document.getElementById("run-eta").textContent = p.eta_s ? `ETA ${Math.round(p.eta_s)} s` : "";
      const status = document.querySelector("#run-status .badge");
      status.textContent = r.status; status.className = "badge " + r.status;
    }
    show(first);
    if (box.dataset.active !== "yes") return;
    const timer = setInterval(async () => {
      const response = await fetch(`/ui/runs/${box.dataset.run}/live`, { credentials: "same-origin" });
      if (!response.ok) return;
      const r = await response.json();
      show(r);
      chart.data.datasets = curveDatasets((r.metrics || {}).curve);
      chart.update();
      if (!["queued", "running"].includes(r.status)) clearInterval(timer);
    }, 2000);
  }

  document.addEventListener("DOMContentLoaded", () => { overview(); canary(); run(); });
})();
