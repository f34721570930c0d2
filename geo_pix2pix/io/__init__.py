"""Raster I/O: :mod:`.read` (map rasters as RGB + validity mask), :mod:`.write` (the
rendered GeoTIFF, COG or PNG/JPEG), :mod:`.atomic` (temporary files and the one atomic
commit) and :mod:`.outlock` (one writer per output). Nothing is imported eagerly."""
