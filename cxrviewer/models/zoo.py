"""Imports every architecture module so each registers itself with :mod:`cxrviewer.models.registry`.

The registry imports this module lazily (first ``list_models``/``create_model`` call), so importing
``cxrviewer.models`` stays cheap and torch-model construction code is loaded only when needed."""

from cxrviewer.models import mobilenet_lung  # noqa: F401  (seed 003)
from cxrviewer.models import baselines  # noqa: F401
from cxrviewer.models import cs_convnext  # noqa: F401  (seed 000)
from cxrviewer.models import da_covidnet  # noqa: F401  (seed 001)
from cxrviewer.models import dpn_se  # noqa: F401  (seed 002)
from cxrviewer.models import fusion_tl  # noqa: F401  (seed 004)
