"""sjepa-jax: independent JEPA agents on views of one world, and the maps between them."""

__version__ = "0.1.0"
