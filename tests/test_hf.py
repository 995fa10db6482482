"""Model fidelity against HuggingFace's PyTorch BERT and RoBERTa: real weights, heads, round
trips, tokenizer ids, bf16, and the import/export/fill-mask commands."""

import dataclasses
import json
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from jaxpt import cli, hf, pretrained
from jaxpt.tasks import pretraining
from jaxpt.train.loop import TrainError
from jaxpt import config as config_lib
from jaxpt.data import corpora
from jaxpt.data import tokenizer as tok_lib

transformers.logging.set_verbosity_error()


@nnx.jit
def encode(model, ids, types, mask):
  return model.encoder(ids, types, mask)


@nnx.jit
def mlm_logits(model, ids, types, mask):
  return model.mlm_logits(ids, attention_mask=mask, token_type_ids=types)

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "BERT was pre-trained on BooksCorpus and English Wikipedia.",
    "Is this the real life? Is this just fantasy?",
    "Short one.",
]


@pytest.fixture(scope="module")
def minilm() -> pathlib.Path:
  return corpora.fetch_weights("all-minilm-l6-v2")


def small_bert_config(**changes):
  base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=64)
  return transformers.BertConfig(**{**base, **changes})


def random_ids(shape, low, high, seed=0):
  return np.random.default_rng(seed).integers(low, high, shape).astype(np.int64)


def torch_inputs(**arrays):
  return {k: torch.tensor(v) for k, v in arrays.items()}


def test_minilm_hidden_states_equal_transformers(minilm):
  model, imported = hf.load_bert(minilm)
  assert imported.unexpected == []
  assert "bert.pooler.dense.weight" not in imported.missing  # BertModel: encoder + pooler
  assert "cls.predictions.bias" in imported.missing  # no MLM head in a sentence encoder
  tok = transformers.BertTokenizerFast.from_pretrained(minilm)
  enc = tok(SENTENCES, padding=True, return_tensors="np")
  assert (enc["attention_mask"] == 0).any()  # padding is part of the check
  reference = transformers.BertModel.from_pretrained(minilm).eval()
  with torch.no_grad():
    want = reference(**torch_inputs(**enc)).last_hidden_state.numpy()
  got = np.asarray(encode(model, jnp.asarray(enc["input_ids"]),
                                     jnp.asarray(enc["token_type_ids"]),
                                     jnp.asarray(enc["attention_mask"])))
  assert np.abs(got - want).max() < 1e-4

  # bf16 compute (parameters stay fp32) stays close to fp32.
  bf16, _ = hf.load_bert(minilm, dtype="bfloat16")
  low = np.asarray(encode(bf16, jnp.asarray(enc["input_ids"]),
                                    jnp.asarray(enc["token_type_ids"]),
                                    jnp.asarray(enc["attention_mask"])), np.float32)
  real = enc["attention_mask"].astype(bool)
  relative = np.linalg.norm(low[real] - want[real]) / np.linalg.norm(want[real])
  assert 0 < relative < 2e-2


def test_pretraining_heads_equal_transformers(tmp_path):
  torch.manual_seed(0)
  reference = transformers.BertForPreTraining(small_bert_config()).eval()
  reference.save_pretrained(tmp_path)
  model, imported = hf.load_bert(tmp_path)
  assert imported.missing == [] and imported.unexpected == []
  ids = random_ids((3, 12), 0, 99)
  types = np.zeros_like(ids)
  types[:, 6:] = 1
  mask = np.ones_like(ids)
  mask[1, 8:] = 0
  with torch.no_grad():
    out = reference(**torch_inputs(input_ids=ids, token_type_ids=types, attention_mask=mask))
  mlm = np.asarray(mlm_logits(model, jnp.asarray(ids), jnp.asarray(types), jnp.asarray(mask)))
  positions = jnp.asarray([[1, 4, 7]] * 3)
  picked, nsp = model(jnp.asarray(ids), jnp.asarray(types), jnp.asarray(mask), positions)
  assert np.abs(mlm - out.prediction_logits.numpy()).max() < 1e-4
  assert np.abs(np.asarray(nsp) - out.seq_relationship_logits.numpy()).max() < 1e-4
  # The training path (logits only at masked positions) is the same function.
  np.testing.assert_allclose(np.asarray(picked), mlm[:, [1, 4, 7]], atol=1e-5)


