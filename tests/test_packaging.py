"""The package's shape: its layers import only from their own or earlier ones, every package is
installed, and every module and subpackage is reachable as an attribute of `diffusion_jax`."""

import ast
import importlib
import os
import tomllib

import diffusion_jax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "diffusion_jax")

# The README's picture, first to last: a module may import from its own layer or an earlier one.
LAYERS = [
  {
    "schedules",
    "diffusion",
    "continuous_time",
    "parametrization",
    "variational_bound",
    "losses",
    "ode_solvers",
    "oracles",
    "guidance",
    "latents",
  },
  {"sharding", "images", "figures", "configs"},
  {"models", "data", "pretrained"},
  {"samplers", "likelihood"},
  {"editing"},
  {"metrics"},
  {"training"},
  {"evaluation"},
  {"cli"},
]


def _layer(module: str) -> int:
  top = module.split(".")[1]
  return next(i for i, names in enumerate(LAYERS) if top in names)


def _imports(path: str) -> list[str]:
  tree = ast.parse(open(path).read())
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("diffusion_jax"):
      if node.module == "diffusion_jax":
        found += [f"diffusion_jax.{alias.name}" for alias in node.names]
      else:
        found.append(node.module)
    elif isinstance(node, ast.Import):
      found += [a.name for a in node.names if a.name.startswith("diffusion_jax.")]
  return found


def _modules():
  for folder, _, files in os.walk(PACKAGE):
    for name in files:
      if (
        name.endswith(".py")
        and name != "__init__.py"
        or (name == "__init__.py" and folder != PACKAGE)
      ):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, ROOT)[: -len(".py")].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def test_no_module_imports_from_a_later_layer():
  upward = []
  for module, path in _modules():
    for imported in _imports(path):
      if _layer(imported) > _layer(module):
        upward.append(f"{module} imports {imported}")
  assert not upward, upward


def test_every_package_is_installed():
  with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
    listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
  folders = {
    os.path.relpath(folder, ROOT).replace(os.sep, ".")
    for folder, _, files in os.walk(PACKAGE)
    if "__init__.py" in files
  }
  assert listed == folders | {"diffusion_jax.configs"}


def test_every_layer_is_an_attribute_of_the_package():
  for names in LAYERS:
    for name in names:
      assert getattr(diffusion_jax, name) is importlib.import_module(f"diffusion_jax.{name}")
