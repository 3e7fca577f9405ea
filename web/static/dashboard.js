// Draws the consent outcomes per campaign per day with Chart.js (vendored under
// /static/vendor/chart.js). The numbers come from a JSON block in the page; without
// JavaScript the table below the charts shows the same numbers.
"use strict";
(function () {
  const node = document.getElementById("dashboard-data");
  if (!node || typeof Chart === "undefined") return;
  const data = JSON.parse(node.textContent);
  const colours = { granted: "#2b7a0b", declined: "#a4161a", no_input: "#8d99ae",
    withdrawn: "#e85d04", not_required: "#1f3a5f" };
  const holder = document.getElementById("charts");
  for (const [campaign, days] of Object.entries(data.outcomes)) {
    const labels = Object.keys(days).sort();
    const box = document.createElement("div");
    box.className = "chart";
    const title = document.createElement("h3");
    title.textContent = campaign;
    const canvas = document.createElement("canvas");
    box.append(title, canvas);
    holder.append(box);
    new Chart(canvas, {
      type: "bar",
      data: {
        labels,
        datasets: data.outcome_names.map((name) => ({
          label: name,
          data: labels.map((d) => days[d][name] || 0),
          backgroundColor: colours[name],
        })),
      },
      options: { animation: false, scales: { x: { stacked: true }, y: { stacked: true, beginAtZero: true } } },
    });
  }
})();
