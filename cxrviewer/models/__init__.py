"""The model zoo: the five attention CNNs of the founding papers and their baselines, one registry."""

from cxrviewer.models.base import CXRModel
from cxrviewer.models.registry import ModelInfo, create_model, list_models, model_info, register_model

__all__ = ["CXRModel", "ModelInfo", "create_model", "list_models", "model_info", "register_model"]
