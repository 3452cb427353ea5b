"""Model families; importing this package registers every architecture."""
from . import res2net, resnest, resnet_pruned, resnet_variants, resnetv2, sknet  # noqa: F401
