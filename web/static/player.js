// The player's waveform (wavesurfer.js with its regions plugin, vendored under
// /static/vendor/wavesurfer.js), drawn over the page's <audio> element, with the consent
// decision and any withdrawal marked. Without JavaScript the <audio> element plays alone.
"use strict";
(function () {
  const audio = document.getElementById("player");
  const box = document.getElementById("waveform");
  const marks = document.getElementById("player-marks");
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
    box.dataset.ready = "1";
  });
})();
