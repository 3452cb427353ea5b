"""Model families; importing this package registers every architecture."""
from . import res2net, resnest, resnet_pruned, resnetv2, sknet  # noqa: F401
