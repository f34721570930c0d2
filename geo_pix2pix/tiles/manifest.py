"""What each output tile was made from, and who may write the cache.

The work folder beside (or, for an XYZ folder, inside) DEST holds:

- ``manifest.sqlite``: one row per tile, ``(z, x, y, key, status)``. The key is a hash of
  everything the tile's pixels depend on: the model's identity, the options that change
  pixels, and the content digests of the source tiles under its chips (overview tiles:
  the keys of their four children). A rerun recomputes keys and regenerates a tile only
  when its key changed or the tile is missing. Rows are committed after the tiles they
  describe, so a kill leaves at worst a tile newer than its row, which the rerun simply
  makes again, identically.
- ``lock``: held with ``flock`` for the whole run. A second process on the same DEST
  gets :class:`~geo_pix2pix.errors.DestinationBusyError` at once; the kernel drops the
  lock when its holder dies, even by ``kill -9``.
- ``hidden.mbtiles``: levels made only to build overviews from (see :mod:`.plan`);
  ``staging.mbtiles``: the tiles of a PMTiles archive until it is written;
  ``replacement.mbtiles``: with ``--overwrite``, the MBTiles file that replaces a DEST
  not made by geo-pix2pix, renamed onto it at the end of the run;
  ``incoming/``: an XYZ tile on its way into place (renamed within the same file system).

The manifest's ``meta`` table also says whether DEST is finished: ``dirty`` is set (and
committed) before the first tile a run changes and cleared only once DEST is complete
again (metadata written; a PMTiles archive renamed into place, its identity recorded as
``published``), so a run that stopped in between, however it stopped, is finished by
the next one even when no tile needs making. ``generation`` counts those revisions
(the tileset's ``version``); ``replacing`` marks an ``--overwrite`` of another
program's file that has not yet been replaced.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import mercantile

from ..errors import OutputPathError
from ..io.outlock import OutputLock
from .sinks import store_errors

__all__ = ["destination_lock", "Manifest", "file_identity", "read_meta", "settings_digest", "tile_key",
           "work_dir"]

#: Bump when a change to the code changes the pixels made from the same inputs.
ALGORITHM_VERSION = 3  # 2: nodata in chips filled by fill_nodata, not the mean colour; 3: the tile core's weight sums


def work_dir(dest: str | os.PathLike, kind: str) -> Path:
    """The cache's work folder: ``DEST/.geo-pix2pix`` for a folder, else ``.NAME.geo-pix2pix``."""
    dest = Path(dest)
    if kind == "xyz":
        return dest / ".geo-pix2pix"
    return dest.parent / f".{dest.name}.geo-pix2pix"


