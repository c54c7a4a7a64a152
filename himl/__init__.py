"""himl: hierarchical multi-label and hypergraph deep metric learning in JAX/Flax.

    embedder = himl.load_embedder("runs/default")   # a trained embedding on new images

Importing himl starts nothing (no JAX backend); submodules load on first use.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "load_embedder":  # lazily: `import himl` stays cheap
        from himl.embedder import load_embedder

        return load_embedder
    raise AttributeError(f"module 'himl' has no attribute {name!r}")
