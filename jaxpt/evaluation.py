"""Classification metrics with scikit-learn: accuracy, precision / recall / F1 (macro, and
binary for two classes), Matthews correlation, the confusion matrix; entity-level F1 for BIO
token tags."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def classification_report(labels: np.ndarray, predictions: np.ndarray,
                          names: list[str]) -> dict:
  """`labels`, `predictions`: int arrays of class ids (already without padding)."""
  labels, predictions = np.asarray(labels), np.asarray(predictions)
  ids = list(range(len(names)))
  p, r, f, _ = skm.precision_recall_fscore_support(labels, predictions, labels=ids,
                                                   average="macro", zero_division=0)
  report = {
      "num_examples": int(labels.size),
      "accuracy": float(skm.accuracy_score(labels, predictions)),
      "precision_macro": float(p), "recall_macro": float(r), "f1_macro": float(f),
      # Undefined (scikit-learn warns, and says 0) when one class is all there is.
      "mcc": (float(skm.matthews_corrcoef(labels, predictions))
              if np.unique(np.concatenate([labels, predictions])).size > 1 else 0.0),
      "labels": list(names),
      "confusion_matrix": skm.confusion_matrix(labels, predictions, labels=ids).tolist(),
  }
  if len(names) == 2:  # the second class is the positive one (e.g. ham / spam)
    p, r, f, _ = skm.precision_recall_fscore_support(labels, predictions, pos_label=1,
                                                     average="binary", zero_division=0)
    report.update(precision_binary=float(p), recall_binary=float(r), f1_binary=float(f),
                  positive_label=names[1])
  return report


def bio_spans(tags: list[str]) -> set[tuple[int, int, str]]:
  """(start, end, type) of the entities in one BIO-tagged sequence (I- after O starts one)."""
  spans, start, kind = set(), None, None
  for i, tag in enumerate(list(tags) + ["O"]):
    inside = tag.startswith("I-") and kind == tag[2:]
    if not inside and start is not None:
      spans.add((start, i, kind))
      start = kind = None
    if tag.startswith("B-") or (tag.startswith("I-") and not inside):
      start, kind = i, tag[2:]
  return spans


def entity_report(true_tags: list[list[str]], predicted_tags: list[list[str]]) -> dict:
  """Exact-match entity precision / recall / F1 (micro), as the CoNLL evaluation."""
  true_n = pred_n = hit = 0
  for t, p in zip(true_tags, predicted_tags):
    ts, ps = bio_spans(t), bio_spans(p)
    true_n, pred_n, hit = true_n + len(ts), pred_n + len(ps), hit + len(ts & ps)
  precision = hit / pred_n if pred_n else 0.0
  recall = hit / true_n if true_n else 0.0
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  return {"entity_precision": precision, "entity_recall": recall, "entity_f1": f1,
          "entities": true_n}


def is_bio(names: list[str]) -> bool:
  return any(n.startswith(("B-", "I-")) for n in names) and all(
      n == "O" or n.startswith(("B-", "I-")) for n in names)


def format_table(report: dict, title: str) -> str:
  keys = [k for k in ("num_examples", "accuracy", "precision_macro", "recall_macro", "f1_macro",
                      "precision_binary", "recall_binary", "f1_binary", "mcc", "entity_f1")
          if k in report]
  lines = [title] + [f"  {k:<16} {report[k]:.4f}" if isinstance(report[k], float)
                     else f"  {k:<16} {report[k]}" for k in keys]
  names = report.get("labels", [])
  if names and len(names) <= 20:
    width = max(6, *(len(n) for n in names))
    lines.append("  confusion matrix (rows: true, columns: predicted)")
    lines.append("  " + " " * width + " " + " ".join(f"{n[:width]:>{width}}" for n in names))
    for name, row in zip(names, report["confusion_matrix"]):
      lines.append(f"  {name[:width]:>{width}} " + " ".join(f"{v:>{width}}" for v in row))
  return "\n".join(lines)
