"""Imported once by the fork server that the profile's cells are forked from (`memory.measure`): the heavy
imports every cell needs, done before any cell runs, so a cell starts in about a second. Nothing here runs a
kernel or touches an accelerator (forking after either is unsafe)."""

import accelerate  # noqa: F401
import transformers
from transformers import AutoConfig, AutoModelForSequenceClassification  # noqa: F401

import sftune.engine.optim  # noqa: F401
import sftune.optim  # noqa: F401
import sftune.profile.memory  # noqa: F401
from sftune.registry import methods

methods()
for _family in ("bert", "roberta"):  # the usual architectures' modeling code (others load in the cell)
    try:
        transformers.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[AutoConfig.for_model(_family).__class__]
    except Exception:  # noqa: BLE001 - only a head start
        pass
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
