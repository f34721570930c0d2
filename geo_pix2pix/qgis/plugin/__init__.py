"""QGIS plugin of geo-pix2pix: registers the geo-pix2pix Processing provider.

Installed by ``geo-pix2pix qgis install-plugin`` as ``geo_pix2pix_plugin``; the code
it runs is the installed ``geo_pix2pix`` package (``geo_pix2pix.qgis``).
"""


def classFactory(iface):  # noqa: N802 - the name QGIS calls
    from .plugin import GeoPix2PixPlugin

    return GeoPix2PixPlugin(iface)
