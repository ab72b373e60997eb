"""parallel: the rules table from config (`parse_rules`), mesh config, generic shardings, and that
the module knows no model family (models import parallel, never the reverse)."""

import ast
from pathlib import Path

import jax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from mdpo_jax import parallel
from mdpo_jax.models import llada
from run_helpers import all_eqns

PARALLEL_SOURCE = Path(__file__).resolve().parents[1] / "mdpo_jax" / "parallel.py"


def _cfg():
  # Every sharded dimension divisible by 2 and by 8, so no mesh axis is dropped for size.
  return llada.tiny(vocab_size=64, d_model=32, n_heads=8, n_kv_heads=8, mlp_hidden_size=64)


# ----------------------------------------------------------------------------------------------
# parse_rules
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "  "])
def test_parse_rules_empty_is_the_base(text):
  assert parallel.parse_rules(text) == parallel.DEFAULT_RULES
  custom = (("embed", None), ("batch", "data"))
  assert parallel.parse_rules(text, base=custom) == custom


def test_parse_rules_overrides_exactly_the_named_entries():
  rules = parallel.parse_rules("embed=,mlp=fsdp")
  assert [name for name, _ in rules] == [name for name, _ in parallel.DEFAULT_RULES]
  changed = {name: (old, new) for (name, old), (_, new) in zip(parallel.DEFAULT_RULES, rules)
             if old != new}
  assert changed == {"embed": ("fsdp", None), "mlp": ("tensor", "fsdp")}
  # logical_to_spec follows the table: an (embed, mlp) weight is no longer split on embed.
  assert parallel.logical_to_spec(("embed", "mlp")) == P("fsdp", "tensor")
  assert parallel.logical_to_spec(("embed", "mlp"), rules=rules) == P(None, "fsdp")


def test_parse_rules_multi_axis_whitespace_and_new_names():
  rules = parallel.parse_rules(" batch = data+fsdp+tensor , experts=tensor , head_dim=fsdp")
  table = dict(rules)
  assert table["batch"] == ("data", "fsdp", "tensor")
  assert table["head_dim"] == "fsdp"
  assert rules[-1] == ("experts", "tensor")  # new logical names are appended
  assert len(rules) == len(parallel.DEFAULT_RULES) + 1
  assert parallel.logical_to_spec(("batch", None), rules=rules) == P(("data", "fsdp", "tensor"),
                                                                     None)
  assert dict(parallel.parse_rules("batch=data+fsdp"))["batch"] == ("data", "fsdp")


@pytest.mark.parametrize("text, problem", [
    ("embed", "no '='"),
    ("embed=fsdp,mlp", "no '='"),
    ("embed=model", "unknown mesh axis 'model'"),
    ("batch=data+pipeline", "unknown mesh axis 'pipeline'"),
    ("embed=fsdp,embed=", "given twice"),
    ("batch=data+data", "repeated"),
    ("embed=fsdp,", "empty entry"),
    ("=fsdp", "identifier"),
])
def test_parse_rules_errors_name_the_field(text, problem):
  with pytest.raises(ValueError) as e:
    parallel.parse_rules(text)
  message = str(e.value)
  assert message.startswith(f"mesh.rules={text!r}: ") and "\n" not in message
  assert problem in message
  assert "allowed: comma-separated logical=axis[+axis] with axes from ('data', 'fsdp', " \
         "'tensor')" in message


def test_parse_rules_rejects_non_strings():
  with pytest.raises(ValueError, match=r"mesh\.rules=None: must be a string"):
    parallel.parse_rules(None)


# ----------------------------------------------------------------------------------------------
# mesh_from_config
# ----------------------------------------------------------------------------------------------


def test_mesh_from_config_ignores_rules_and_rejects_other_keys():
  mesh = parallel.mesh_from_config({"data": 2, "fsdp": -1, "tensor": 2, "rules": "embed="})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match=r"mesh: unknown keys \['pipeline'\]"):
    parallel.mesh_from_config({"data": -1, "pipeline": 2, "rules": ""})


# ----------------------------------------------------------------------------------------------
# Parameter shardings from the rules
# ----------------------------------------------------------------------------------------------


def _independent_shardings(config, mesh, rules):
  """What every parameter's sharding must be, computed leaf by leaf without the helpers."""
  axes = llada.param_logical_axes(config)
  shapes = llada.abstract_params(config)
  paths = jax.tree_util.tree_leaves_with_path(shapes)
  flat_axes = jax.tree.leaves(axes, is_leaf=lambda x: isinstance(x, tuple))
  return {jax.tree_util.keystr(path): NamedSharding(
              mesh, parallel.logical_to_spec(ax, leaf.shape, mesh=mesh, rules=rules))
          for (path, leaf), ax in zip(paths, flat_axes, strict=True)}


