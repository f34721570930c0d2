"""The Python console helper: render a raster layer and get the result back as a layer.

In QGIS's Python console::

    from geo_pix2pix.qgis import render_layer
    aerial = render_layer(iface.activeLayer())                    # → <map>_aerial.tif beside the map
    aerial = render_layer(layer, "/data/aerial.tif", overlap=96, device="cuda", overwrite=True)

It runs in the console's thread (QGIS waits, as with ``processing.run``); pass a
``QgsProcessingFeedback`` to follow progress or cancel, or use the Processing
algorithm "Render aerial imagery from map" to run in the background.
"""

from __future__ import annotations

import os

from qgis.core import QgsProcessingFeedback, QgsProject, QgsRasterLayer

from .compat import isolate_rasterio
from .feedback import run_with_feedback
from .layers import default_output_path, find_layer, layer_source, load_output_layer

__all__ = ["render_layer"]


def render_layer(
    layer: QgsRasterLayer | str,
    out_path: str | os.PathLike | None = None,
    *,
    name: str | None = None,
    project: QgsProject | None = None,
    feedback: QgsProcessingFeedback | None = None,
    **options,
) -> QgsRasterLayer:
    """Render the map raster ``layer`` into synthetic aerial imagery; add it to the project.

    ``layer``: a file-backed ``QgsRasterLayer`` (QGIS's ``gdal`` provider), or the id or
    name of one in ``project`` (default: the current project). ``out_path``: default
    ``<input>_aerial.tif`` beside the input (numbered, never replacing a file). Other
    keywords go to :func:`geo_pix2pix.render`: ``model`` (a model, or a checkpoint
    path), ``overlap``, ``batch_size``, ``device``, ``overwrite``, ``bands``, ``cog``…
    Returns the new layer, named ``name`` (default ``<layer name> (aerial)``).
    Errors are the library's (:class:`~geo_pix2pix.errors.GeoPix2PixError` and its
    subclasses); a run cancelled through ``feedback`` raises
    :class:`~geo_pix2pix.qgis.feedback.Canceled` and writes nothing.
    """
    from ..render import render

    isolate_rasterio()
    project = project or QgsProject.instance()
    if isinstance(layer, str):
        found = find_layer(project, layer)
        if found is None:
            raise ValueError(f"no layer with id or name {layer!r} in the project: pass a QgsRasterLayer")
        layer = found
    src = layer_source(layer)
    out = default_output_path(src) if out_path is None else out_path  # render refuses an existing one
    result = run_with_feedback(render, feedback, f"render of {layer.name()!r} canceled: nothing was written",
                               processing=False, src=src, dst=out, **options)
    return load_output_layer(result.path, name or f"{layer.name()} (aerial)", project)
