"""Optimizers: exact masked AdamW for ``--mask-mode update``."""

from .masked_adamw import MaskedAdamW
from .masked_step import COUNT_MAX, masked_adamw_step_

__all__ = ["COUNT_MAX", "MaskedAdamW", "masked_adamw_step_"]
