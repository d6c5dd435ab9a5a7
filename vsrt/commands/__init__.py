"""Sub-commands of the ``vsrt`` CLI: one module each, each with ``register(subparsers)``."""
