"""Freezing part of a model as ``timm.utils.freeze`` does: the frozen submodules' parameters get
no gradient and no update (nor weight decay), and their BatchNorm layers use and keep their
running statistics in training mode (timm turns them into ``FrozenBatchNorm2d``). Dropout and
drop path keep timm's ``model.train()`` behaviour everywhere, as in timm.

    frozen = trunk(variables)                      # every top-level submodule but the classifier
    step = jax.jit(make_train_step(model, tx, frozen=frozen))
    with frozen_norms(frozen):                     # by hand: a training-mode forward, trunk frozen
        logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"], rngs=...)

Submodules are named by their Flax paths, the keys of ``variables["params"]``: a top-level name
(``"stem_conv"``, ``"stages_0"``, ``"layer1"``, ``"norm"``) or a path below it
(``"stages_3/blocks_1"``); each freezes everything under it.
"""
import contextlib
from typing import Any, Iterable, Iterator, Sequence, Tuple

import flax.linen as nn
import jax

from ..layers import BatchNormAct2d

# the classifier's top-level name in each family: 'fc' in the ResNet v1 trunk (ResNeSt, Res2Net),
# 'head' (ClassifierHead, holding 'fc') in ResNetV2; timm's pretrained cfg 'classifier' names them
CLASSIFIER_NAMES = ("fc", "head")


def _paths(submodules: Iterable[str]) -> Tuple[Tuple[str, ...], ...]:
    if isinstance(submodules, str):
        raise TypeError(f"submodules must be a list of names, got the string {submodules!r}")
    return tuple(tuple(s.split("/")) for s in submodules)


def _under(path: Sequence[str], frozen: Tuple[Tuple[str, ...], ...]) -> bool:
    return any(tuple(path[:len(f)]) == f for f in frozen)


def trunk(variables: Any) -> Tuple[str, ...]:
    """The top-level submodules of ``variables`` (``{'params': ...}`` or the params) except the
    classifier (``CLASSIFIER_NAMES``): what ``timm.utils.freeze`` freezes for a linear probe /
    head-only fine-tuning. Raises ``ValueError`` when there is no classifier to leave trainable."""
    params = variables.get("params", variables)
    names = tuple(k for k in params if k not in CLASSIFIER_NAMES)
    if len(names) == len(params):
        raise ValueError(f"no classifier ({' or '.join(CLASSIFIER_NAMES)}) among the top-level submodules "
                         f"{sorted(params)}: a model with num_classes > 0 has one")
    return names


def frozen_mask(tree: Any, submodules: Iterable[str], strict: bool = True) -> Any:
    """A pytree like ``tree`` (params, or any tree keyed like them) of bools: ``True`` for the leaves
    under one of ``submodules``. ``strict``: raises ``ValueError`` naming a submodule that ``tree``
    lacks (pass ``False`` for a tree that holds some submodules only, as ``batch_stats``)."""
    frozen = _paths(submodules)
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    keys = [tuple(str(getattr(k, "key", k)) for k in path) for path, _ in leaves]
    unknown = ["/".join(f) for f in frozen if not any(k[:len(f)] == f for k in keys)]
    if unknown and strict:
        raise ValueError(f"no submodule {', '.join(unknown)} in the model: expected names such as "
                         f"{', '.join(sorted({k[0] for k in keys})[:8])} (Flax paths, '/' between levels)")
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _under([str(getattr(k, "key", k)) for k in path], frozen), tree)


@contextlib.contextmanager
def frozen_norms(submodules: Iterable[str]) -> Iterator[None]:
    """Within this context, every BatchNorm under ``submodules`` runs as in eval mode whatever
    ``train`` says: normalizes with its running statistics and leaves them unchanged (timm's
    ``FrozenBatchNorm2d``). Other layers keep the ``train`` they are given."""
    frozen = _paths(submodules)
    if not frozen:  # nothing frozen: no interceptor at all
        yield
        return

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and isinstance(module, BatchNormAct2d) and _under(module.path, frozen):
            if "train" in kwargs:
                kwargs = {**kwargs, "train": False}
            elif len(args) > 1:
                args = (args[0], False, *args[2:])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(intercept):
        yield
