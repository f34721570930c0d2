"""What render leaves at DST (issue 15): side files replaced with the output, one
writer per DST, any existing path counted as existing."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from PIL import Image

from geo_pix2pix import NotGeoreferencedWarning, render
from geo_pix2pix.errors import OutputExistsError
from geo_pix2pix.raster import sidecars


def _plain_png(path, seed=0):
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif"])
def test_overwrite_replaces_or_removes_the_previous_outputs_side_files(make_raster, tmp_path, identity, suffix):
    """--overwrite of a georeferenced output by one without a georeference (or another
    one) leaves no side file of the old output: GDAL would read it as the new one's."""
    geo = make_raster(40, 50, crs="EPSG:32635")
    dst = tmp_path / f"out{suffix}"
    render(geo, dst, model=identity)
    if suffix != ".tif":  # PNG and JPEG keep CRS and transform in DST.aux.xml
        assert (tmp_path / f"out{suffix}.aux.xml").exists()
    stale = [tmp_path / f"out{suffix}.aux.xml", tmp_path / "out.wld", tmp_path / f"out{suffix}.ovr"]
    stale[0].write_text('<PAMDataset><GeoTransform>1, 5, 0, 9, 0, -5</GeoTransform></PAMDataset>')
    stale[1].write_text("5\n0\n0\n-5\n1000\n2000\n")
    stale[2].write_bytes(b"old overviews")

    plain = _plain_png(tmp_path / "plain.png")
    with pytest.warns(NotGeoreferencedWarning):
        render(plain, dst, model=identity, overwrite=True)
    assert not any(p.exists() for p in stale)
    with rasterio.open(dst) as ds:
        assert ds.crs is None and ds.transform.is_identity

    render(geo, dst, model=identity, overwrite=True)
    with rasterio.open(geo) as a, rasterio.open(dst) as b:
        assert b.crs == a.crs and b.transform == a.transform


def test_a_side_file_left_by_an_earlier_output_counts_as_existing(make_raster, tmp_path, identity):
    src = make_raster(40, 50)
    dst = tmp_path / "out.png"
    aux = tmp_path / "out.png.aux.xml"
    aux.write_text("<PAMDataset/>")
    with pytest.raises(OutputExistsError, match=r"side file .*out\.png\.aux\.xml.*--overwrite"):
        render(src, dst, model=identity)
    assert aux.read_text() == "<PAMDataset/>" and not dst.exists()


def test_sidecar_names():
    names = [p.name for p in sidecars("/x/out.png")]
    assert names == ["out.png.aux.xml", "out.png.ovr", "out.png.msk", "out.pgw", "out.pngw", "out.wld"]
    assert {"out.tfw", "out.tifw", "out.wld"} <= {p.name for p in sidecars("/x/out.tif")}
