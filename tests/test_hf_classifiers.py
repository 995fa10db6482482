"""Classifiers in and out of HuggingFace: BERT, RoBERTa and ModernBERT sequence and token
classifiers give transformers' logits on the same weights, and round-trip bit-identically."""

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import transformers  # noqa: E402

from jaxpt import hf  # noqa: E402
from jaxpt.models import params as params_lib  # noqa: E402

pytestmark = pytest.mark.slow  # nine transformers models built and compared: `make test` only

SMALL = dict(vocab_size=99, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
             intermediate_size=40, max_position_embeddings=64)
CASES = {
    "BertForSequenceClassification": (transformers.BertConfig, {}),
    "BertForTokenClassification": (transformers.BertConfig, {}),
    "RobertaForSequenceClassification": (transformers.RobertaConfig, dict(pad_token_id=1)),
    "RobertaForTokenClassification": (transformers.RobertaConfig, dict(pad_token_id=1)),
    "ModernBertForSequenceClassification": (transformers.ModernBertConfig, dict(
        local_attention=8, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
        sep_token_id=2, global_attn_every_n_layers=3, classifier_pooling="cls")),
    "ModernBertForTokenClassification": (transformers.ModernBertConfig, dict(
        local_attention=8, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1,
        sep_token_id=2, global_attn_every_n_layers=3)),
}


def saved_classifier(tmp_path, architecture, **changes):
  config_cls, fields = CASES[architecture]
  cfg = config_cls(**{**SMALL, **fields, **changes}, num_labels=3,
                   id2label={0: "neg", 1: "neu", 2: "pos"},
                   label2id={"neg": 0, "neu": 1, "pos": 2}, attn_implementation="eager")
  torch.manual_seed(0)
  model = getattr(transformers, architecture)(cfg).eval()
  with torch.no_grad():  # norms and biases away from their initial values
    for name, p in model.named_parameters():
      if "norm" in name.lower() or name.endswith("bias"):
        p.add_(0.3 * torch.randn_like(p))
  model.save_pretrained(tmp_path)
  return model


def inputs(pad_id):
  rng = np.random.default_rng(0)
  ids = rng.integers(3, SMALL["vocab_size"], (3, 20))
  mask = np.ones_like(ids)
  mask[1, 13:] = 0
  mask[2, 6:] = 0
  ids[mask == 0] = pad_id
  return ids, mask


@pytest.mark.parametrize("architecture,changes", [
    *[(a, {}) for a in CASES],
    ("ModernBertForSequenceClassification", dict(classifier_pooling="mean")),
    ("ModernBertForSequenceClassification", dict(norm_bias=True, attention_bias=True,
                                                 mlp_bias=True, classifier_bias=True)),
])
def test_classifier_logits_equal_transformers_and_round_trip(tmp_path, architecture, changes):
  reference = saved_classifier(tmp_path / "hf", architecture, **changes)
  ids, mask = inputs(reference.config.pad_token_id)
  with torch.no_grad():
    want = reference(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits
  model, info = hf.load_model(tmp_path / "hf")
  assert not info.missing and not info.unexpected, (info.missing, info.unexpected)
  assert info.labels == ["neg", "neu", "pos"]
  assert info.kind == ("token" if "Token" in architecture else "sequence")
  got = np.asarray(model(jnp.asarray(ids), jnp.zeros_like(jnp.asarray(ids)),
                         jnp.asarray(mask)))
  want = want.numpy()
  if info.kind == "token":
    got, want = got[mask == 1], want[mask == 1]
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  # jaxpt -> transformers -> jaxpt: the same tensors, bit for bit.
  hf.save_classifier(tmp_path / "out", info.params, info.config, info.labels, info.kind)
  again = getattr(transformers, architecture).from_pretrained(tmp_path / "out")
  assert again.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
  again.save_pretrained(tmp_path / "again")
  second = hf.import_classifier(tmp_path / "again")
  assert not second.missing and not second.unexpected
  a, b = params_lib.flatten(info.params), params_lib.flatten(second.params)
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_classifier_directory_still_gives_its_encoder(tmp_path):
  """`import_params` on a classifier reads the encoder (to fine-tune it again), and says the
  classifier was not used."""
  saved_classifier(tmp_path, "BertForSequenceClassification")
  imported = hf.import_params(tmp_path)
  assert "classifier.weight" in imported.unexpected
  assert all(n.startswith(("cls.", )) for n in imported.missing)
