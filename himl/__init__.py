"""himl: hierarchical multi-label and hypergraph deep metric learning in JAX/Flax."""

__version__ = "0.1.0"
