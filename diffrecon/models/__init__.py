"""Forward models, one modality per module, registered by name in ``models``."""

from diffrecon.models import cdi, ptycho  # noqa: F401  (register "cdi", "ptycho")
from diffrecon.models.base import ForwardModel, ParamSpec, models

__all__ = ["ForwardModel", "ParamSpec", "models"]
