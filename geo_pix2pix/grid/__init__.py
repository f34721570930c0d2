"""The tile core: where tiles go (:mod:`.tiling`), how their outputs blend (:mod:`.blend`),
how they are cut from a reader (:mod:`.cut`), and the loop that runs them (:mod:`.core`).

Local render, its Dask tasks, XYZ metatiles and evaluation all run :mod:`.core`. This
package's ``__init__`` imports nothing, so the pure maths loads without torch.
"""
