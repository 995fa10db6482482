"""The house's shape: no import cycles, and lower layers never import higher ones."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "jaxpt"
# Lower layers (configuration, data, models, sharding, optimisers) stand on nothing above them.
LOWER = ("jaxpt.config", "jaxpt.errors", "jaxpt.files", "jaxpt.data", "jaxpt.models",
         "jaxpt.sharding", "jaxpt.optim")
HIGHER = ("jaxpt.train", "jaxpt.tasks", "jaxpt.cli", "jaxpt.compress")


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
  """Module -> the jaxpt modules it imports, at any depth of its code (lazy imports too)."""
  modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
  graph = {}
  for name, path in modules.items():
    edges = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        targets = [a.name for a in node.names]
      elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        # `from jaxpt.x import y`: y is a module when one of that name exists.
        targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                   else node.module for a in node.names]
      else:
        continue
      edges.update(t for t in targets if t in modules and t != name)
    graph[name] = edges
  return graph


def _is_package_of(parent: str, child: str) -> bool:
  return child.startswith(parent + ".")


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph[node]):
      if _is_package_of(node, nxt) or _is_package_of(nxt, node):
        continue  # a package and its own modules
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state:
        found = visit(nxt)
        if found:
          return found
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state:
      found = visit(node)
      if found:
        return found
  return None


def test_the_import_graph_has_no_cycle():
  assert find_cycle(import_graph()) is None, " -> ".join(find_cycle(import_graph()))


def test_the_cycle_finder_finds_a_planted_cycle():
  graph = import_graph()
  graph["jaxpt.config"] = graph["jaxpt.config"] | {"jaxpt.tasks.classification"}
  cycle = find_cycle(graph)
  assert cycle and cycle[0] == cycle[-1] and "jaxpt.config" in cycle


def test_lower_layers_import_no_higher_one():
  wrong = [f"{m} imports {t}" for m, targets in import_graph().items()
           if m.startswith(LOWER) for t in targets if t.startswith(HIGHER)]
  assert not wrong, wrong


def test_one_loop_one_step_builder_one_cross_entropy():
  text = {p: p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}
  for needle in ("def make_train_step(", "def cross_entropy(", "def run(task"):
    where = [str(p.relative_to(PACKAGE)) for p, t in text.items() if needle in t]
    assert len(where) == 1, (needle, where)
  assert not any("softmax_cross_entropy" in t for t in text.values())


def test_every_packaged_preset_loads_and_validates():
  """Each file of jaxpt/configs is a preset `--config=NAME` can load (helpers start with _)."""
  from jaxpt import config as config_lib
  names = sorted(p.stem for p in (PACKAGE / "configs").glob("*.py")
                 if not p.stem.startswith("_"))
  assert {"embedded_tiny", "embedded_modern", "modern_clm_stage", "modern_mlm_stage",
          "bert_base"} <= set(names)
  for name in names:
    cfg = config_lib.validate(config_lib.load(name))
    assert cfg.model.num_layers > 0, name
