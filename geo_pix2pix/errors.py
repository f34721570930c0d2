"""Exceptions and warnings of geo-pix2pix.

Every error a user can cause derives from :class:`GeoPix2PixError`; where a built-in
exception fits too it is a second base (as rasterio's ``RasterioIOError`` is an
``OSError``), so callers can catch either. Messages say the rule, the value and the fix
on one line: the CLI prints them as they are.
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "DatasetError",
    "DestinationBusyError",
    "DeviceError",
    "GeoPix2PixError",
    "InputRasterError",
    "MissingDependencyError",
    "ModelOutputError",
    "NotGeoreferencedWarning",
    "OptionError",
    "OsmDataError",
    "OutputExistsError",
    "OutputPathError",
    "ResolutionWarning",
    "TileSourceError",
]


class GeoPix2PixError(Exception):
    """Root of every error geo-pix2pix raises on purpose."""


class OptionError(GeoPix2PixError, ValueError):
    """An option has a value outside its rule (batch size, overlap, zoom range…)."""


class InputRasterError(GeoPix2PixError, OSError):
    """The input raster is missing, unreadable, or of a kind the tool cannot use."""


class OutputPathError(GeoPix2PixError, OSError):
    """The output cannot be written where asked (missing directory, same as input…)."""


class OutputExistsError(OutputPathError, FileExistsError):
    """The output exists and ``overwrite`` was not given."""


class DestinationBusyError(OutputPathError):
    """Another process is writing the same output or tile cache (its lock is held)."""


class CheckpointError(GeoPix2PixError, ValueError):
    """A weights file is corrupt, truncated, foreign, or of another architecture."""


class ModelOutputError(GeoPix2PixError, ValueError):
    """The model returned values that are not pixels (NaN): broken weights or a foreign model."""


class DeviceError(GeoPix2PixError, RuntimeError):
    """The requested device (cuda, mps) is not available."""


class DatasetError(GeoPix2PixError, ValueError):
    """A training or evaluation dataset is empty, unpaired or malformed."""


class TileSourceError(GeoPix2PixError, OSError):
    """An XYZ/MBTiles/PMTiles source or destination cannot be used."""


class MissingDependencyError(GeoPix2PixError, ImportError):
    """An optional dependency (an extra such as ``geo-pix2pix[osm]``) is not installed."""


class OsmDataError(GeoPix2PixError, OSError):
    """An OpenStreetMap file is missing or unreadable, or has nothing to draw in the area."""


class NotGeoreferencedWarning(UserWarning):
    """The input has no georeference: the pixel grid is kept and nothing is resampled."""


class ResolutionWarning(UserWarning):
    """The input's ground resolution is far from the model's and is resampled."""
