"""Model families; importing this package registers every architecture."""
from . import resnetv2  # noqa: F401
