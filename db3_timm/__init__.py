"""db3-timm: decision-based black-box knowledge distillation for the timm ecosystem.

Importing the package registers the paper's architectures as timm models
(``timm.create_model('lenet5_half')``) and the built-in DB3 components.
"""
from . import generators, labelers, models
from ._registry import (
    create_generator,
    create_labeler,
    is_generator,
    is_labeler,
    list_generators,
    list_labelers,
    register_generator,
    register_labeler,
)
from .labelers import References, SoftLabels, distances_to_logits
from .oracle import HubUnavailableError, LabelOracle, QueryBudgetExceeded, load_checkpoint_state_dict
from .version import __version__

__all__ = [
    "__version__",
    "LabelOracle",
    "QueryBudgetExceeded",
    "HubUnavailableError",
    "load_checkpoint_state_dict",
    "register_labeler",
    "create_labeler",
    "list_labelers",
    "is_labeler",
    "register_generator",
    "create_generator",
    "list_generators",
    "is_generator",
    "SoftLabels",
    "References",
    "distances_to_logits",
    "load_image_dataset",
]


def __getattr__(name: str):
    # The data module pulls in `datasets` (pyarrow, pandas); import it only when asked for,
    # so `--device-modules db3_timm` in timm's train script stays cheap.
    if name in ("load_image_dataset", "ImageData", "data"):
        from . import data

        return data if name == "data" else getattr(data, name)
    raise AttributeError(f"module 'db3_timm' has no attribute {name!r}")
