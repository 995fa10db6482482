"""cuDNN's attention against the numpy reference, on a GPU: `benchmarks/gpu_check.sh` runs
this file (`pytest tests/gpu_attention.py`; its name keeps it out of the CPU suite, where
cuDNN does not exist). The CPU suite checks the same arguments through JAX's XLA
implementation (test_attention.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxpt
from test_attention import B, CASES_ALL, CUDNN_CASES, D, H, L, inputs, real_queries, reference


def test_this_runs_on_a_gpu():
  assert jax.default_backend() == "gpu", jax.devices()


@pytest.mark.parametrize("case", CUDNN_CASES)
def test_cudnn_equals_the_reference_on_a_gpu(case):
  """The GPU check runs this (bf16: cuDNN's fused kernel takes no float32); values against
  numpy on the same bf16 inputs, gradients against XLA's."""
  q, k, v = (x.astype(jnp.bfloat16) for x in inputs())
  kw = dict(CASES_ALL[case])
  if "segment_ids" in kw:
    kw["padding_only"] = True
  args = {key: jnp.asarray(val) if key == "segment_ids" else val for key, val in kw.items()}
  got = np.asarray(jaxpt.attention(q, k, v, implementation="cudnn", **args), np.float32)
  want = reference(*(np.asarray(x, np.float32) for x in (q, k, v)),
                   **{key: val for key, val in CASES_ALL[case].items()})
  real = real_queries(kw)
  np.testing.assert_allclose(got[real], want[real], rtol=3e-2, atol=3e-2)
  w = jnp.asarray(np.random.default_rng(5).standard_normal((B, L, H, D)), jnp.bfloat16)
  w = w * jnp.asarray(real, jnp.bfloat16)[..., None, None]
  grads = [jax.grad(lambda q, k, v: jnp.sum(
      jaxpt.attention(q, k, v, implementation=impl, **args).astype(jnp.float32) * w),
      argnums=(0, 1, 2))(q, k, v) for impl in ("cudnn", "xla")]
  for g, r in zip(*grads):
    assert np.isfinite(np.asarray(g, np.float32)).all()  # jax #32242: NaN gradients
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                               rtol=5e-2, atol=5e-2)
