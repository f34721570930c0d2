"""Where tiles go: an XYZ folder, an MBTiles file, or a PMTiles archive.

All sinks share one small interface (``put``, ``get``, ``delete``, ``present``,
``commit``, ``finish``), used only by the writer in the main process.

- :class:`XYZSink` writes ``{z}/{x}/{y}.{ext}``, each tile to a temporary name and
  renamed into place (atomic on POSIX): a reader or a kill never sees half a tile.
- :class:`MBTilesSink` writes an MBTiles 1.3 file (TMS rows: ``tile_row = 2**z − 1 − y``)
  in SQLite transactions; ``finish`` writes the required metadata.
- :class:`PMTilesSink` collects tiles in an MBTiles staging file in the work folder
  (so a run can resume and a rerun can replace single tiles) and writes the archive,
  in tile-id order, to a temporary file renamed onto the destination at ``finish``.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mercantile

from .. import __version__
from ..errors import DestinationBusyError, OutputPathError, TileSourceError
from .imaging import FORMATS

__all__ = ["MBTilesSink", "PMTilesSink", "TileSetInfo", "XYZSink", "sink_kind", "store_errors"]


@dataclass(frozen=True)
class TileSetInfo:
    """What the finished cache describes about itself (MBTiles/PMTiles metadata)."""

    name: str
    fmt: str
    bounds: tuple[float, float, float, float]
    minzoom: int
    maxzoom: int
    attribution: str
    description: str = ""

    @property
    def center(self) -> tuple[float, float, int]:
        w, s, e, n = self.bounds
        return (w + e) / 2, (s + n) / 2, (self.minzoom + self.maxzoom) // 2


def sink_kind(dest: str | os.PathLike) -> str:
    """``xyz``, ``mbtiles`` or ``pmtiles``, from DEST's suffix (a folder otherwise)."""
    suffix = Path(dest).suffix.lower()
    return {".mbtiles": "mbtiles", ".pmtiles": "pmtiles"}.get(suffix, "xyz")


#: What a rerun needs to know after a failed write: nothing written is lost.
RESUME = "the tiles written so far are kept and a rerun resumes"


@contextmanager
def store_errors(path: Path):
    """Turn the errors of writing a tile store into one-line errors: another program holding
    an MBTiles file's lock (QGIS, sqlite3…), a full disk, a read-only folder."""
    try:
        yield
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise DestinationBusyError(
                f"{str(path)!r} is locked by another program ({exc}): close the program that has it "
                f"open for writing (QGIS, sqlite3, a tile server) and rerun; {RESUME}") from None
        raise OutputPathError(f"could not write {str(path)!r} ({exc}): free some space or choose another "
                              f"DEST; {RESUME}") from None
    except sqlite3.DatabaseError as exc:
        raise OutputPathError(f"{str(path)!r} is not a writable MBTiles (SQLite) file ({exc}): "
                              "choose another DEST") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        raise OutputPathError(f"could not write {str(exc.filename or path)!r} ({exc.strerror}): free some "
                              f"space or choose another DEST; {RESUME}") from None


#: MBTiles 1.3 spells JPEG "jpg".
MBTILES_FORMATS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


class XYZSink:
    """``root/{z}/{x}/{y}.{ext}`` with atomic renames."""

    def __init__(self, root: str | os.PathLike, fmt: str) -> None:
        self.root, self.fmt, self.ext = Path(root), fmt, FORMATS[fmt][1]
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, t: mercantile.Tile) -> Path:
        return self.root / str(t.z) / str(t.x) / f"{t.y}.{self.ext}"

    def present(self, z: int) -> set[tuple[int, int]]:
        out = set()
        zdir = self.root / str(z)
        if zdir.is_dir():
            for xdir in zdir.iterdir():
                if xdir.name.isdigit():
                    out.update((int(xdir.name), int(f.name[: -len(self.ext) - 1]))
                               for f in xdir.iterdir() if f.name.endswith("." + self.ext)
                               and f.name[: -len(self.ext) - 1].isdigit())
        return out

    def get(self, t: mercantile.Tile) -> bytes | None:
        try:
            return self.path(t).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, t: mercantile.Tile, data: bytes) -> None:
        path = self.path(t)
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
        try:
            with store_errors(path):
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(tmp, "wb") as f:
                    f.write(data)
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def delete(self, t: mercantile.Tile) -> None:
        self.path(t).unlink(missing_ok=True)

    def commit(self) -> None:
        pass

    def finish(self, info: TileSetInfo) -> None:
        doc = {"tilejson": "3.0.0", "name": info.name, "description": info.description,
               "attribution": info.attribution, "bounds": list(info.bounds), "center": list(info.center),
               "minzoom": info.minzoom, "maxzoom": info.maxzoom, "scheme": "xyz", "format": info.fmt,
               "tiles": [f"{{z}}/{{x}}/{{y}}.{self.ext}"], "generator": f"geo-pix2pix {__version__}"}
        tmp = self.root / f".tilejson.{uuid.uuid4().hex[:8]}.tmp"
        tmp.write_text(json.dumps(doc, indent=1) + "\n")
        os.replace(tmp, self.root / "tilejson.json")

    def close(self) -> None:
        pass


