"""What runs the library for a person: the ``resnets-jax`` command line (``cli``) and the jobs
behind it (convert, predict, embed, info, demo, verify against timm). They hold no model or
conversion logic of their own."""
