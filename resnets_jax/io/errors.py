"""The one error of the checkpoint rooms (``io``, ``convert``, ``pretrained``)."""


class CheckpointError(ValueError):
    """A file that is not a checkpoint, or a checkpoint that does not fit the model."""
