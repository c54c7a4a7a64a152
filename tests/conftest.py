"""Test-session setup: 8 CPU devices, so every test also exercises multi-device code."""

import os

# Must happen before JAX initialises its backend (i.e. before any test imports jax).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def tiny_config():
    """The seconds-long config (configs/tiny.py) with evaluation on the unseen classes."""
    from himl.configs import tiny

    return tiny.get_config()
