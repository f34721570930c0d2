"""The names a user picks a device and a precision by, shared by the command line, QGIS and the API.

A module of its own so that option lists (``--help``, the QGIS dialogs) load without torch.
"""

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")
#: Order matters: QGIS Processing stores the index of the choice in saved models and
#: scripts, so new precisions (and devices) go at the end.
PRECISIONS = ("fp32", "int8", "bf16")
