"""The web page that shows a tile set: the aerial layer, the source map and a swipe slider.

One page for both uses: ``geo-pix2pix serve`` answers ``/`` with it, and ``tiles
--webviewer`` writes it as ``index.html`` beside an XYZ folder (as gdal2tiles writes its
``leaflet.html``). Leaflet (from the npm package ``leaflet``, BSD-2-Clause, its licence
beside it) ships inside geo-pix2pix in ``viewer/leaflet/``, so the page needs no network.
The page reads its settings (tile URLs relative to itself, bounds, zooms, attributions)
from a JSON block written into it.
"""

from __future__ import annotations

import html
import json
import os
from importlib import resources
from pathlib import Path

from ..errors import OutputPathError

__all__ = ["STATIC", "page", "static_file", "write_viewer"]

#: Files served under ``/viewer/`` and copied by ``--webviewer``: nothing else is reachable.
STATIC = {
    "viewer.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
    "leaflet/leaflet.js": "text/javascript; charset=utf-8",
    "leaflet/leaflet.css": "text/css; charset=utf-8",
    "leaflet/LICENSE": "text/plain; charset=utf-8",
    "leaflet/images/layers.png": "image/png",
    "leaflet/images/layers-2x.png": "image/png",
    "leaflet/images/marker-icon.png": "image/png",
    "leaflet/images/marker-icon-2x.png": "image/png",
    "leaflet/images/marker-shadow.png": "image/png",
}


def static_file(name: str) -> bytes:
    """One of :data:`STATIC`'s files (KeyError for any other name)."""
    if name not in STATIC:
        raise KeyError(name)
    return resources.files(__package__).joinpath("viewer", *name.split("/")).read_bytes()


def page(config: dict, base: str = "viewer/") -> str:
    """The HTML page for ``config`` (see :func:`viewer_config`); ``base``: where the static
    files are, relative to the page."""
    template = static_template()
    # </script> inside the JSON would end the script element: escape every "</".
    data = json.dumps(config, indent=1).replace("</", "<\\/")
    return (template.replace("{{TITLE}}", html.escape(config.get("name") or "geo-pix2pix"))
            .replace("{{BASE}}", html.escape(base)).replace("{{CONFIG}}", data))


def static_template() -> str:
    return resources.files(__package__).joinpath("viewer", "index.html").read_text(encoding="utf-8")


def viewer_config(*, name: str, bounds, minzoom: int, maxzoom: int, aerial_url: str, aerial_attribution: str,
                  aerial_zooms: tuple[int, int], map_url: str | None = None, map_attribution: str | None = None,
                  map_zooms: tuple[int, int] | None = None) -> dict:
    """The page's settings; URLs are templates with ``{z}/{x}/{y}``, relative to the page."""
    cfg = {"name": name, "bounds": [float(v) for v in bounds], "minzoom": minzoom, "maxzoom": maxzoom,
           "aerial": {"url": aerial_url, "attribution": html.escape(aerial_attribution),
                      "minzoom": aerial_zooms[0], "maxzoom": aerial_zooms[1]},
           "map": None}
    if map_url is not None:
        lo, hi = map_zooms or (minzoom, maxzoom)
        if map_attribution and map_attribution in aerial_attribution:
            map_attribution = None  # the aerial layer's names the map data already: once is enough
        cfg["map"] = {"url": map_url, "attribution": html.escape(map_attribution or ""), "minzoom": lo,
                      "maxzoom": hi}
    return cfg


def write_viewer(dest: str | os.PathLike, map_url: str | None = None, map_attribution: str | None = None) -> Path:
    """Write ``index.html`` and its static files into the XYZ folder ``dest`` (which holds
    the ``tilejson.json`` a ``tiles`` run writes). ``map_url``: a ``{z}/{x}/{y}`` URL of
    the source map to swipe against (a tile server SOURCE); without it the page shows the
    aerial layer alone. Returns the page's path."""
    dest = Path(dest)
    try:
        doc = json.loads((dest / "tilejson.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OutputPathError(f"--webviewer needs the tilejson.json of an XYZ folder DEST, and {str(dest)!r} has "
                              f"none readable ({exc}): use a folder DEST") from None
    lo, hi = int(doc["minzoom"]), int(doc["maxzoom"])
    template = doc["tiles"][0]
    url = template if "://" in template else template.lstrip("./")
    cfg = viewer_config(name=doc.get("name") or dest.name, bounds=doc["bounds"], minzoom=lo, maxzoom=hi,
                        aerial_url=url, aerial_attribution=doc.get("attribution") or "", aerial_zooms=(lo, hi),
                        map_url=map_url, map_attribution=map_attribution)
    for name in STATIC:
        path = dest / "viewer" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(static_file(name))
    index = dest / "index.html"
    index.write_text(page(cfg), encoding="utf-8")
    return index
