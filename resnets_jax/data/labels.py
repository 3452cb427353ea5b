"""ImageNet class names (1k, timm's 12k subset and Google's 21k) and the bundled sample photos."""
import functools
from importlib import resources
from typing import List


@functools.lru_cache(maxsize=None)
def _read_asset(name: str) -> List[str]:
    return resources.files("resnets_jax").joinpath("assets", name).read_text().splitlines()


@functools.lru_cache(maxsize=None)
def synset_lemmas() -> dict:
    """WordNet synset id (``'n02123045'``) -> its words (``'tabby, tabby cat'``)."""
    return dict(line.split("\t", 1) for line in _read_asset("imagenet_synset_to_lemma.txt"))


@functools.lru_cache(maxsize=None)
def imagenet_class_names(num_classes: int = 1000) -> List[str]:
    """Class names for ImageNet-1k (1000), timm's ImageNet-12k subset of ImageNet-21k (11821, the
    ``*_in12k`` tags; ``timm/data/_info/imagenet12k_synsets.txt``) or Google's ImageNet-21k (21843,
    BiT's in21k tags), as timm's ``ImageNetInfo`` names them. ``ValueError`` for another count."""
    synset_files = {1000: "imagenet_synsets.txt", 11821: "imagenet12k_synsets.txt",
                    21843: "imagenet21k_goog_synsets.txt"}
    if num_classes not in synset_files:
        raise ValueError(f"No class names for {num_classes} classes (known: {sorted(synset_files)})")
    lemmas = synset_lemmas()
    return [lemmas[s] for s in _read_asset(synset_files[num_classes])]


def sample_image_path(name: str = "chelsea.png") -> str:
    """A bundled photo (Chelsea the cat, CC0, by Stefan van der Walt; from scikit-image)."""
    return str(resources.files("resnets_jax").joinpath("assets", name))
