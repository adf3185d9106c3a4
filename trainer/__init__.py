"""``cxr-train``: retrain any zoo model on local folders, with the metrics and report a reviewer needs.

Modules: :mod:`trainer.data` (folders, CSVs, splits), :mod:`trainer.recipes` (the papers' presets),
:mod:`trainer.augment`, :mod:`trainer.loop` (training, resume, DDP, calibration), :mod:`trainer.metrics`,
:mod:`trainer.plots`, :mod:`trainer.report`, :mod:`trainer.progress` (the JSON-lines stream the viewer
reads), :mod:`trainer.cli`. Importing the package is cheap: torch is imported by the modules that need it.
"""
