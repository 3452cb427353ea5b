"""Model families; importing this package registers every architecture."""
from . import res2net, resnest, resnetv2, sknet  # noqa: F401
