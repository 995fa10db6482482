"""Checkpoint round trip: save from one process, restore in a fresh one, bit-identical."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxpt.train import checkpoint as ckpt_lib
from jaxpt import config as config_lib
from jaxpt import sharding
from jaxpt.tasks import pretraining
from jaxpt.train.step import TrainState

# Builds the same abstract state as the test below, restores step 7 and writes it as .npz.
RESTORE_SCRIPT = textwrap.dedent("""
    import sys
    import jax, numpy as np, jax.numpy as jnp
    from jaxpt import config as config_lib, sharding
    from jaxpt.tasks import pretraining
    from jaxpt.train import checkpoint as ckpt_lib
    directory, out = sys.argv[1], sys.argv[2]
    cfg = config_lib.with_model(config_lib.Config(), vocab_size=64, hidden_size=16,
                                num_layers=1, num_heads=2, intermediate_size=32,
                                max_position_embeddings=16)
    program = pretraining.build_program(cfg, sharding.make_mesh(cfg.mesh))
    abstract = program.abstract_state
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
  program = pretraining.build_program(cfg, sharding.make_mesh(cfg.mesh))

  def one_update(state):
    # A non-trivial optimizer state: one update's moments; and a step that is not 0.
    grads = jax.tree.map(jnp.ones_like, state.params)
    updates, opt_state = program.tx.update(grads, state.opt_state, state.params)
    return TrainState(step=jnp.int32(7), params=optax.apply_updates(state.params, updates),
                      opt_state=opt_state)

  with jax.set_mesh(program.mesh):
    state = jax.jit(one_update, out_shardings=program.state_shardings)(program.init_state())
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
