"""Training: one step in timm's ``model.train()`` mode with the optimizers timm fine-tunes with
(``step``), freezing submodules as ``timm.utils.freeze`` (``freeze``), and fine-tuning on a folder
of images with exact resume (``finetune``)."""
from .freeze import frozen_mask, frozen_norms, trunk
from .step import (
                   OPTIMIZERS,
                   TrainState,
                   cross_entropy,
                   make_loss_fn,
                   make_optimizer,
                   make_train_step,
                   warmup_cosine_schedule,
                   weight_decay_mask,
)

__all__ = ["OPTIMIZERS", "TrainState", "cross_entropy", "frozen_mask", "frozen_norms", "make_loss_fn",
           "make_optimizer", "make_train_step", "trunk", "warmup_cosine_schedule", "weight_decay_mask"]
