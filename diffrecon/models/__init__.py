"""Forward models, one modality per module, registered by name in ``models``."""

from diffrecon.models import (  # noqa: F401  (register the modalities)
    cdi,
    fourier_ptycho,
    fourier_ptycho_multislice,
    multislice,
    ptycho,
)
from diffrecon.models.base import ForwardModel, ParamSpec, models

__all__ = ["ForwardModel", "ParamSpec", "models"]