class MBTilesSink:
    """An MBTiles 1.3 file, written in transactions (one per :meth:`commit`)."""

    def __init__(self, path: str | os.PathLike, fmt: str) -> None:
        self.path, self.fmt = Path(path), fmt
        self.db = None
        try:
            with store_errors(self.path):
                self.db = sqlite3.connect(self.path, isolation_level="DEFERRED")
                self.db.executescript(
                    "CREATE TABLE IF NOT EXISTS metadata (name TEXT, value TEXT);"
                    "CREATE UNIQUE INDEX IF NOT EXISTS metadata_name ON metadata (name);"
                    "CREATE TABLE IF NOT EXISTS tiles (zoom_level INTEGER, tile_column INTEGER,"
                    " tile_row INTEGER, tile_data BLOB);"
                    "CREATE UNIQUE INDEX IF NOT EXISTS tile_index ON tiles (zoom_level, tile_column, tile_row);")
                self.db.commit()
                have = self.db.execute("SELECT value FROM metadata WHERE name='format'").fetchone()
            if have and have[0] != MBTILES_FORMATS[fmt]:
                raise OutputPathError(f"{str(path)!r} holds {have[0]} tiles, not {fmt}: pass --format "
                                      f"{have[0].replace('jpg', 'jpeg')} or choose another DEST")
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _row(t: mercantile.Tile) -> tuple[int, int, int]:
        return t.z, t.x, 2**t.z - 1 - t.y

    def present(self, z: int) -> set[tuple[int, int]]:
        n = 2**z - 1
        with store_errors(self.path):
            return {(x, n - r) for x, r in self.db.execute(
                "SELECT tile_column, tile_row FROM tiles WHERE zoom_level=?", (z,))}

    def get(self, t: mercantile.Tile) -> bytes | None:
        with store_errors(self.path):
            row = self.db.execute("SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? "
                                  "AND tile_row=?", self._row(t)).fetchone()
        return bytes(row[0]) if row else None

    def put(self, t: mercantile.Tile, data: bytes) -> None:
        with store_errors(self.path):
            self.db.execute("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?)",
                            (*self._row(t), sqlite3.Binary(data)))

    def delete(self, t: mercantile.Tile) -> None:
        with store_errors(self.path):
            self.db.execute("DELETE FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row=?",
                            self._row(t))

    def all_tiles(self):
        """Every (Tile, data), in no particular order."""
        rows = self.db.execute("SELECT zoom_level, tile_column, tile_row, tile_data FROM tiles")
        for z, x, r, data in rows:
            yield mercantile.Tile(x, 2**z - 1 - r, z), bytes(data)

    def commit(self) -> None:
        with store_errors(self.path):
            self.db.commit()

    def finish(self, info: TileSetInfo) -> None:
        lon, lat, cz = info.center
        meta = {"name": info.name, "format": MBTILES_FORMATS[info.fmt],
                "bounds": ",".join(f"{v:.7f}" for v in info.bounds), "center": f"{lon:.7f},{lat:.7f},{cz}",
                "minzoom": str(info.minzoom), "maxzoom": str(info.maxzoom), "attribution": info.attribution,
                "description": info.description, "type": "baselayer", "version": "1.3",
                "generator": f"geo-pix2pix {__version__}"}
        with store_errors(self.path):
            self.db.executemany("INSERT OR REPLACE INTO metadata VALUES (?, ?)", list(meta.items()))
            self.db.commit()

    def close(self) -> None:
        if self.db is not None:
            self.db.close()


class PMTilesSink:
    """A PMTiles v3 archive, staged in an MBTiles file and written whole at ``finish``."""

    TILE_TYPES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}

    def __init__(self, path: str | os.PathLike, fmt: str, staging: str | os.PathLike) -> None:
        self.path, self.fmt = Path(path), fmt
        self.stage = MBTilesSink(staging, fmt)
        for name in ("present", "get", "put", "delete", "commit"):
            setattr(self, name, getattr(self.stage, name))

    def finish(self, info: TileSetInfo) -> None:
        try:
            from pmtiles.tile import Compression, TileType, zxy_to_tileid
            from pmtiles.writer import Writer
        except ImportError:  # pragma: no cover - a declared dependency
            raise TileSourceError("writing PMTiles needs the 'pmtiles' package: "
                                  "pip install pmtiles") from None
        self.stage.commit()
        entries = sorted((zxy_to_tileid(t.z, t.x, t.y), t) for t, _ in self.stage.all_tiles())
        tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex[:8]}.tmp"
        w, s, e, n = info.bounds
        lon, lat, cz = info.center
        e7 = lambda v: int(round(v * 10_000_000))  # noqa: E731
        header = {"tile_compression": Compression.NONE,
                  "tile_type": getattr(TileType, self.TILE_TYPES[self.fmt]),
                  "min_lon_e7": e7(w), "min_lat_e7": e7(s), "max_lon_e7": e7(e), "max_lat_e7": e7(n),
                  "center_zoom": cz, "center_lon_e7": e7(lon), "center_lat_e7": e7(lat)}
        metadata = {"name": info.name, "description": info.description, "attribution": info.attribution,
                    "format": info.fmt, "type": "baselayer", "minzoom": info.minzoom, "maxzoom": info.maxzoom,
                    "generator": f"geo-pix2pix {__version__}"}
        try:
            with store_errors(self.path), open(tmp, "wb") as f:
                writer = Writer(f)
                for tile_id, t in entries:
                    writer.write_tile(tile_id, self.stage.get(t))
                if entries:
                    writer.finalize(header, metadata)
            if entries:
                os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self.stage.close()
