"""Optional accelerated paths, outside the core model path (:mod:`geo_pix2pix.model.load`).

- :mod:`.int8`: ``--precision int8``, quantised CPU inference on PyTorch's ``torch.ao``
  FX quantisation API (deprecated upstream in favour of torchao; kept while it measures
  faster than fp32, ``docs/performance.md``);
- :mod:`.onnx`: ``geo-pix2pix export-onnx`` and ONNX models run by onnxruntime (the
  ``[onnx]`` extra).

Nothing imports them unless one of these is asked for.
"""
