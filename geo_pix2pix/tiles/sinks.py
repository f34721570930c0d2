"""Where tiles go: an XYZ folder, an MBTiles file, or a PMTiles archive.

All sinks share one small interface (``put``, ``get``, ``delete``, ``present``,
``commit``, ``finish``), used only by the writer in the main process.

- :class:`XYZSink` writes ``{z}/{x}/{y}.{ext}``, each tile to a temporary name (in the
  work folder's ``incoming/``) and renamed into place (atomic on POSIX): a reader or a
  kill never sees half a tile.
- :class:`MBTilesSink` writes an MBTiles 1.3 file (TMS rows: ``tile_row = 2**z − 1 − y``)
  in SQLite transactions; ``finish`` writes the required metadata. Replacing a file
  that another program made (``--overwrite``), it writes a new file in the work folder
  and renames it onto DEST at ``finish``: until then DEST is untouched.
- :class:`PMTilesSink` collects tiles in an MBTiles staging file in the work folder
  (so a run can resume and a rerun can replace single tiles) and writes the archive,
  in tile-id order, to a temporary file renamed onto the destination at ``finish``.

Metadata (MBTiles ``metadata``, PMTiles metadata, ``tilejson.json``) names the tileset,
its attribution (the source's, next to "synthetic imagery"), its ``version`` (the
tileset's revision, see :mod:`.manifest`), the software that made it and the model's
identity; it never holds a local path.
"""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mercantile

from ..errors import DestinationBusyError, OutputPathError, TileSourceError
from ..io.atomic import fsync, temp_name, temp_path
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
    version: int = 1  # the tileset's revision (not the MBTiles or TileJSON spec's)
    extra: dict = field(default_factory=dict)  # more metadata: generator, model…
    url_base: str | None = None  # XYZ: absolute tile URLs in tilejson.json
    middle: tuple[float, float] | None = None  # lon, lat of the centre (default: the bounds' middle)

    @property
    def center(self) -> tuple[float, float, int]:
        w, s, e, n = self.bounds
        lon, lat = self.middle or ((w + e) / 2, (s + n) / 2)
        return lon, lat, (self.minzoom + self.maxzoom) // 2


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
    """``root/{z}/{x}/{y}.{ext}`` with atomic renames (temporaries in ``scratch``)."""

    def __init__(self, root: str | os.PathLike, fmt: str, scratch: str | os.PathLike | None = None) -> None:
        self.root, self.fmt, self.ext = Path(root), fmt, FORMATS[fmt][1]
        self.root.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(scratch) if scratch is not None else None
        if self.scratch is not None:
            self.scratch.mkdir(parents=True, exist_ok=True)

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

    def has(self, tiles) -> set[mercantile.Tile]:
        """Those of ``tiles`` that are on disk."""
        return {t for t in tiles if self.path(t).is_file()}

    def get(self, t: mercantile.Tile) -> bytes | None:
        try:
            return self.path(t).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, t: mercantile.Tile, data: bytes) -> None:
        path = self.path(t)
        folder = self.scratch if self.scratch is not None else path.parent
        try:
            self._put(path, folder / temp_name(f"{t.z}-{t.x}-{t.y}.{self.ext}"), data)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            # a level folder on another file system (a symlink): rename within it
            self._put(path, path.parent / temp_name(path.name), data)

    @staticmethod
    def _put(path: Path, tmp: Path, data: bytes) -> None:
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
        doc = tilejson(info, f"{{z}}/{{x}}/{{y}}.{self.ext}")
        tmp = temp_path(self.root / "tilejson.json")
        try:
            with store_errors(self.root / "tilejson.json"):
                tmp.write_text(json.dumps(doc, indent=1) + "\n")
                os.replace(tmp, self.root / "tilejson.json")
        finally:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        pass


def tilejson(info: TileSetInfo, template: str) -> dict:
    """A TileJSON 3.0.0 document. ``tiles`` is absolute with ``info.url_base``; otherwise it
    is relative, to be resolved against the URL the tilejson.json itself is served from."""
    url = f"{info.url_base.rstrip('/')}/{template}" if info.url_base else template
    doc = {"tilejson": "3.0.0", "name": info.name, "description": info.description, "version": f"{info.version}.0.0",
           "attribution": info.attribution, "bounds": list(info.bounds), "center": list(info.center),
           "minzoom": info.minzoom, "maxzoom": info.maxzoom, "scheme": "xyz", "format": info.fmt,
           "tiles": [url]}
    doc.update(info.extra)
    return doc


#: MBTiles metadata names that are not free for extra keys.
MBTILES_NAMES = ("name", "format", "bounds", "center", "minzoom", "maxzoom", "attribution", "description",
                 "type", "version", "json")


