"""CXR Viewer: a local, second-opinion chest X-ray viewer.

The package root stays import-light on purpose: the window must appear before torch is imported,
so nothing here pulls in torch, Qt or pydicom.
"""

__version__ = "0.1.0"

DISCLAIMER = (
    "Decision support only, not a diagnosis. A second opinion from a machine-learning model; "
    "the reading clinician decides."
)
