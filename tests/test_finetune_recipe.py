"""The fine-tuning recipe's parts that need no full run: length buckets change no result,
the learning rate follows the model's width, the averaging function averages, and a bad
--sweep is one line."""

import dataclasses
import re

import jax
import numpy as np
import pytest

from jaxpt import config as config_lib
from jaxpt import sweep
from jaxpt.models import params as params_lib
from jaxpt.tasks import classification
from jaxpt.train import loop
from test_finetune import tiny, vocab_file, write_task  # noqa: F401 (a fixture)


def test_bucket_lengths_halve_in_multiples_of_eight():
  assert classification.bucket_lengths(128, 4) == (16, 32, 64, 128)
  assert classification.bucket_lengths(128, 1) == (128,)
  assert classification.bucket_lengths(16, 4) == (8, 16)
  assert classification.bucket_lengths(100, 3) == (32, 56, 100)
  buckets = (16, 32, 64, 128)
  assert [classification.fit_length(buckets, n) for n in (1, 16, 17, 64, 65, 128)] == [
      16, 16, 32, 64, 128, 128]


def _bound(cfg, task_dir, vocab_file):
  runner = classification.bound_task(
      classification.setup(cfg, str(task_dir), "scratch", vocab_file))
  return runner, runner.program


@pytest.mark.parametrize("kind", ["sequence", "token"])
def test_bucketed_batches_equal_padding_to_the_maximum(tmp_path, vocab_file, kind):
  task_dir = write_task(tmp_path / "task", sizes=(("train", 64), ("validation", 40),
                                                  ("test", 8)), kind=kind)
  results = {}
  for buckets in (1, 4):
    cfg = tiny(length_buckets=buckets)
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, max_position_embeddings=64),
        finetune=dataclasses.replace(cfg.finetune, max_length=64))
    runner, program = _bound(cfg, task_dir, vocab_file)
    with jax.set_mesh(runner.mesh):
      state = program.init_state()
      predictions, loss = runner.predict(state.params, "validation")
      probabilities = runner.probabilities(state.params, "validation")
      batch = next(runner.train_batches(0, 0, runner.rows))
      mask = np.asarray(batch["attention_mask"])  # right padding (what cuDNN's lengths need)
      assert (np.diff(mask, axis=1) <= 0).all() and mask[:, 0].all()
      _, metrics = program.train_step(state, loop.to_device(batch, program.batch_sharding))
    scored = runner.encoded["validation"].labels != classification.IGNORE
    results[buckets] = (predictions[scored], loss, probabilities[scored],
                        batch["input_ids"].shape[1], float(loop.fetch(metrics)["train/loss"]))
  (p1, l1, q1, w1, t1), (p4, l4, q4, w4, t4) = results[1], results[4]
  assert w1 == 64 and w4 == 16  # ~13-token texts pad to 16, not 64
  np.testing.assert_array_equal(p4, p1)  # on every scored label
  np.testing.assert_allclose(q4, q1, atol=1e-5)
  assert l4 == pytest.approx(l1, abs=1e-5) and t4 == pytest.approx(t1, abs=1e-5)
  assert len(p1) == (40 if kind == "sequence" else 40 * 11)  # 8 words and 3 cues each


def test_the_learning_rate_follows_the_width():
  m = config_lib.ModelConfig
  assert classification.learning_rate_for(m(hidden_size=128), scratch=False) == 1e-3
  assert classification.learning_rate_for(m(hidden_size=128), scratch=True) == 1e-3
  assert classification.learning_rate_for(m(hidden_size=256), scratch=False) == 1e-4
  assert classification.learning_rate_for(m(hidden_size=768), scratch=False) == 3e-5
  assert classification.learning_rate_for(m(hidden_size=1024), scratch=False) == 2e-5
  assert classification.learning_rate_for(m(hidden_size=256), scratch=True) == pytest.approx(1e-3)
  cfg = config_lib.load("finetune")
  assert cfg.optim.learning_rate == 0  # by size, resolved by setup


def test_pretraining_refuses_a_learning_rate_of_zero():
  from jaxpt.tasks import pretraining
  cfg = config_lib.load("bert_tiny")
  cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, learning_rate=0.0))
  with pytest.raises(config_lib.ConfigError, match="optim.learning_rate=0.0: pretraining"):
    pretraining.PretrainingTask(cfg, data=object())


