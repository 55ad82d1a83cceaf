"""The Generalized Probabilistic U-Net in JAX, Flax (Linen) and Distrax."""

__version__ = "0.1.0"
