"""geo-pix2pix: synthetic aerial imagery from georeferenced map rasters with pix2pix.

The stable Python API::

    import geo_pix2pix
    model = geo_pix2pix.load_model()              # the default model, shipped in the package
    geo_pix2pix.render("map.tif", "aerial.tif", model=model)

``Generator()`` and ``Discriminator()`` build the paper's networks.

Importing the package is cheap: the names below are loaded on first use, so that the
command line installs its signal handlers before torch is imported and ``--help``,
the QGIS plugin's start-up and the pure maths load without torch.
"""

import importlib
import sys
import types

from ._version import __version__ as __version__

#: public name → the submodule that defines it
_EXPORTS = {
    "Discriminator": "model.networks",
    "DiscriminatorConfig": "model.networks",
    "Generator": "model.networks",
    "GeneratorConfig": "model.networks",
    "GeoPix2PixError": "errors",
    "NotGeoreferencedWarning": "errors",
    "Pix2PixModel": "model.load",
    "RenderResult": "render",
    "load_model": "model.load",
    "render": "render",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        object.__setattr__(sys.modules[__name__], name, value)
        return value
    try:  # `geo_pix2pix.osm` after a bare `import geo_pix2pix`, as when the package imported it
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(types.ModuleType):
    """Keeps ``geo_pix2pix.render`` the function: importing the submodule of the same name
    would otherwise rebind the package's attribute to the module."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            self.__dict__.pop(name, None)  # resolved again, as the function, by __getattr__
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
