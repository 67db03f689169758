"""Forward models, one modality per module, registered by name in ``models``."""

# importing the modules registers the modalities
from diffrecon.models import cdi, multislice, ptycho, ptycho_tomo  # noqa: F401
from diffrecon.models.base import ForwardModel, ParamSpec, models

__all__ = ["ForwardModel", "ParamSpec", "models"]
