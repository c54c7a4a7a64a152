"""Install himl: `pip install -e .` (or `pip install .`).

The top-level `configs/` folder ships inside the package as `himl.configs`, so the
console scripts find their default config whether himl is installed editable or not.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
RUNTIME = [
    "jax>=0.10.2",
    "flax>=0.12.8",
    "optax>=0.2.8",
    "orbax-checkpoint>=0.12.8",
    "chex>=0.1.92",
    "ml-collections>=1.1.0",
    "absl-py>=2.5.1",
    "numpy>=2.0",
    "scipy>=1.13",
    "scikit-learn>=1.5",
    "matplotlib>=3.8",
    "pillow>=10.0",
    "tqdm>=4.66",
    "tensorboard>=2.16",
    "grain>=0.2.18",
    "tensorflow-datasets>=4.9.10",
    "array-record>=0.8.6",
    "etils>=1.15.0",
    "safetensors>=0.4",
]

setup(
    name="himl",
    version="0.1.0",
    description=("Hierarchical multi-label and hypergraph deep metric learning in JAX/Flax"),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["himl", "himl.*"]) + ["himl.configs"],
    package_dir={"himl.configs": "configs"},
    # Every data file the package reads (tests/test_packaging.py builds the wheel to check).
    package_data={"himl.data": ["*.json", "embedded/*.npz", "embedded/LICENSE*"]},
    install_requires=RUNTIME,
    extras_require={"dev": ["pytest", "hypothesis", "ruff"]},
    entry_points={
        "console_scripts": [
            "himl-train=himl.train.main:run",
            "himl-eval=himl.eval.main:run",
            "himl-embed=himl.embed_main:run",
        ]
    },
)