def test_roberta_equals_transformers_and_round_trips(tmp_path):
  config = transformers.RobertaConfig(
      vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
      intermediate_size=37, max_position_embeddings=40, type_vocab_size=1, layer_norm_eps=1e-5)
  torch.manual_seed(1)
  reference = transformers.RobertaForMaskedLM(config).eval()
  reference.save_pretrained(tmp_path / "hf")
  model, imported = hf.load_bert(tmp_path / "hf")
  assert imported.config.variant == "roberta" and model.nsp is None
  assert imported.unexpected == []
  ids = random_ids((2, 14), 3, 99)
  ids[:, 0] = 0  # <s>
  mask = np.ones_like(ids)
  ids[1, 9:], mask[1, 9:] = 1, 0  # <pad>: positions restart after the padding id
  with torch.no_grad():
    want = reference(**torch_inputs(input_ids=ids, attention_mask=mask)).logits.numpy()
  got = np.asarray(mlm_logits(model, jnp.asarray(ids), None, jnp.asarray(mask)))
  assert np.abs(got - want).max() < 1e-4

  hf.save_model(tmp_path / "out", imported.params, imported.config)
  back, info = transformers.RobertaForMaskedLM.from_pretrained(tmp_path / "out",
                                                               output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  for name, tensor in reference.state_dict().items():
    if "position_ids" not in name:
      assert torch.equal(tensor, back.state_dict()[name]), name


@pytest.mark.parametrize("scan_layers", [False, True])
def test_export_transformers_import_is_bit_identical(tmp_path, scan_layers):
  cfg = config_lib.ModelConfig(vocab_size=120, hidden_size=32, num_layers=3, num_heads=4,
                               intermediate_size=48, max_position_embeddings=40,
                               scan_layers=scan_layers)
  params = hf.flatten(hf._init_params(cfg, seed=3), cfg)
  params["mlm.bias"] = np.random.default_rng(0).normal(size=120).astype(np.float32)
  params = hf.unflatten(params, cfg)
  hf.save_model(tmp_path / "a", params, cfg)
  model, info = transformers.BertForPreTraining.from_pretrained(tmp_path / "a",
                                                                output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  model.save_pretrained(tmp_path / "b")
  back = hf.import_params(tmp_path / "b", scan_layers=scan_layers)
  assert back.missing == [] and back.unexpected == []
  want, got = hf.flatten(params, cfg), hf.flatten(back.params, cfg)
  assert sorted(want) == sorted(got)
  for name in want:
    assert want[name].dtype == got[name].dtype and np.array_equal(want[name], got[name]), name


def _real_lines(minilm: pathlib.Path) -> list[str]:
  shakespeare = corpora.fetch("shakespeare")[0]
  lines = []
  for path in sorted(shakespeare.glob("*.txt"))[:6]:
    lines += [l for l in path.read_text(encoding="utf-8").splitlines() if l][:40]
  lines += [l for l in (minilm / "README.md").read_text(encoding="utf-8").splitlines()
            if l.strip()][:60]
  lines += [
      "Crème brûlée, naïve café, façade, Ångström, smörgåsbord.",
      "東京は日本の首都です。北京欢迎你！서울은 한국의 수도입니다.",
      "Ελληνικά, русский язык, עברית, العربية — mixed scripts.",
      "Emoji 🤖🚀 and symbols ™ © ® ° ± × ÷ ≠ ≤ ≥ ∞ → ⇒.",
      "URLs like https://example.com/a?b=c&d=e, e-mails a.b@c.de, $3.50, 12,345.67%.",
      "Tabs\tand   spaces\u00a0and zero\u200bwidth and control\u0007chars.",
      "supercalifragilisticexpialidocious antidisestablishmentarianism xyzzyq",
      "The [MASK] sat on the [SEP] and [CLS] [UNK] [PAD] tokens.",
  ]
  return lines


def test_tokenizer_ids_equal_bert_tokenizer_fast(minilm):
  lines = _real_lines(minilm)
  assert len(lines) >= 300
  reference = transformers.BertTokenizerFast.from_pretrained(minilm)
  want = reference(lines)["input_ids"]
  for name in ("vocab.txt", "tokenizer.json"):
    tok = tok_lib.load(str(minilm / name))
    got = [e.ids for e in tok.encode_batch(lines)]
    mismatched = [line for line, g, w in zip(lines, got, want) if g != w]
    assert not mismatched, (name, mismatched[:3])
  unk = reference.unk_token_id
  assert any(unk in ids for ids in want)  # the lines do exercise [UNK]


def test_bad_hf_directories_are_clear_errors(tmp_path, minilm):
  with pytest.raises(hf.HFError, match="no config.json"):
    hf.import_params(tmp_path)

  gpt = tmp_path / "gpt"
  gpt.mkdir()
  (gpt / "config.json").write_text(json.dumps({"model_type": "t5", "vocab_size": 10}))
  with pytest.raises(hf.HFError, match="model_type='t5' is not one jaxpt reads"):
    hf.import_params(gpt)

  torch.manual_seed(0)
  ref = transformers.BertForPreTraining(small_bert_config())
  bad = tmp_path / "shape"
  ref.save_pretrained(bad)
  config = json.loads((bad / "config.json").read_text())
  config["intermediate_size"] = 40
  (bad / "config.json").write_text(json.dumps(config))
  with pytest.raises(hf.HFError, match=r"intermediate\.dense\.weight has shape \(37, 32\); "
                                       r"config.json implies \(40, 32\)"):
    hf.import_params(bad)

  vocab = tmp_path / "vocab"
  shutil.copytree(minilm, vocab)
  (vocab / "tokenizer.json").unlink()
  lines = (vocab / "vocab.txt").read_text(encoding="utf-8").splitlines()
  (vocab / "vocab.txt").write_text("\n".join(lines[:30000]) + "\n", encoding="utf-8")
  with pytest.raises(hf.HFError, match="30000 tokens but the word embeddings have 30522"):
    hf.import_params(vocab)

  # A pickle that runs code on load is refused by the weights_only loader.
  pickled = tmp_path / "pickle"
  pickled.mkdir()
  shutil.copy(bad / "config.json", pickled / "config.json")
  torch.save({"weights": _Exploit()}, pickled / "pytorch_model.bin")
  with pytest.raises(hf.HFError, match=r"pytorch_model.bin: refused by torch.load"):
    hf.import_params(pickled)
  (pickled / "pytorch_model.bin").rename(pickled / "model.pkl")
  with pytest.raises(hf.HFError, match="only pickle weight files"):
    hf.import_params(pickled)

  # Export never overwrites a non-empty directory unless asked, and leaves nothing behind.
  out = tmp_path / "taken"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  imported = hf.import_params(minilm)
  with pytest.raises(hf.HFError, match="exists and is not empty"):
    hf.save_model(out, imported.params, imported.config)
  assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
  assert (out / "keep.txt").read_text() == "mine"


class _Exploit:
  def __reduce__(self):
    return (print, ("this would have run on load",))


@pytest.mark.slow
def test_workdir_export_fill_mask_import_and_continue(prepared_dir, tmp_path, capsys):
  """pretrain -> export-hf -> transformers logits; fill-mask; import-hf -> continued pretrain."""
  vocab = json.loads((prepared_dir / "manifest.json").read_text())["tokenizer"]["vocab_size"]
  cfg = config_lib.with_model(config_lib.load("configs/bert_tiny.py"), vocab_size=vocab,
                              max_position_embeddings=32, hidden_size=32,
                              intermediate_size=64)
  cfg = dataclasses.replace(
      cfg, data=dataclasses.replace(cfg.data, dir=str(prepared_dir)),
      mesh=dataclasses.replace(cfg.mesh, data=2, fsdp=2, tensor=2),
      train=dataclasses.replace(cfg.train, batch_size=8, num_steps=2, log_every_steps=1,
                                eval_every_steps=0, eval_batches=1),
      checkpoint=dataclasses.replace(cfg.checkpoint, every_steps=2))
  run = tmp_path / "run"
  pretraining.pretrain(cfg, str(run), progress=False)

  assert cli.main(["jaxpt", "export-hf", f"--workdir={run}", f"--to={tmp_path / 'hf'}"]) == 0
  reference, info = transformers.BertForPreTraining.from_pretrained(
      tmp_path / "hf", output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"]
  hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
  enc = hf_tok(["the king speaks", "a knight rides into the forest"], padding=True,
               return_tensors="np")
  ours = pretrained.load(str(run))
  assert [e.ids for e in ours.tokenizer.encode_batch(["the king speaks"])] == \
      [hf_tok("the king speaks")["input_ids"]]
  model = hf.build(ours.config, ours.params)
  with torch.no_grad():
    want = reference.eval()(**torch_inputs(**enc)).prediction_logits.numpy()
  got = np.asarray(mlm_logits(model, *(jnp.asarray(enc[k]) for k in
                                      ("input_ids", "token_type_ids", "attention_mask"))))
  assert np.abs(got - want).max() < 1e-4

  capsys.readouterr()
  assert cli.main(["jaxpt", "fill-mask", f"--workdir={run}", "--top_k=3",
                   "the [MASK] speaks", "a [MASK] rides into the [MASK]"]) == 0
  out = capsys.readouterr().out.splitlines()
  assert out[0] == "the [MASK] speaks" and out[1].startswith("  mask 1: ")
  assert len(out) == 5 and len(out[1].split()) == 2 + 2 * 3
  assert cli.main(["jaxpt", "fill-mask", f"--workdir={run}", "no mask here"]) == 2
  assert "no [MASK] in the text" in capsys.readouterr().err

  imported = tmp_path / "imported"
  assert cli.main(["jaxpt", "import-hf", f"--from={tmp_path / 'hf'}",
                   f"--workdir={imported}"]) == 0
  assert (imported / "config.py").exists() and (imported / "tokenizer" / "vocab.txt").exists()
  cont = dataclasses.replace(
      cfg, train=dataclasses.replace(cfg.train, init_from=str(imported), num_steps=2),
      optim=dataclasses.replace(cfg.optim, warmup_steps=1))
  capsys.readouterr()
  pretraining.pretrain(cont, str(tmp_path / "continued"), progress=False)
  assert f"parameters from {imported}" in capsys.readouterr().out
  first = pretrained.load(str(tmp_path / "continued"))
  # Two AdamW steps (the first at learning rate 0) from the imported weights move them by
  # at most about one learning rate: they did start from the import, not from scratch.
  a, b = hf.flatten(ours.params, cfg.model), hf.flatten(first.params, cfg.model)
  delta = max(np.abs(a[k] - b[k]).max() for k in a)
  assert 0 < delta < 2 * cont.optim.learning_rate

  # Weights of another architecture are refused before anything compiles.
  wrong = dataclasses.replace(config_lib.with_model(cont, hidden_size=64),
                              train=cont.train)
  with pytest.raises(TrainError, match=r"encoder\.embeddings\.norm\.bias: pretrained "
                                               r"\(32,\), config \(64,\)"):
    pretraining.pretrain(wrong, str(tmp_path / "wrong"), progress=False)


def test_roberta_bpe_tokenizer_trains_and_loads_in_transformers(tmp_path):
  lines = [l for l in SENTENCES * 20] + ["Naïve café, 東京!", "spaces  and\ttabs"]
  tok = tok_lib.train_bpe(lines, vocab_size=300, min_frequency=1)
  assert tok_lib.family(tok) == "roberta"
  assert [tok.token_to_id(t) for t in ("<s>", "<pad>", "</s>", "<unk>")] == [0, 1, 2, 3]
  ids = tok_lib.special_ids(tok)
  assert (ids["cls"], ids["sep"], ids["pad"]) == (0, 2, 1)
  pair = tok.encode("The quick fox", "Short one.")
  assert pair.ids[0] == 0 and pair.ids.count(2) == 3  # <s> A </s></s> B </s>
  tok_lib.save_for_transformers(tok, str(tmp_path), "roberta", model_max_length=64)
  fast = transformers.AutoTokenizer.from_pretrained(tmp_path)
  for line in lines[-3:] + ["The [MASK] is <mask>."]:
    assert fast(line)["input_ids"] == tok.encode(line).ids, line
  assert tok.decode(tok.encode("Naïve café, 東京!").ids) == "Naïve café, 東京!"