def _by_path(tree):
  return {jax.tree_util.keystr(p): s for p, s in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("sizes", [dict(data=1, fsdp=8, tensor=1),
                                   dict(data=2, fsdp=2, tensor=2)])
def test_llada_param_shardings_follow_the_rules(sizes):
  config = _cfg()
  mesh = parallel.make_mesh(**sizes)
  default = llada.param_shardings(config, mesh)
  parsed = llada.param_shardings(config, mesh, parallel.parse_rules(""))
  assert _by_path(default) == _by_path(parsed)
  assert _by_path(default) == _independent_shardings(config, mesh, parallel.DEFAULT_RULES)
  assert default["blocks"]["q_proj"].spec[1] == "fsdp"  # embed is split by default

  rules = parallel.parse_rules("embed=,mlp=fsdp")
  custom = llada.param_shardings(config, mesh, rules)
  assert _by_path(custom) == _independent_shardings(config, mesh, rules)
  assert _by_path(custom) != _by_path(default)
  assert custom["blocks"]["q_proj"].spec[1] is None          # embed now replicated
  assert custom["blocks"]["ff_proj"].spec == P(None, None, "fsdp")  # [N, D, F]: mlp on fsdp
  assert custom["ln_f"].spec == default["ln_f"].spec          # untouched entries stay


def test_init_sharded_params_uses_the_rules():
  """The init is jitted with `out_shardings` from the given rules (traced only: a real sharded
  init is run by test_llada's sharded train-step test; compiling it here costs seconds)."""
  config = _cfg()
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  rules = parallel.parse_rules("embed=,mlp=fsdp")
  jaxpr = jax.make_jaxpr(lambda key: llada.init_sharded_params(config, key, mesh, rules))(
      jax.random.key(0))
  (init,) = jaxpr.jaxpr.eqns
  got = init.params["out_shardings"]
  want = jax.tree.leaves(llada.param_shardings(config, mesh, rules))
  assert len(got) == len(want)
  assert all(g == w for g, w in zip(got, want))
  assert want != jax.tree.leaves(llada.param_shardings(config, mesh))


def test_shardings_from_axes_is_generic():
  mesh = parallel.make_mesh(data=2, fsdp=2, tensor=2)
  axes = {"w": ("embed", "vocab"), "b": ("norm",), "odd": ("embed",)}
  shapes = {"w": jax.ShapeDtypeStruct((8, 6), "float32"),
            "b": jax.numpy.zeros((8,)),
            "odd": jax.ShapeDtypeStruct((3,), "float32")}
  out = parallel.shardings_from_axes(axes, shapes, mesh)
  assert out["w"] == NamedSharding(mesh, P("fsdp", "tensor"))
  assert out["b"] == NamedSharding(mesh, P(None))
  assert out["odd"] == NamedSharding(mesh, P(None))  # 3 is not divisible by fsdp=2


# ----------------------------------------------------------------------------------------------
# Import direction: models -> parallel only.
# ----------------------------------------------------------------------------------------------


def test_parallel_imports_nothing_from_mdpo_jax():
  tree = ast.parse(PARALLEL_SOURCE.read_text(encoding="utf-8"))
  imported = []
  for node in ast.walk(tree):  # walks function bodies too: local imports count
    if isinstance(node, ast.Import):
      imported += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      imported.append("." * node.level + (node.module or ""))
  assert imported, "the walk found no imports at all"
  offending = [m for m in imported if m.startswith(".") or m.split(".")[0] == "mdpo_jax"]
  assert not offending, f"parallel.py imports {offending}"
  assert not hasattr(parallel, "param_shardings") and not hasattr(parallel, "init_sharded_params")


def _constraint_specs(jaxpr):
  """The PartitionSpecs of every sharding constraint in a jaxpr, sub-jaxprs included."""
  return [tuple(e.params["sharding"].spec) for e in all_eqns(jaxpr)
          if e.primitive.name == "sharding_constraint"]


def test_rows_are_split_over_the_data_axes_at_block_boundaries():
  """Under the run's mesh the forward pins its activations' rows to the data axes at every
  block boundary (the 8B sampler's lever: 18.4 → 3.1 GiB per device); the logits do not change;
  without a mesh in context, or with rows the data axes do not divide, nothing is pinned."""
  import numpy as np
  cfg = llada.tiny(vocab_size=48).replace(n_layers=2)
  params = llada.init_params(cfg, jax.random.key(0))
  mesh = parallel.make_mesh(data=2, fsdp=4)
  fwd = lambda p, x: llada.forward(cfg, p, x)  # noqa: E731
  tokens = jax.random.randint(jax.random.key(1), (8, 6), 0, 40)
  plain = fwd(params, tokens)
  assert not _constraint_specs(jax.make_jaxpr(fwd)(params, tokens).jaxpr)
  with parallel.mesh_context(mesh):
    specs = _constraint_specs(jax.make_jaxpr(fwd)(params, tokens).jaxpr)
    pinned = jax.jit(fwd)(params, tokens)
    odd = _constraint_specs(jax.make_jaxpr(fwd)(params, tokens[:6]).jaxpr)
  assert specs and all(s == (("data", "fsdp"),) for s in specs)
  assert not odd
  np.testing.assert_allclose(np.asarray(pinned), np.asarray(plain), rtol=1e-5, atol=1e-5)
  assert jax.sharding.get_abstract_mesh().empty   # the context is left on exit
