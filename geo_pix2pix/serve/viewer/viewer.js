/* geo-pix2pix viewer: the synthetic aerial layer, the source map and a swipe between them.
 * Reads its settings from the JSON in #geo-pix2pix-config (written by `geo-pix2pix serve`
 * or `tiles --webviewer`); tile URLs there are relative to this page. */
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("geo-pix2pix-config").textContent);
  var b = cfg.bounds; // W, S, E, N
  var bounds = L.latLngBounds([b[1], b[0]], [b[3], b[2]]);
  var map = L.map("map", {minZoom: cfg.minzoom, maxZoom: cfg.maxzoom});
  map.attributionControl.setPrefix('<a href="https://leafletjs.com">Leaflet</a>');
  map.fitBounds(bounds);

  // The map below, the aerial layer above it, each in a pane of its own so that the
  // aerial pane can be clipped at the swipe line.
  map.createPane("source").style.zIndex = 200;
  map.createPane("aerial").style.zIndex = 300;
  var state = {aerialLoaded: false, mapLoaded: !cfg.map, tileErrors: 0};

  var aerial = L.tileLayer(cfg.aerial.url, {
    pane: "aerial", bounds: bounds, minZoom: cfg.minzoom, maxZoom: cfg.maxzoom,
    minNativeZoom: cfg.aerial.minzoom, maxNativeZoom: cfg.aerial.maxzoom,
    attribution: cfg.aerial.attribution
  }).addTo(map);
  aerial.on("load", function () { state.aerialLoaded = true; });
  aerial.on("loading", function () { state.aerialLoaded = false; });
  aerial.on("tileerror", function () { state.tileErrors += 1; });

  var source = null;
  var slider = document.getElementById("swipe");
  var line = document.getElementById("swipe-line");
  if (cfg.map) {
    source = L.tileLayer(cfg.map.url, {
      pane: "source", bounds: bounds, minZoom: cfg.minzoom, maxZoom: cfg.maxzoom,
      minNativeZoom: cfg.map.minzoom, maxNativeZoom: cfg.map.maxzoom,
      attribution: cfg.map.attribution
    }).addTo(map);
    source.on("load", function () { state.mapLoaded = true; });
    source.on("loading", function () { state.mapLoaded = false; });
    slider.hidden = line.hidden = false;
    document.getElementById("labels").hidden = false;
    // Dragging the handle must not pan the map.
    L.DomEvent.disableClickPropagation(slider);
    L.DomEvent.on(slider, "mousedown touchstart pointerdown", L.DomEvent.stopPropagation);
  }

  function clip() {
    if (!source) { return; }
    var size = map.getSize();
    var nw = map.containerPointToLayerPoint([0, 0]);
    var se = map.containerPointToLayerPoint(size);
    var x = nw.x + size.x * Number(slider.value);
    // Aerial imagery left of the line, the map right of it.
    map.getPane("aerial").style.clip = "rect(" + [nw.y, x, se.y, nw.x].join("px,") + "px)";
    map.getPane("source").style.clip = "rect(" + [nw.y, se.x, se.y, x].join("px,") + "px)";
    line.style.left = (size.x * Number(slider.value)) + "px";
  }
  slider.addEventListener("input", clip);
  map.on("move zoom resize", clip);
  clip();

  // For scripts and tests: the map, its layers, and whether their tiles have loaded.
  window.geoPix2pix = {map: map, aerial: aerial, source: source, state: state,
                       swipe: function (v) { slider.value = v; clip(); }};
})();
