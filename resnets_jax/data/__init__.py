"""Images in, arrays out: timm's data config and eval transform (``transforms``), timm's train
transform (``augment``), images in class folders (``image_folder``), and
ImageNet class names (``labels``). PIL and numpy only: no torch."""
from .augment import TrainTransform
from .image_folder import IMAGE_EXTENSIONS, ImageFolder, train_transform
from .labels import imagenet_class_names, sample_image_path, synset_lemmas
from .transforms import (
                         DEFAULT_CROP_PCT,
                         DEFAULT_INTERPOLATION,
                         HighBitDepthWarning,
                         create_transform,
                         resolve_data_config,
                         resolve_model_data_config,
                         to_model_mode,
)

__all__ = ["resolve_data_config", "resolve_model_data_config", "create_transform", "TrainTransform", "to_model_mode", "HighBitDepthWarning", "DEFAULT_CROP_PCT",
           "DEFAULT_INTERPOLATION", "imagenet_class_names", "synset_lemmas", "sample_image_path",
           "IMAGE_EXTENSIONS", "ImageFolder", "train_transform"]
