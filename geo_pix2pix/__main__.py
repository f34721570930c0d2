"""``python -m geo_pix2pix`` runs the command line (``torchrun -m geo_pix2pix train`` too)."""

from .cli.main import main

main(prog_name="geo-pix2pix")
