"""Model families; importing this package registers every architecture."""
from . import res2net, resnest, resnet_variants, resnetv2  # noqa: F401
