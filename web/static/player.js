// The player's waveform (wavesurfer.js with its regions plugin, vendored under
// /static/vendor/wavesurfer.js), drawn over the page's <audio> element, with the consent
// decision and any withdrawal marked, and the stretches an agent paused shaded. Without
// JavaScript the <audio> element plays alone and the page lists the same moments.
"use strict";
(function () {
  const audio = document.getElementById("player");
  const box = document.getElementById("waveform");
  const marks = document.getElementById("player-marks");
  const paused = document.getElementById("player-paused");
  if (!audio || !box || typeof WaveSurfer === "undefined") return;
  const regions = WaveSurfer.Regions.create();
  const wave = WaveSurfer.create({
    container: box,
    media: audio,
    height: 80,
    waveColor: "#8d99ae",
    progressColor: "#1f3a5f",
    cspNonce: box.dataset.styleNonce,
    plugins: [regions],
  });
  wave.on("decode", function () {
    for (const mark of JSON.parse(marks ? marks.textContent : "[]")) {
      regions.addRegion({ start: mark.at, content: mark.label, color: "#e85d04", drag: false });
    }
    for (const stretch of JSON.parse(paused ? paused.textContent : "[]")) {
      regions.addRegion({
        start: stretch.start,
        end: stretch.end,
        content: "paused",
        color: "rgba(141, 153, 174, 0.35)",
        drag: false,
        resize: false,
      });
    }
    box.dataset.ready = "1";
  });
})();
