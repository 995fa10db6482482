"""The public Python API scripts rely on: `jaxpt.hf.load_model` / `save_model`,
`model.encode` and `model.mlm_logits`, checked against transformers' PyTorch classes."""

import jax.numpy as jnp
import numpy as np
import torch
import transformers

import jaxpt.hf


def test_load_encode_mlm_logits_save_round_trip(tmp_path):
  torch.manual_seed(0)
  config = transformers.BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, intermediate_size=37,
                                   max_position_embeddings=40)
  reference = transformers.BertForMaskedLM(config).eval()
  reference.save_pretrained(tmp_path / "hf")
  ids = np.random.default_rng(0).integers(5, 97, (3, 12))
  mask = np.ones_like(ids)
  mask[1, 7:] = 0  # padding takes part
  mask[2, 3:] = 0
  with torch.no_grad():
    out = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    output_hidden_states=True)
  real = mask.astype(bool)

  model, info = jaxpt.hf.load_model(tmp_path / "hf")
  assert info.config.num_layers == 2
  # A BertForMaskedLM has no pooler and no next-sentence head: only those start fresh.
  assert info.missing and all(n.startswith(("bert.pooler.", "cls.seq_relationship."))
                              for n in info.missing)
  hidden = np.asarray(model.encode(jnp.asarray(ids), jnp.asarray(mask)))
  assert hidden.shape == (3, 12, 32)
  np.testing.assert_allclose(hidden[real], out.hidden_states[-1].numpy()[real], atol=1e-5)
  logits = np.asarray(model.mlm_logits(jnp.asarray(ids), attention_mask=jnp.asarray(mask)))
  np.testing.assert_allclose(logits[real], out.logits.numpy()[real], atol=1e-4)
  # token_type_ids default to segment A, like transformers'.
  typed = model.encode(jnp.asarray(ids), jnp.asarray(mask), jnp.zeros_like(jnp.asarray(ids)))
  np.testing.assert_array_equal(np.asarray(typed), hidden)

  jaxpt.hf.save_model(tmp_path / "out", model, info.config, architecture="BertForMaskedLM")
  again = transformers.BertForMaskedLM.from_pretrained(tmp_path / "out").eval()
  with torch.no_grad():
    back = again(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
  np.testing.assert_allclose(back[real], out.logits.numpy()[real], atol=1e-4)
