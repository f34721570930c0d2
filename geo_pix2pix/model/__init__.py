"""The network and everything that turns weights into tiles.

:mod:`.networks` (the pix2pix U-Net and PatchGAN), :mod:`.checkpoints` (files),
:mod:`.load` (the one resolver, :func:`~.load.resolve_model`, and the batch runner),
:mod:`.spec` (how a model is named for worker processes), :mod:`.engine` and
:mod:`.engine_amx` (the inference engines, chosen by :mod:`.devices` from the CPU's
flags), :mod:`.memory` (batch sizes that fit), :mod:`.provenance` (what an output
says about the model that made it) and :mod:`.accel` (optional int8 and ONNX paths).
"""
