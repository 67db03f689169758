"""Forward models, one modality per module, registered by name in ``models``."""

from diffrecon.models import (  # noqa: F401  (register the modalities)
    bragg,
    cdi,
    fourier_ptycho,
    fourier_ptycho_multislice,
    multislice,
    ptycho,
    ptycho_tomo,
)
from diffrecon.models.base import ForwardModel, ParamSpec, models

__all__ = ["ForwardModel", "ParamSpec", "models"]
