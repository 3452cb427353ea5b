"""The one error of the checkpoint rooms (``io``, ``convert``, ``pretrained``), and its kind for
weights that cannot be had, which says what to pass instead in Python and on the command line."""
from typing import Mapping, Optional


class CheckpointError(ValueError):
    """A file that is not a checkpoint, or a checkpoint that does not fit the model."""


class _Placeholder(str):
    """A value the user must fill in (``<its number of classes>``): shown as is, not quoted."""

    def __repr__(self) -> str:
        return str(self)


def placeholder(text: str) -> str:
    return _Placeholder(text)


class WeightsUnavailableError(CheckpointError):
    """Weights (or an hf-hub ``config.json``) that cannot be had, with the ``create_model``
    arguments that would load a local file instead (``kwargs``: ``checkpoint_path``, maybe
    ``num_classes``). ``str(e)`` gives them as a Python call; ``cli_message(flags)`` as the
    flags of a command (``resnets-jax predict ... --weights FILE``)."""

    def __init__(self, reason: str, advice: str, model_name: Optional[str], **kwargs):
        self.reason, self.advice, self.model_name, self.kwargs = reason, advice, model_name, kwargs
        args = [repr(model_name) if model_name else "'<architecture>'"] + [f"{k}={v!r}" for k, v in kwargs.items()]
        super().__init__(f"{reason} {advice} create_model({', '.join(args)}).")

    def cli_message(self, flags: Mapping[str, str]) -> str:
        """The message for a command whose flags for ``create_model``'s keywords are ``flags``
        (e.g. ``{'checkpoint_path': '--weights', 'num_classes': '--num-classes'}``); the Python
        form where the command has no flag for the file."""
        if "checkpoint_path" not in flags:
            return str(self)
        given = " ".join(f"{flags[k]} {v}" for k, v in self.kwargs.items() if k in flags)
        name = f" with the model name {self.model_name}" if self.model_name else \
            " with the repository's architecture as the model name"
        return f"{self.reason} {self.advice} {given}{name}."
