"""himl: hierarchical multi-label and hypergraph deep metric learning in JAX/Flax.

    embedder = himl.load_embedder("runs/default")   # a trained embedding on new images
    himl.losses.supcon(embeddings, labels)          # any submodule, after `import himl`

Importing himl starts nothing (no JAX backend); submodules load on first use, whatever
was used before.
"""

import importlib

__version__ = "0.1.0"

# Public submodules, reachable as `himl.<name>` from a bare `import himl`.
SUBMODULES = ("data", "distances", "eval", "hierarchy", "losses", "mining", "models", "train")
# Names of `himl.embedder` exported at the top level.
EMBEDDER_NAMES = ("load_embedder", "Embedder", "Gallery")


def __getattr__(name: str):
    if name in SUBMODULES:  # lazily: `import himl` stays cheap
        return importlib.import_module(f"himl.{name}")
    if name in EMBEDDER_NAMES:
        return getattr(importlib.import_module("himl.embedder"), name)
    raise AttributeError(f"module 'himl' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *SUBMODULES, *EMBEDDER_NAMES])
