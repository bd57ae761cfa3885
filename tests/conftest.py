"""Test setup: four simulated CPU devices (so the sharded paths run), huge pages for the scripts
the tests start, strict rank promotion, and a private cache folder (reference statistics, the
digits classifier) instead of the user's."""

import atexit
import os
import shutil
import tempfile

from diffusion_jax.cli import host_memory

# Subprocesses started by the CLI tests inherit this, so they see the same four devices.
os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["DIFFUSION_JAX_CACHE"] = tempfile.mkdtemp(prefix="diffusion_jax_test_cache_")
atexit.register(shutil.rmtree, os.environ["DIFFUSION_JAX_CACHE"], ignore_errors=True)
# NumPy's and SciPy's BLAS each start a thread per core; on small CPUs they starve one another.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# The scripts the CLI tests start would each restart to get huge pages; they start with them.
if (tunables := host_memory.tunables_with_huge_pages()) is not None:
  os.environ["GLIBC_TUNABLES"] = tunables

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def tiny_digits_run(tmp_path_factory) -> str:
  """The workdir of a 4-step digits run of `tests.test_cli.DIGITS_FLAGS`, trained once per
  session and shared: tests may add outputs under new names but must not change what is there."""
  from tests.scripts import run_script
  from tests.test_cli import DIGITS_FLAGS

  workdir = str(tmp_path_factory.mktemp("shared") / "digits")
  run_script("train.py", *DIGITS_FLAGS, f"--workdir={workdir}", check=True)
  return workdir


@pytest.fixture(scope="session")
def autoencoder_dir(tmp_path_factory) -> str:
  """An autoencoder run of `tiny_configs.autoencoder_small` with random weights, written once per
  session; tests must not change it."""
  import jax.numpy as jnp
  import numpy as np

  from diffusion_jax import models
  from diffusion_jax.training import imported_run
  from tests import tiny_configs

  config = tiny_configs.autoencoder_small()
  vae = models.create_autoencoder(config)
  # Random params of the right shapes, without compiling the network's init.
  shapes = jax.eval_shape(vae.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))["params"]
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda a: 0.3 * rng.standard_normal(a.shape, np.float32), shapes)
  workdir = str(tmp_path_factory.mktemp("autoencoder"))
  imported_run.write_run(workdir, config, params, writer="test")
  return workdir
