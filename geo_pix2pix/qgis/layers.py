"""QGIS layers in and out: which raster layers geo-pix2pix can read, where results go.

geo-pix2pix reads rasters with GDAL (through rasterio), as Deepness reads its input
through the layer's data provider: here the layer must be one GDAL can open by
itself, that is a layer of QGIS's ``gdal`` provider (GeoTIFF, PNG/JPEG, VRT,
GeoPackage rasters, ``/vsi…`` paths). Layers of other providers (WMS/WMTS/XYZ tile
services, WCS, PostGIS rasters, virtual rasters) are refused with a message saying
how to make a file of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from qgis.core import QgsProject, QgsProviderRegistry, QgsRasterLayer

from ..errors import InputRasterError

__all__ = ["default_output_path", "find_layer", "layer_source", "load_output_layer", "xyz_url_template"]

SUPPORTED = ("a raster layer read by GDAL (QGIS's 'gdal' provider): a GeoTIFF, PNG/JPEG, VRT or "
             "GeoPackage raster file")


def find_layer(project: QgsProject, id_or_name: str):
    """The layer of ``project`` with the id ``id_or_name``, else the first of that name; None if none."""
    return project.mapLayer(id_or_name) or next(iter(project.mapLayersByName(id_or_name)), None)


def layer_source(layer: QgsRasterLayer) -> str:
    """The path (or GDAL dataset name) that rasterio opens for ``layer``."""
    if not isinstance(layer, QgsRasterLayer):
        raise InputRasterError(f"{layer!r} is not a QgsRasterLayer: geo-pix2pix renders {SUPPORTED}")
    if not layer.isValid():
        raise InputRasterError(f"layer {layer.name()!r} is not valid (QGIS could not open "
                               f"{layer.source()!r}): fix its source first")
    provider = layer.providerType()
    if provider != "gdal":
        hint = ("for XYZ tile layers use the 'Regenerate XYZ tiles' algorithm; otherwise "
                if provider == "wms" else "")
        raise InputRasterError(
            f"layer {layer.name()!r} comes from the {provider!r} data provider; geo-pix2pix renders "
            f"{SUPPORTED}: {hint}save the layer as a GeoTIFF first (right-click ▸ Export ▸ Save As…, "
            "or Processing's 'Translate (convert format)') and render that file")
    source = layer.source()
    parts = QgsProviderRegistry.instance().decodeUri("gdal", source)
    path = parts.get("path") or source
    if parts.get("layerName") or parts.get("vsiPrefix") or not os.path.exists(path):
        return source  # a GDAL dataset name (GPKG:…, /vsizip/…, subdataset): rasterio opens it as is
    return path


def default_output_path(source: str, suffix: str = "_aerial.tif") -> Path:
    """``<input stem>_aerial.tif`` beside the input, numbered to never replace a file;
    in the temporary folder when the input's folder is not writable or not a folder."""
    src = Path(source)
    folder = src.parent if src.parent.is_dir() and os.access(src.parent, os.W_OK | os.X_OK) else None
    if folder is None:
        import tempfile

        folder = Path(tempfile.mkdtemp(prefix="geo-pix2pix-"))
    stem = src.stem if src.suffix else (src.name or "render")
    candidate = folder / f"{stem}{suffix}"
    n = 2
    while candidate.exists():
        candidate = folder / f"{stem}{Path(suffix).stem}_{n}{Path(suffix).suffix}"
        n += 1
    return candidate


def load_output_layer(path: str | os.PathLike, name: str, project: QgsProject | None = None,
                      add: bool = True) -> QgsRasterLayer:
    """Open the rendered file as a raster layer and add it to ``project`` (default: the current one)."""
    layer = QgsRasterLayer(os.fspath(path), name, "gdal")
    if not layer.isValid():
        raise InputRasterError(f"QGIS could not open the rendered file {os.fspath(path)!r}: "
                               "its GDAL may lack the driver for this format; write a .tif instead")
    if add:
        (project or QgsProject.instance()).addMapLayer(layer)
    return layer


def xyz_url_template(layer) -> str | None:
    """The ``{z}/{x}/{y}`` URL template of an XYZ tile layer (``wms`` provider, ``type=xyz``), else None."""
    if not isinstance(layer, QgsRasterLayer) or layer.providerType() != "wms":
        return None
    # The wms provider's URI is a query string (type=xyz&url=…, values percent-encoded).
    parts = {k: v[0] for k, v in parse_qs(layer.source()).items()}
    url = parts.get("url")
    if parts.get("type") != "xyz" or not url:
        return None
    if url.startswith("file://"):  # a local XYZ folder opened as a layer
        path = unquote(urlparse(url).path)
        if "/{z}/{x}/{y}." in path:
            return path.split("/{z}/")[0]
    return url
