"""Test-session setup: 8 CPU devices in the test processes, so every in-process test also
exercises multi-device code; the commands the tests start run on one device unless a
test asks for the mesh (`mesh_env`)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402

# Before JAX initialises its backend (i.e. before any test runs). A config option, not
# XLA_FLAGS: subprocesses do not inherit it, and a command on 8 devices of 2 cores pays
# for 8-way sharding (configs/tiny.py trains in 37 s on 8 devices, 23 s on one).
MESH_DEVICES = 8
jax.config.update("jax_num_cpu_devices", MESH_DEVICES)

# The suite compiles thousands of small programs that then run a few times each: XLA's CPU
# backend at optimisation level 0 (XLA's default: 3) ran test_losses_hierarchical.py and
# test_losses_tuple.py in 148-163 s instead of 211 s. Every value compared across runs comes
# from processes of this session, which all inherit the flag. A level given in XLA_FLAGS is
# kept (e.g. 3, to run the suite as users' code compiles).
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    FLAGS = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0"
    os.environ["XLA_FLAGS"] = FLAGS.strip()

# One persistent XLA compilation cache for the session, shared by the xdist workers and
# the subprocesses the tests start (all inherit this environment), removed at the end:
# every run that builds ResNet-50 initialises it op by op, about 200 small programs to
# compile, and many tests compile the same train and eval steps. No size limit: with one,
# JAX scans the whole directory on every write (thousands of entries: slower than
# compiling). A read that meets an entry still being written is a warning and a compile.
SESSION_XLA_CACHE = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    SESSION_XLA_CACHE = tempfile.mkdtemp(prefix="himl-tests-xla-cache-")
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=SESSION_XLA_CACHE,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.02",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def tiny_config():
    """The seconds-long config (configs/tiny.py) with evaluation on the unseen classes."""
    from himl.configs import tiny

    return tiny.get_config()


def pytest_addoption(parser):
    parser.addoption(
        "--slow",
        action="store_true",
        help="also run the tests marked slow (end to end, subprocesses); .ci/run does",
    )


def pytest_unconfigure(config):
    """The process that made the session's compilation cache removes it."""
    if SESSION_XLA_CACHE is not None:
        shutil.rmtree(SESSION_XLA_CACHE, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    """The contributors' fast lane: tests marked slow are skipped unless --slow is given.

    With --slow they run first (a stable sort): with `-n 2` each process then takes its
    minute-long tests early and the short ones fill in, instead of one process ending
    the run alone on the last long test."""
    if config.getoption("--slow"):
        items.sort(key=lambda item: "slow" not in item.keywords)
        return
    skip = pytest.mark.skip(reason="slow: run with --slow (as .ci/run does)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def mesh_env() -> dict[str, str]:
    """The environment for a command that must run on the test processes' mesh (e.g. to
    compare its results with an in-process run bit for bit)."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count="
    return {**os.environ, "XLA_FLAGS": f"{flags}{MESH_DEVICES}".strip()}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """`(workdir, config)` of one tiny trained run shared by the tests that read a work
    directory (himl-eval, himl-embed, load_embedder): configs/tiny.py, 8 steps,
    checkpoints at steps 4 and 8, no evaluation while training. Treat it as read-only
    (copy it to change it)."""
    from himl.configs import tiny
    from himl.train.loop import train_and_evaluate

    config = tiny.get_config()
    config.train.steps = 8
    config.eval.splits = ()
    workdir = tmp_path_factory.mktemp("tiny_run")
    train_and_evaluate(config, workdir, progress=False)
    return workdir, config


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path):
    """A writable copy of `tiny_run` for tests that damage or resume a trained work
    directory: `(workdir, config)`, the config a copy too (8 steps done: set
    `config.train.steps` higher to resume)."""
    workdir, config = tiny_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return copy, config.copy_and_resolve_references()
