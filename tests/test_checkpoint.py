"""Checkpoint round trip: save from one process, restore in a fresh one, bit-identical."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np

from jaxpt import checkpoint as ckpt_lib
from jaxpt import config as config_lib
from jaxpt import optim, sharding, trainer
from jaxpt.train_step import TrainState

# Builds the same abstract state as the test below, restores step 7 and writes it as .npz.
RESTORE_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np, jax.numpy as jnp
    from jaxpt import checkpoint as ckpt_lib, config as config_lib, optim, sharding, trainer
    from jaxpt.train_step import TrainState
    directory, out = sys.argv[1], sys.argv[2]
    cfg = config_lib.with_model(config_lib.Config(), vocab_size=64, hidden_size=16,
                                num_layers=1, num_heads=2, intermediate_size=32,
                                max_position_embeddings=16)
    mesh = sharding.make_mesh(cfg.mesh)
    model, _ = trainer.build_model(cfg.model, mesh)
    tx = optim.make_optimizer(cfg.optim, 10)
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=model.abstract_params,
                          opt_state=jax.eval_shape(tx.init, model.abstract_params))
    abstract = ckpt_lib.abstract_like(abstract, trainer.state_shardings(model, tx, mesh))
    ck = ckpt_lib.Checkpointer(directory, max_to_keep=2)
    state, data, config = ck.restore(ck.latest_step(), abstract)
    flat = {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(state)}
    np.savez(out, **flat)
    print(data["next_step"], config["model"]["hidden_size"])
""")


def test_save_then_restore_in_a_fresh_process(tmp_path):
  cfg = config_lib.with_model(config_lib.Config(), vocab_size=64, hidden_size=16, num_layers=1,
                              num_heads=2, intermediate_size=32, max_position_embeddings=16)
  mesh = sharding.make_mesh(cfg.mesh)
  model, init_params = trainer.build_model(cfg.model, mesh, seed=5)
  tx = optim.make_optimizer(cfg.optim, 10)
  state_sh = trainer.state_shardings(model, tx, mesh)

  def init_state():
    params = init_params()
    # A non-trivial optimizer state: one update's moments.
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = tx.update(grads, tx.init(params), params)
    return TrainState(step=jnp.int32(7), params=params, opt_state=opt_state)

  with jax.set_mesh(mesh):
    state = jax.jit(init_state, out_shardings=state_sh)()
  ck = ckpt_lib.Checkpointer(str(tmp_path / "ckpt"), max_to_keep=2)
  ck.save(7, state, data={"next_step": 7}, config=config_lib.to_dict(cfg))
  ck.close()

  out = tmp_path / "restored.npz"
  proc = subprocess.run([sys.executable, "-c", RESTORE_SCRIPT, str(tmp_path / "ckpt"), str(out)],
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.split()[-2:] == ["7", "16"]
  restored = np.load(out)
  leaves = jax.tree_util.tree_leaves_with_path(state)
  assert len(restored.files) == len(leaves)
  for path, leaf in leaves:
    np.testing.assert_array_equal(restored[jax.tree_util.keystr(path)], np.asarray(leaf))
  assert int(restored[".step"]) == 7