def test_the_average_of_trees_is_their_mean_and_shapes_must_agree():
  rng = np.random.default_rng(0)
  a = {"x": rng.normal(size=(3, 2)).astype(np.float32), "y": {"b": np.arange(4.0)}}
  b = {"x": rng.normal(size=(3, 2)).astype(np.float32), "y": {"b": np.arange(4.0) * 3}}
  mean = params_lib.average([a, b])
  np.testing.assert_allclose(mean["x"], (a["x"] + b["x"]) / 2, rtol=1e-6)
  assert mean["x"].dtype == np.float32
  np.testing.assert_allclose(mean["y"]["b"], np.arange(4.0) * 2)
  np.testing.assert_array_equal(params_lib.average([a])["x"], a["x"])
  weighted = params_lib.average([a, b], [3, 1])
  np.testing.assert_allclose(weighted["y"]["b"], np.arange(4.0) * 1.5)
  with pytest.raises(ValueError, match=r"x is \[3, 2\] in one and \[2, 3\] in the other"):
    params_lib.average([a, dict(b, x=b["x"].T)])
  with pytest.raises(ValueError, match="only in one"):
    params_lib.average([a, {"x": b["x"]}])


@pytest.mark.parametrize("spec,needle", [
    ("optim.learnin_rate=1e-4,3e-4", "no such field; did you mean optim.learning_rate?"),
    ("optim.learning_rate=1e-4,fast", "optim.learning_rate='fast': must be a number"),
    ("train.batch_size=16,8.5", "train.batch_size='8.5': must be an integer"),
    ("optim.learning_rate", "expected KEY=VALUE,VALUE"),
    ("optim.warmup_steps=-3", "optim.warmup_steps=-3: must be >= 0"),
])
def test_a_bad_sweep_is_one_line(spec, needle):
  with pytest.raises(sweep.SweepError, match=needle.replace("?", r"\?").replace("(", r"\(")):
    sweep.candidates(config_lib.load("finetune"), [spec])


def test_sweep_candidates_form_a_grid():
  grid = sweep.candidates(config_lib.load("finetune"),
                          ["optim.learning_rate=1e-4,3e-4", "seed=0,1"])
  assert [name for name, _, _ in grid] == [
      "optim.learning_rate=1e-4,seed=0", "optim.learning_rate=1e-4,seed=1",
      "optim.learning_rate=3e-4,seed=0", "optim.learning_rate=3e-4,seed=1"]
  assert grid[3][1].optim.learning_rate == 3e-4 and grid[3][1].seed == 1


def test_grouping_by_length_keeps_each_epoch_a_permutation_and_evens_batches():
  rng = np.random.default_rng(0)
  lengths = rng.integers(3, 120, size=1000)
  order = rng.permutation(1000)
  grouped = classification.group_by_length(order, lengths, 32, 10, np.random.default_rng(1))
  assert sorted(grouped) == list(range(1000))  # every example once
  def spread(o):  # mean over batches of (longest - shortest)
    return np.mean([np.ptp(lengths[o[i:i + 32]]) for i in range(0, 1000, 32)])
  assert spread(grouped) < spread(order) / 4
  again = classification.group_by_length(order, lengths, 32, 10, np.random.default_rng(1))
  np.testing.assert_array_equal(grouped, again)  # a pure function of its inputs


def test_a_scratch_baseline_like_a_pretrained_model_takes_its_shape_and_tokenizer(
    tmp_path, vocab_file):
  import transformers
  from jaxpt.data import tokenizer as tok_lib
  hf_dir = tmp_path / "hf"
  vocab = tok_lib.load(vocab_file).get_vocab()
  transformers.BertForMaskedLM(transformers.BertConfig(
      vocab_size=len(vocab), hidden_size=48, num_hidden_layers=3, num_attention_heads=4,
      intermediate_size=96, max_position_embeddings=128)).save_pretrained(hf_dir)
  (hf_dir / "vocab.txt").write_text(open(vocab_file).read())
  task = write_task(tmp_path / "task", sizes=(("train", 32), ("validation", 8), ("test", 8)))
  s = classification.setup(config_lib.load("finetune"), str(task), "scratch", like=str(hf_dir))
  m = s.cfg.model
  assert (m.num_layers, m.hidden_size, m.num_heads, m.vocab_size) == (3, 48, 4, len(vocab))
  assert m.hidden_dropout == 0.1  # the fine-tuning preset's, not the checkpoint's
  assert s.init_params is None and s.init_source.startswith("scratch (the architecture")
  assert s.tokenizer.get_vocab() == vocab
  assert s.cfg.optim.learning_rate == pytest.approx(1e-3)  # width 48, from scratch
  with pytest.raises(classification.TrainError, match="--like brings its own tokenizer"):
    classification.setup(config_lib.load("finetune"), str(task), "scratch", vocab_file,
                         like=str(hf_dir))
  with pytest.raises(classification.TrainError, match="shapes a model from scratch"):
    classification.setup(config_lib.load("finetune"), str(task), str(hf_dir),
                         like=str(hf_dir))


