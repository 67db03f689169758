"""Forward models, one modality per module, registered by name in ``models``."""

from diffrecon.models import bragg, cdi, multislice, ptycho  # noqa: F401  (register the modalities)
from diffrecon.models.base import ForwardModel, ParamSpec, models

__all__ = ["ForwardModel", "ParamSpec", "models"]
