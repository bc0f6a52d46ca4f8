"""db3-timm: distil a timm student from a teacher that answers only class labels.

Importing the package registers the paper's architectures as timm models
(``timm.create_model('lenet5_half')``) and the built-in soft-labelers, generators and query sources.
"""
from . import generators, labelers, models, sources  # noqa: F401  (registers the components)
from ._distributed import DistributedSetupError
from ._io import ConfigMismatchError, RunLockedError
from ._registry import (
    create_generator,
    create_labeler,
    create_source,
    is_generator,
    is_labeler,
    is_source,
    list_generators,
    list_labelers,
    list_sources,
    register_generator,
    register_labeler,
    register_source,
)
from .data import ImageData, load_image_dataset
from .hub import StudentCard, push_student, save_student
from .labelers import References, SoftLabels, distances_to_logits
from .models import create_image_model
from .oracle import (
    HubUnavailableError,
    LabelOracle,
    QueryBudgetExceeded,
    create_timm_model,
    load_checkpoint_state_dict,
)
from .pipeline import DistillConfig, DistillResult, distill_student, plan_queries
from .store import QueryStore
from .training import DB3DistillationTask, TrainConfig, evaluate, fit, kd_loss
from .transfer.build import (
    LabelingConfig,
    TransferSet,
    ZeroShotConfig,
    load_transfer_set,
)
from .transfer.export import export_parquet
from .transfer.label import label_dataset, load_labeled_dataset
from .transfer.plan import BudgetTooSmallError, Plan
from .version import __version__

__all__ = [
    "__version__",
    # the front door
    "distill_student", "plan_queries", "DistillConfig", "DistillResult", "Plan", "BudgetTooSmallError",
    "QueryStore", "register_source", "create_source", "list_sources", "is_source",
    "LabelingConfig", "ZeroShotConfig", "TrainConfig",
    # the teacher
    "LabelOracle", "QueryBudgetExceeded", "HubUnavailableError", "DistributedSetupError", "ConfigMismatchError",
    "RunLockedError", "create_timm_model", "load_checkpoint_state_dict",
    # components
    "register_labeler", "create_labeler", "list_labelers", "is_labeler",
    "register_generator", "create_generator", "list_generators", "is_generator",
    "SoftLabels", "References", "distances_to_logits",
    # data and transfer sets
    "ImageData", "load_image_dataset", "label_dataset", "load_labeled_dataset", "TransferSet", "load_transfer_set",
    "export_parquet",
    # students
    "create_image_model", "DB3DistillationTask", "kd_loss", "fit", "evaluate", "StudentCard", "save_student", "push_student",
]
