"""timm <-> Flax: structural key mapping both ways (``keys``), the variables a model expects
(``shapes``), a random init without compiling the network (``random_init``), one matcher for checkpoints of either layout (``matcher``) and the way back to
timm (``export``)."""
from .export import export_timm_checkpoint, export_timm_state_dict
from .keys import flax_to_timm_key, timm_to_flax_key
from .matcher import convert_timm_state_dict, load_variables
from .random_init import fresh_variables, init_variables
from .shapes import expected_variables

__all__ = ["convert_timm_state_dict", "load_variables", "export_timm_state_dict", "export_timm_checkpoint",
           "expected_variables", "init_variables", "fresh_variables", "timm_to_flax_key", "flax_to_timm_key"]
