"""Pretrained weights from anywhere jaxpt knows: a HuggingFace directory, a `jaxpt import-hf`
directory, or a pretraining / fine-tuning workdir (its latest or best checkpoint).

Everything comes back as host numpy arrays and a ModelConfig; callers place them on their mesh.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

from jaxpt import files
from jaxpt import hf
from jaxpt.config import ModelConfig, validate_model
from jaxpt.data import tokenizer as tok_lib
from jaxpt.errors import UserError
from jaxpt.models import params as params_lib
from jaxpt.train import checkpoint as ckpt_lib

MODEL_JSON = "model.json"  # the model config and the import report of an imported directory
TASK_JSON = "task.json"  # a fine-tuning workdir's task: name, source, kind, labels, init


def task_info(source: str) -> dict | None:
  """The task of a fine-tuning workdir (its task.json), or None for any other source."""
  path = pathlib.Path(source) / TASK_JSON
  return json.loads(path.read_text()) if path.is_file() else None


class SourceError(UserError, ValueError):
  """A pretrained source that does not exist or does not fit; the message names it."""


@dataclasses.dataclass
class Pretrained:
  config: ModelConfig
  params: dict  # pure dict of numpy arrays, laid out for `config` (scan_layers or not)
  tokenizer: object | None
  source: str  # where the weights came from, for logs
  missing: list[str] = dataclasses.field(default_factory=list)  # freshly initialised (HF)


def _model_config(d: dict) -> ModelConfig:
  fields = {f.name for f in dataclasses.fields(ModelConfig)}
  return validate_model(ModelConfig(**{k: v for k, v in d.items() if k in fields}))


def load(source: str, *, best: bool = False, step: int | None = None) -> Pretrained:
  """`source`: `hf:DIR`, a HuggingFace directory (has config.json), an imported directory
  (has params/) or a workdir (has checkpoints/; `best` picks best/, `step` a given step)."""
  path = pathlib.Path(source[3:] if source.startswith("hf:") else source)
  if not path.is_dir():
    raise SourceError(f"{source}: no such directory")
  if source.startswith("hf:") or (path / hf.CONFIG).exists():
    imported = hf.import_params(path)
    return Pretrained(imported.config, imported.params, imported.tokenizer, f"hf:{path}",
                      imported.missing)
  if (path / "params").is_dir() and (path / MODEL_JSON).exists():
    info = json.loads((path / MODEL_JSON).read_text())
    cfg = _model_config(info["model"])
    params = ckpt_lib.restore_params(str(path / "params"))
    return Pretrained(cfg, params, _tokenizer(path, None), str(path),
                      info.get("missing", []))
  ckpt_dir = path / ("best" if best else "checkpoints")
  if ckpt_dir.is_dir():
    checkpointer = ckpt_lib.Checkpointer(str(ckpt_dir), max_to_keep=1, async_save=False)
    try:
      chosen = step if step is not None else checkpointer.latest_step()
      if chosen is None or chosen not in checkpointer.all_steps():
        raise SourceError(f"{ckpt_dir}: no checkpoint"
                          + (f" at step {step}" if step is not None else "")
                          + f" (steps: {checkpointer.all_steps()})")
      _, saved = checkpointer.restore_metadata(chosen)
    finally:
      checkpointer.close()
    cfg = _model_config(saved["model"])
    params = ckpt_lib.restore_params(str(ckpt_dir / str(chosen) / "state"))
    return Pretrained(cfg, params, _tokenizer(path, saved.get("data", {}).get("dir")),
                      f"{ckpt_dir}/{chosen}")
  raise SourceError(f"{source}: neither a HuggingFace directory ({hf.CONFIG}), an imported "
                    "directory (params/) nor a workdir with checkpoints/")


def _tokenizer(workdir: pathlib.Path, data_dir: str | None):
  candidates = [workdir / "tokenizer" / "tokenizer.json"]
  if data_dir:  # an older workdir without its own copy: the data directory's
    candidates.append(pathlib.Path(data_dir) / "tokenizer.json")
  for candidate in candidates:
    if candidate.exists():
      return tok_lib.load(str(candidate))
  return None


def adapt(pretrained: Pretrained, cfg: ModelConfig, *, allow_missing: tuple[str, ...] = ()):
  """`pretrained.params` laid out for `cfg` (scan or not), every shape checked against the
  model `cfg` describes. Parameters under `allow_missing` prefixes may be absent."""
  src = pretrained.config
  if src.variant != cfg.variant:
    raise SourceError(f"{pretrained.source}: a {src.variant} model; the config asks for "
                      f"model.variant={cfg.variant!r}")
  flat = hf.flatten(pretrained.params, src)
  want = hf.flatten(hf.abstract_params(cfg), cfg)
  problems = []
  for name in sorted(set(want) | set(flat)):
    have = flat[name].shape if name in flat else None
    need = want[name].shape if name in want else None
    if have != need and not (have is None and name.startswith(allow_missing)):
      problems.append(f"{name}: pretrained {have or 'absent'}, config {need or 'absent'}")
  if problems:
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    raise SourceError(f"{pretrained.source} does not fit the config: "
                      + "; ".join(problems[:3]) + more)
  return hf.unflatten({k: v for k, v in flat.items() if k in want}, cfg)


def write_imported(directory: str, imported: hf.Imported) -> pathlib.Path:
  """`jaxpt import-hf`'s output: params/ (Orbax), model.json, tokenizer/ and config.py (a preset
  for `pretrain`/`finetune` with this architecture). Built in a temporary sibling, renamed."""
  out = pathlib.Path(directory)
  if out.exists() and any(out.iterdir()):
    raise SourceError(f"{out}: exists and is not empty; import into a new directory")
  with files.atomic_directory(out) as tmp:
    ckpt_lib.save_params(str(tmp / "params"), imported.params)
    info = {"model": dataclasses.asdict(imported.config), "source": imported.source,
            "missing": imported.missing, "unexpected": imported.unexpected}
    (tmp / MODEL_JSON).write_text(json.dumps(info, indent=2) + "\n")
    if imported.tokenizer is not None:
      (tmp / "tokenizer").mkdir()
      tok_lib.save(imported.tokenizer, str(tmp / "tokenizer"))
    (tmp / "config.py").write_text(_preset(imported.config, imported.source))
  return out


def average_checkpoints(workdir: str, out: str, *, last: int = 0,
                        steps: list[int] | None = None) -> tuple[pathlib.Path, list[int]]:
  """The mean of a run's checkpoints (its `last` newest, or the given `steps`), written as
  `import-hf` writes a directory: `--init`, `train.init_from` and `export-hf` take it.
  Averaging the last checkpoints of a run smooths its final iterate (Kaddour 2022, "Stop
  wasting my time!", arXiv 2209.14981; Sanyal et al. 2023, arXiv 2306.03241).
  Returns (the directory, the steps averaged)."""
  ckpt_dir = pathlib.Path(workdir) / "checkpoints"
  if not ckpt_dir.is_dir():
    raise SourceError(f"{workdir}: no checkpoints/; not a pretraining workdir")
  checkpointer = ckpt_lib.Checkpointer(str(ckpt_dir), max_to_keep=1, async_save=False)
  try:
    available = sorted(checkpointer.all_steps())
  finally:
    checkpointer.close()
  if steps:
    missing = [s for s in steps if s not in available]
    if missing:
      raise SourceError(f"{ckpt_dir}: no checkpoint at step {missing[0]} (steps: {available})")
  elif last > 0:
    if last > len(available):
      raise SourceError(f"{ckpt_dir}: --last={last}, but only {len(available)} checkpoints "
                        f"are kept ({available}; checkpoint.max_to_keep keeps more)")
    steps = available[-last:]
  else:
    raise SourceError("name the checkpoints to average: --last=N or --steps=A,B")
  loaded = [load(workdir, step=s) for s in steps]
  try:
    params = params_lib.average([p.params for p in loaded])
  except ValueError as e:
    raise SourceError(f"{workdir}: its checkpoints differ: {e}") from None
  first = loaded[0]
  imported = hf.Imported(first.config, params, first.tokenizer, [], [],
                         f"{workdir} (mean of steps {', '.join(map(str, steps))})")
  return write_imported(out, imported), list(steps)


def _preset(cfg: ModelConfig, source: str) -> str:
  fields = ",\n      ".join(f"{k}={v!r}" for k, v in dataclasses.asdict(cfg).items())
  return f'''"""The architecture imported from {source} (written by `jaxpt import-hf`)."""

import dataclasses

from jaxpt.config import Config, ModelConfig


def get_config() -> Config:
  return dataclasses.replace(Config(), model=ModelConfig(
      {fields}))
'''
