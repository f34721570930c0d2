"""XYZ tile caches of synthetic aerial imagery, made and kept up to date in batch.

``geo-pix2pix tiles SOURCE DEST --zoom 14-17`` reads map tiles (an XYZ folder, an
MBTiles file, a tile server or a georeferenced raster), runs the model at the zoom
matching its ground resolution over metatiles with a buffer of context, and writes
an XYZ folder, an MBTiles file or a PMTiles archive. A manifest records what every
tile was made from, so reruns regenerate only what changed. One concept per module:

- :mod:`.tilemath` — zoom ranges, the model's zoom, the chip grid and dependencies (pure);
- :mod:`.area` — bounding boxes and GeoJSON areas of interest, and their tiles (pure);
- :mod:`.plan` — which tiles at which zooms, cut into metatiles (pure);
- :mod:`.imaging` — decoding, encoding, upsampling and overview averaging of tiles;
- :mod:`.sources` / :mod:`.sinks` — reading map tiles, writing the cache;
- :mod:`.manifest` — tile keys, the manifest and the lock on DEST;
- :mod:`.metatile` / :mod:`.workers` — rendering one metatile, in-process or in workers;
- :mod:`.options` — the run's options and result; :mod:`.seed` — the run, :func:`make_tiles`.
"""

from importlib import import_module

__all__ = ["Area", "ChipGrid", "CopyModel", "TileOptions", "TilesResult", "make_tiles", "native_zoom", "open_source",
           "parse_zoom_range"]

# Loaded on first use, so that the pure tile maths imports without torch.
_WHERE = {"Area": ".area", "ChipGrid": ".tilemath", "CopyModel": ".options", "TileOptions": ".options",
          "TilesResult": ".options", "make_tiles": ".seed", "native_zoom": ".tilemath", "open_source": ".sources",
          "parse_zoom_range": ".tilemath"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name], __name__), name)