@pytest.mark.parametrize("scan", [False, True])
def test_layer_decay_scales_each_layer_below_the_head(tmp_path, vocab_file, scan):
  # Plain SGD at rate 1 on gradients of ones: each update is minus its layer's factor.
  task_dir = write_task(tmp_path / "task", sizes=(("train", 64), ("validation", 8),
                                                  ("test", 8)))
  cfg = tiny()
  cfg = dataclasses.replace(
      cfg, model=dataclasses.replace(cfg.model, scan_layers=scan),
      optim=dataclasses.replace(cfg.optim, name="sgd", momentum=0.0, weight_decay=0.0,
                                grad_clip_norm=0.0, learning_rate=1.0, warmup_steps=0,
                                schedule="constant", layer_decay=0.5))
  _, program = _bound(cfg, task_dir, vocab_file)
  params = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), program.model.abstract_params)
  updates, _ = program.tx.update(params, program.tx.init(params), params)
  seen = set()
  for path, u in jax.tree_util.tree_flatten_with_path(updates)[0]:
    name, u = jax.tree_util.keystr(path), np.asarray(u)
    layer = re.match(r"\['encoder'\]\['layers'\]\[(\d+)\]", name)
    if layer:
      expected = [0.5 ** (2 - int(layer.group(1)))]
    elif name.startswith("['encoder']['layers']"):  # scanned: stacked along axis 0
      expected = [0.5 ** (2 - i) for i in range(u.shape[0])]
      assert len(expected) == 2, name
    elif name.startswith("['encoder']['embeddings']"):
      expected = [0.5 ** 3]
    else:
      assert not name.startswith("['encoder']"), name  # BERT has no final norm
      expected = [1.0]  # pooler and the new classifier: the full rate
    rows = u if len(expected) > 1 else u[None]
    for row, factor in zip(rows, expected):
      np.testing.assert_array_equal(row, -np.float32(factor), err_msg=name)
      seen.add(factor)
  assert seen == {1.0, 0.5, 0.25, 0.125}
  # The same program without the decay moves every tensor by the full rate.
  cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, layer_decay=1.0))
  _, program = _bound(cfg, task_dir, vocab_file)
  updates, _ = program.tx.update(params, program.tx.init(params), params)
  assert all((np.asarray(u) == -1.0).all() for u in jax.tree.leaves(updates))


def test_a_layer_decay_outside_zero_to_one_is_refused_by_name():
  cfg = tiny()
  for bad in (0.0, 1.5):
    with pytest.raises(config_lib.ConfigError, match=f"optim.layer_decay={bad}"):
      config_lib.validate(dataclasses.replace(
          cfg, optim=dataclasses.replace(cfg.optim, layer_decay=bad)))


@pytest.mark.parametrize("specials", ["bert", "roberta"])
def test_token_tasks_on_a_byte_level_bpe_encode_words_as_in_running_text(specials):
  # A byte-level BPE keeps a word's leading space in its first piece ("Ġdog"): the words of a
  # token task must encode to the pieces of the sentence they form, not one glued string.
  from jaxpt.data import labelled
  from jaxpt.data import tokenizer as tok_lib
  text = "the old king rides to the dark castle and the young queen walks by the river"
  tok = tok_lib.train_bpe([text] * 50, 300, specials=specials)
  assert tok_lib.is_byte_level(tok)
  words = "the young king walks to the castle".split()
  task = labelled.Task("pos", "token", ["a", "b"], {}, "test")
  example = {"tokens": words, "tags": ["a", "b"] * 3 + ["a"]}
  enc = classification.encode([example], tok, task, max_length=32)
  sentence = tok.encode(" ".join(words))
  assert enc.input_ids[0, :len(sentence.ids)].tolist() == sentence.ids
  assert enc.attention_mask[0].sum() == len(sentence.ids)
  # A label on the first piece of each word: where a piece starts with the space ("Ġ"), and
  # at the first word.
  starts = [i for i, t in enumerate(sentence.tokens)
            if t.startswith("Ġ") or (i == 1)]
  assert np.flatnonzero(enc.labels[0] != classification.IGNORE).tolist() == starts
  assert [int(l) for l in enc.labels[0] if l != classification.IGNORE] == [0, 1] * 3 + [0]
  # The comparison can fail: the words encoded one by one without their spaces do not give
  # the sentence's pieces.
  glued = tok.encode(words, is_pretokenized=True)
  assert glued.ids != sentence.ids
  # A WordPiece tokenizer splits on whitespace: its words are passed unchanged.
  wordpiece = tok_lib.train_wordpiece([text] * 50, 200)
  assert not tok_lib.is_byte_level(wordpiece)
  assert tok_lib.words_as_in_text(wordpiece, [words]) == [words]
