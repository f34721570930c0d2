"""``geo-pix2pix qgis``: build and install the QGIS plugin."""

from __future__ import annotations

import click

from .options import overwrite_opt


@click.group("qgis")
def qgis_group() -> None:
    """QGIS: the plugin that adds geo-pix2pix to the Processing toolbox and qgis_process."""


@qgis_group.command("build-plugin")
@click.option("-o", "--output", "output", type=click.Path(dir_okay=False), default="geo_pix2pix_plugin.zip",
              show_default=True, help="The plugin zip to write.")
@overwrite_opt
@click.pass_context
def qgis_build_plugin(ctx, output, overwrite):
    """Build the plugin zip for QGIS's Plugins ▸ Install from ZIP (and the plugin repository).

    The zip holds the plugin's sources only; on first use the plugin installs
    geo-pix2pix (this version), PyTorch and rasterio into its own environment.
    """
    from ..qgis.build import build_plugin

    result = build_plugin(output, overwrite=overwrite)
    if not ctx.meta.get("quiet"):
        click.echo(f"wrote {result.path} (geo-pix2pix plugin {result.version}, {len(result.files)} files, "
                   f"{result.size / 1e3:.0f} kB): in QGIS, Plugins ▸ Manage and Install Plugins ▸ Install from "
                   "ZIP", err=True)


@qgis_group.command("install-plugin")
@click.option("--profile-dir", type=click.Path(file_okay=False), default=None,
              help="QGIS profile folder [default: this OS's default profile, e.g. "
                   "~/.local/share/QGIS/QGIS3/profiles/default on Linux].")
@click.option("--overwrite", is_flag=True,
              help="Replace a geo_pix2pix_plugin folder that geo-pix2pix did not install.")
@click.pass_context
def qgis_install_plugin(ctx, profile_dir, overwrite):
    """Install the geo-pix2pix QGIS plugin into a QGIS profile.

    Run it with the Python that QGIS uses (or one of the same version): the plugin
    records where this Python finds geo_pix2pix, so QGIS finds it there too.
    """
    from ..qgis.install import PLUGIN_NAME, install_plugin

    result = install_plugin(profile_dir, overwrite=overwrite)
    if not ctx.meta.get("quiet"):
        verb = "updated" if result.replaced else "installed"
        click.echo(f"{verb} {result.path}\nenable it in QGIS (Plugins ▸ Manage and Install Plugins ▸ "
                   f"Installed) or with: qgis_process plugins enable {PLUGIN_NAME}", err=True)
