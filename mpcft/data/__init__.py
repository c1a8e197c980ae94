"""Training data: labelled text files, splits and the public schedule (`files`), data owners'
sealed share files (`owners`), and the shared batches a run trains on (`sources`)."""
from .files import (BUILTIN_LABELS, BUILTIN_MAX_TRAIN, DataError, builtin_dataset, check_data, load_data,
                    read_labelled, schedule, split)
from .sources import OwnersData, PartiesData, by_owner

__all__ = [
    "BUILTIN_LABELS", "BUILTIN_MAX_TRAIN", "DataError", "OwnersData", "PartiesData", "builtin_dataset",
    "by_owner", "check_data", "load_data", "read_labelled", "schedule", "split",
]