class MBTilesSink:
    """An MBTiles 1.3 file, written in transactions (one per :meth:`commit`).

    ``final``: the path the file is renamed to at :meth:`finish` (a replacement built in
    the work folder); None: ``path`` is the destination itself.
    """

    def __init__(self, path: str | os.PathLike, fmt: str, final: str | os.PathLike | None = None) -> None:
        self.path, self.fmt = Path(path), fmt
        self.final = Path(final) if final is not None else None
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
                                      f"{str(have[0]).replace('jpg', 'jpeg')} or choose another DEST")
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

    def has(self, tiles) -> set[mercantile.Tile]:
        """Those of ``tiles`` that are stored (one index range per column)."""
        cols: dict[tuple[int, int], list[int]] = {}
        for t in tiles:
            cols.setdefault((t.z, t.x), []).append(t.y)
        out = set()
        with store_errors(self.path):
            for (z, x), ys in cols.items():
                n = 2**z - 1
                rows = {r for (r,) in self.db.execute(
                    "SELECT tile_row FROM tiles WHERE zoom_level=? AND tile_column=? AND tile_row BETWEEN ? AND ?",
                    (z, x, n - max(ys), n - min(ys)))}
                out.update(mercantile.Tile(x, y, z) for y in ys if n - y in rows)
        return out

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

    def finish(self, info: TileSetInfo, before_rename=None) -> str | None:
        """Write the metadata; a replacement is then renamed onto its destination, and
        the identity of the file renamed is returned (see :func:`.manifest.file_identity`).
        ``before_rename(identity)`` is called once the file is complete, just before."""
        lon, lat, cz = info.center
        meta = {"name": info.name, "format": MBTILES_FORMATS[info.fmt],
                "bounds": ",".join(f"{v:.7f}" for v in info.bounds), "center": f"{lon:.7f},{lat:.7f},{cz}",
                "minzoom": str(info.minzoom), "maxzoom": str(info.maxzoom), "attribution": info.attribution,
                "description": info.description, "type": "baselayer", "version": str(info.version)}
        meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in info.extra.items()
                     if k not in MBTILES_NAMES})
        with store_errors(self.path):
            self.db.executemany("INSERT OR REPLACE INTO metadata VALUES (?, ?)", list(meta.items()))
            self.db.commit()
        if self.final is None:
            return None
        from .manifest import file_identity

        self.close()
        with store_errors(self.final):
            fsync(self.path)
            identity = file_identity(self.path)
            if before_rename is not None:
                before_rename(identity)
            os.replace(self.path, self.final)
            fsync(self.final.parent, folder=True)
        return identity

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


class PMTilesSink:
    """A PMTiles v3 archive, staged in an MBTiles file and written whole at ``finish``."""

    TILE_TYPES = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}

    def __init__(self, path: str | os.PathLike, fmt: str, staging: str | os.PathLike) -> None:
        self.path, self.fmt = Path(path), fmt
        self.stage = MBTilesSink(staging, fmt)
        for name in ("present", "has", "get", "put", "delete", "commit"):
            setattr(self, name, getattr(self.stage, name))

    def finish(self, info: TileSetInfo, before_rename=None) -> str | None:
        """Write the archive beside DEST under a temporary name and rename it onto DEST.

        ``before_rename(identity)`` is called once the archive is whole and on disk, just
        before the rename: the manifest records what it is about to publish. Returns the
        identity of the archive published (None: no tile, nothing written).
        """
        try:
            from pmtiles.tile import Compression, TileType, zxy_to_tileid
            from pmtiles.writer import Writer
        except ImportError:  # pragma: no cover - a declared dependency
            raise TileSourceError("writing PMTiles needs the 'pmtiles' package: "
                                  "pip install pmtiles") from None
        from .manifest import file_identity

        self.stage.commit()
        db = self.stage.db
        db.create_function("pmtiles_id", 3, lambda z, x, r: zxy_to_tileid(z, x, 2**z - 1 - r), deterministic=True)
        w, s, e, n = info.bounds
        lon, lat, cz = info.center
        e7 = lambda v: int(round(v * 10_000_000))  # noqa: E731
        header = {"tile_compression": Compression.NONE,
                  "tile_type": getattr(TileType, self.TILE_TYPES[self.fmt]),
                  "min_lon_e7": e7(w), "min_lat_e7": e7(s), "max_lon_e7": e7(e), "max_lat_e7": e7(n),
                  "center_zoom": cz, "center_lon_e7": e7(lon), "center_lat_e7": e7(lat)}
        metadata = {"name": info.name, "description": info.description, "attribution": info.attribution,
                    "format": info.fmt, "type": "baselayer", "minzoom": info.minzoom, "maxzoom": info.maxzoom,
                    "version": str(info.version), **info.extra}
        tmp = temp_path(self.path)
        try:
            with store_errors(self.path):
                with open(tmp, "wb") as f:
                    writer = Writer(f)
                    # The writer gathers tile data in a temporary file: on DEST's disk, not /tmp
                    # (often a small RAM disk); anonymous, so nothing is left if killed.
                    writer.tile_f.close()
                    writer.tile_f = tempfile.TemporaryFile(dir=self.path.parent)
                    # Tile ids in order, sorted by SQLite (on disk if large), data read one by one.
                    rows = db.execute("SELECT pmtiles_id(zoom_level, tile_column, tile_row) AS id, zoom_level, "
                                      "tile_column, tile_row FROM tiles ORDER BY id")
                    written = 0
                    for tile_id, z, x, r in rows:
                        data = db.execute("SELECT tile_data FROM tiles WHERE zoom_level=? AND tile_column=? "
                                          "AND tile_row=?", (z, x, r)).fetchone()[0]
                        writer.write_tile(tile_id, bytes(data))
                        written += 1
                    if not written:
                        writer.tile_f.close()
                        return None
                    writer.finalize(header, metadata)
                    f.flush()
                    os.fsync(f.fileno())
                identity = file_identity(tmp)
                if before_rename is not None:
                    before_rename(identity)
                os.replace(tmp, self.path)
                fsync(self.path.parent, folder=True)
            return identity
        finally:
            tmp.unlink(missing_ok=True)

    def close(self) -> None:
        self.stage.close()