def settings_digest(**settings) -> str:
    """Hash of the options that change pixels (JSON, keys sorted)."""
    settings["algorithm"] = ALGORITHM_VERSION
    text = json.dumps(settings, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tile_key(digest: str, parts: list[str]) -> str:
    """A tile's key: the settings digest and the digests of its inputs, in order."""
    h = hashlib.sha256(digest.encode())
    for p in parts:
        h.update(b"|" + p.encode())
    return h.hexdigest()[:40]


def destination_lock(work: Path, dest: str) -> OutputLock:
    """The lock that makes one process at a time write DEST (``work/lock``)."""
    return OutputLock(dest, path=work / "lock", name="DEST", alternative="choose another DEST")


class Manifest:
    """``manifest.sqlite``: tile keys and run settings."""

    def __init__(self, path: Path) -> None:
        self.path = path
        existed = path.exists()
        try:
            self.db = sqlite3.connect(path)
            self.db.executescript(
                "CREATE TABLE IF NOT EXISTS tiles (z INTEGER, x INTEGER, y INTEGER, key TEXT, status TEXT,"
                " PRIMARY KEY (z, x, y)) WITHOUT ROWID;"
                "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT);")
            self.db.commit()
        except sqlite3.OperationalError:  # a full disk, a read-only folder: not damage
            with store_errors(path):
                raise
        except sqlite3.DatabaseError as exc:
            raise OutputPathError(f"the manifest {str(path)!r} is damaged ({exc}): delete it and rerun "
                                  "(every tile will be made again)") from None
        self.existed = existed and bool(self.db.execute("SELECT 1 FROM tiles LIMIT 1").fetchone())

    def level(self, z: int) -> dict[tuple[int, int], tuple[str, str]]:
        """(x, y) → (key, status) of every recorded tile of zoom ``z`` (small caches and
        tests: a run looks tiles up block by block, :meth:`lookup`)."""
        rows = self.db.execute("SELECT x, y, key, status FROM tiles WHERE z=?", (z,))
        return {(x, y): (key, status) for x, y, key, status in rows}

    def column(self, z: int, x: int, y0: int, y1: int) -> dict[int, tuple[str, str]]:
        """y → (key, status) of the recorded tiles of zoom ``z``, column ``x``, rows [y0, y1]
        (one range of the primary key)."""
        rows = self.db.execute("SELECT y, key, status FROM tiles WHERE z=? AND x=? AND y BETWEEN ? AND ?",
                               (z, x, y0, y1))
        return {y: (key, status) for y, key, status in rows}

    def lookup(self, tiles) -> dict[mercantile.Tile, tuple[str, str]]:
        """Tile → (key, status) of those of ``tiles`` that are recorded."""
        out = {}
        for (z, x), ys in _columns(tiles).items():
            rows = self.column(z, x, min(ys), max(ys))
            out.update((mercantile.Tile(x, y, z), rows[y]) for y in ys if y in rows)
        return out

    def record(self, t: mercantile.Tile, key: str, status: str) -> None:
        with store_errors(self.path):
            self.db.execute("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?, ?)", (t.z, t.x, t.y, key, status))

    def forget(self, t: mercantile.Tile) -> None:
        with store_errors(self.path):
            self.db.execute("DELETE FROM tiles WHERE z=? AND x=? AND y=?", (t.z, t.x, t.y))

    def meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def set_meta(self, **values: str) -> None:
        with store_errors(self.path):
            self.db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))

    def commit(self) -> None:
        with store_errors(self.path):
            self.db.commit()

    def close(self) -> None:
        self.db.close()

    # -- publication ---------------------------------------------------------------------
    @property
    def generation(self) -> int:
        """The tileset's revision: 1 after the first run that wrote a tile, +1 for each run
        that changed one after the previous revision was finished (published)."""
        try:
            return int(self.meta("generation") or 0)
        except ValueError:
            return 0

    @property
    def dirty(self) -> bool:
        """Tiles changed since DEST was last finished (its metadata written, its PMTiles
        archive published): set, and committed, before the first tile a run changes."""
        return self.meta("dirty") == "1"

    def mark_dirty(self) -> None:
        if getattr(self, "_marked", False):
            return
        if not self.dirty:
            self.set_meta(dirty="1", generation=str(self.generation + 1))
            self.commit()
        self._marked = True

    def mark_published(self, **identity: str | None) -> None:
        self._marked = False
        with store_errors(self.path):
            self.db.execute("DELETE FROM meta WHERE name IN ('dirty', 'replacing')")
            for name, value in identity.items():
                if value is None:
                    self.db.execute("DELETE FROM meta WHERE name=?", (name,))
                else:
                    self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))
            self.db.commit()


def file_identity(path: str | os.PathLike) -> str | None:
    """What tells one file from another at the same path: inode, size, modification time
    (a rename keeps them). None when there is no file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return json.dumps({"ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}, sort_keys=True)


def read_meta(path: Path) -> dict[str, str]:
    """The meta table of a manifest, read without writing anything (empty if there is none)."""
    if not path.exists():
        return {}
    try:
        db = sqlite3.connect(f"file:{path.resolve()}?mode=ro", uri=True)
        try:
            return dict(db.execute("SELECT name, value FROM meta"))
        finally:
            db.close()
    except sqlite3.Error:
        return {}


def _columns(tiles) -> dict[tuple[int, int], list[int]]:
    cols: dict[tuple[int, int], list[int]] = {}
    for t in tiles:
        cols.setdefault((t.z, t.x), []).append(t.y)
    return cols
