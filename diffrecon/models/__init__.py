"""Forward models, one modality per module, registered by name in ``models``."""

from diffrecon.models import ptycho  # noqa: F401  (registers "ptycho")
from diffrecon.models.base import ForwardModel, ParamSpec, models

__all__ = ["ForwardModel", "ParamSpec", "models"]
