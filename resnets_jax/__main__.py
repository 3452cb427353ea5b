"""``python -m resnets_jax``: the ``resnets-jax`` command line."""
import sys

from .tools.cli import main

sys.exit(main())
