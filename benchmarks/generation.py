"""Greedy generation speed: `jaxpt.generate` against transformers' `generate` on the same
weights, side by side in one process, alternating rounds.

  python benchmarks/generation.py --preset=gpt2 --batch_sizes=1,8 --prompt_len=32 --new=64

Both sides start from the same random GPT-2-shaped weights (exported from jaxpt to a
HuggingFace directory, loaded by transformers' `GPT2LMHeadModel` or, for a ModernBERT-decoder
preset, `ModernBertDecoderForCausalLM`), prompts of `--prompt_len` tokens, exactly `--new`
new tokens per row (no end-of-text stop), fp32. Timed: the whole generation call after a
warm-up call; jaxpt's compilation is reported apart (it happens once per shape). The outputs
of the two sides are checked to be the same tokens.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

import numpy as np
from absl import app, flags

_PRESET = flags.DEFINE_string("preset", "gpt2", "A causal preset (name or file).")
_BATCHES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Rows per generate call.")
_PROMPT = flags.DEFINE_integer("prompt_len", 32, "Tokens per prompt.")
_NEW = flags.DEFINE_integer("new", 64, "New tokens per row.")
_ROUNDS = flags.DEFINE_integer("rounds", 2, "Alternating rounds per side.")


def main(argv):
  del argv
  import jax
  import torch
  import transformers
  from flax import nnx

  import jaxpt
  from jaxpt import config as config_lib
  from jaxpt import hf
  from jaxpt.models import heads
  torch.set_num_threads(os.cpu_count())
  cfg = config_lib.with_model(config_lib.load(_PRESET.value), hidden_dropout=0.0,
                              attention_dropout=0.0)
  m = cfg.model
  with nnx.use_eager_sharding(False):
    model = heads.DecoderForCausalLM(m, rngs=nnx.Rngs(0))
  directory = tempfile.mkdtemp()
  hf.save_model(directory, model, dataclasses_replace_eos(m), overwrite=True)
  ref = transformers.AutoModelForCausalLM.from_pretrained(directory).eval()
  rows = []
  for b in (int(x) for x in _BATCHES.value):
    prompts = np.random.default_rng(b).integers(5, m.vocab_size, (b, _PROMPT.value)).tolist()

    def ours():
      return jaxpt.generate(model, prompts, _NEW.value, eos_token_id=-1, return_stats=True)

    def theirs():
      with torch.no_grad():
        return ref.generate(torch.tensor(prompts), attention_mask=torch.ones(b, _PROMPT.value,
                                                                             dtype=torch.long),
                            max_new_tokens=_NEW.value, min_new_tokens=_NEW.value,
                            do_sample=False, eos_token_id=None, pad_token_id=0).tolist()

    out, stats = ours()  # warm-up; compiles
    compile_s = stats.compile_seconds
    want = theirs()
    same = out == want
    for _ in range(_ROUNDS.value):
      # A pause before each side: torch's OpenMP threads spin for a while after a call and
      # would take the cores from the side timed next.
      time.sleep(1.0)
      t0 = time.perf_counter()
      out, stats = ours()  # compiled already: compile_seconds is ~0 here
      j_total = time.perf_counter() - t0 - stats.compile_seconds
      time.sleep(1.0)
      t0 = time.perf_counter()
      theirs()
      h_total = time.perf_counter() - t0
      row = {"preset": os.path.basename(_PRESET.value), "batch": b,
             "prompt_len": _PROMPT.value, "new_tokens": _NEW.value,
             "jaxpt_tokens_per_sec": b * _NEW.value / j_total,
             "jaxpt_decode_tokens_per_sec": stats.decode_tokens_per_second,
             "hf_tokens_per_sec": b * _NEW.value / h_total,
             "jaxpt_compile_s": round(compile_s, 2), "same_tokens": same,
             "jax": jax.__version__, "torch": torch.__version__,
             "transformers": transformers.__version__}
      row["ratio"] = row["jaxpt_tokens_per_sec"] / row["hf_tokens_per_sec"]
      rows.append(row)
      print(json.dumps(row), flush=True)
  print("| preset | batch | jaxpt tokens/s | HF tokens/s | ratio | jaxpt decode-loop tokens/s "
        "| same tokens |\n|---|---|---|---|---|---|---|")
  for b in dict.fromkeys(r["batch"] for r in rows):
    mine = [r for r in rows if r["batch"] == b]
    j = float(np.median([r["jaxpt_tokens_per_sec"] for r in mine]))
    h = float(np.median([r["hf_tokens_per_sec"] for r in mine]))
    d = float(np.median([r["jaxpt_decode_tokens_per_sec"] for r in mine]))
    print(f"| {mine[0]['preset']} | {b} | {j:,.0f} | {h:,.0f} | {j / h:.2f}x | {d:,.0f} | "
          f"{mine[0]['same_tokens']} |")


def dataclasses_replace_eos(m):
  import dataclasses
  return dataclasses.replace(m, eos_token_id=max(m.eos_token_id, 0))


if __name__ == "__main__":
  app.run(main)
