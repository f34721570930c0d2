"""geo-pix2pix: synthetic aerial imagery from georeferenced map rasters with pix2pix.

The stable Python API::

    import geo_pix2pix
    model = geo_pix2pix.load_model()              # the default model, shipped in the package
    geo_pix2pix.render("map.tif", "aerial.tif", model=model)

``Generator()`` and ``Discriminator()`` build the paper's networks.
"""

__version__ = "0.1.0"

from .errors import GeoPix2PixError, NotGeoreferencedWarning  # noqa: E402
from .model import Pix2PixModel, load_model  # noqa: E402
from .networks import Discriminator, DiscriminatorConfig, Generator, GeneratorConfig  # noqa: E402
from .render import RenderResult, render  # noqa: E402

__all__ = [
    "Discriminator",
    "DiscriminatorConfig",
    "Generator",
    "GeneratorConfig",
    "GeoPix2PixError",
    "NotGeoreferencedWarning",
    "Pix2PixModel",
    "RenderResult",
    "__version__",
    "load_model",
    "render",
]
