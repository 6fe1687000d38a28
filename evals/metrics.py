"""Metric formulas, free of models and files (every function takes plain Python values).

Conventions: an unresolved prediction is ``None`` and is always wrong. Percent-valued
scores (MME) say so in their name or docstring; everything else is a fraction in [0, 1].
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

# One home for these two (the alignment tax, in models/, needs them below evals/).
from ftib.models.drift import mean, percentile

__all__ = [
    "accuracy",
    "binary_metrics",
    "circular_eval",
    "grouped_accuracy",
    "lcs_length",
    "check_mme_subtasks",
    "mme_scores",
    "percentile",
    "rouge_l",
    "rule_shares",
]

#: The row index offset of MMBench's rotated copies: copy k of question i has index
#: ``i + k * CIRCULAR_OFFSET`` (VLMEvalKit's convention).
CIRCULAR_OFFSET = 1_000_000


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction of ``True``; 0.0 for an empty sequence (nothing was answered right)."""
    return sum(bool(c) for c in correct) / len(correct) if correct else 0.0


def grouped_accuracy(correct: Sequence[bool], keys: Sequence[Hashable]) -> dict[str, float]:
    """Accuracy per key, keys sorted by their string form."""
    by: dict[Hashable, list[bool]] = defaultdict(list)
    for c, k in zip(correct, keys, strict=True):
        by[k].append(bool(c))
    return {str(k): accuracy(by[k]) for k in sorted(by, key=str)}


def binary_metrics(predictions: Sequence[str | None], golds: Sequence[str],
                   positive: str = "yes") -> dict[str, float]:
    """Accuracy, precision, recall, F1 and yes-ratio of a binary task (POPE's metrics).

    Unresolved predictions (``None``) count as wrong and as not-positive: they lower
    accuracy and recall but never precision's denominator. ``yes_ratio`` is the share of
    *predictions* that are ``positive`` (over all items, unresolved included), which is
    what reveals a model's bias to say yes; it is not computed from the labels. A ratio
    with a zero denominator is 0.0 (as scikit-learn's ``zero_division=0``).

    Args:
        predictions: parsed answers, ``None`` when unresolved.
        golds: gold labels.
        positive: the positive label.

    Returns:
        ``accuracy, precision, recall, f1, yes_ratio, unparsed, unparsed_ratio, n``.
    """
    if len(predictions) != len(golds):
        raise ValueError(f"{len(predictions)} predictions for {len(golds)} golds")
    n = len(golds)
    tp = sum(p == positive and g == positive for p, g in zip(predictions, golds))
    fp = sum(p == positive and g != positive for p, g in zip(predictions, golds))
    pos_gold = sum(g == positive for g in golds)
    correct = sum(p is not None and p == g for p, g in zip(predictions, golds))
    unparsed = sum(p is None for p in predictions)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / pos_gold if pos_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": correct / n if n else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": (tp + fp) / n if n else 0.0,
        "unparsed": float(unparsed),
        "unparsed_ratio": unparsed / n if n else 0.0,
        "n": float(n),
    }


def circular_eval(indices: Sequence[int], correct: Sequence[bool],
                  categories: Mapping[str, Sequence[str]] | None = None,
                  n_options: Sequence[int] | None = None) -> dict[str, Any]:
    """MMBench CircularEval: a question counts as right only if every rotation is right.

    Groups are built from the original rows (``index < CIRCULAR_OFFSET``), each with
    the rows ``index + k * CIRCULAR_OFFSET`` (VLMEvalKit ``mcq_circular_eval`` in
    ``vlmeval/dataset/utils/multiple_choice.py``: ``g_index = index % 1e6``, groups
    only for the rows whose ``index == g_index``). Rows whose original is missing form
    no group: they are skipped and counted (``skipped_rows``, ``skipped_groups``), as
    VLMEvalKit does. Where VLMEvalKit does not look: a question with ``n`` options has
    ``n`` rotations (the original and ``n - 1`` copies); a group with fewer rows than
    that is counted wrong (``missing_rotation``), since a rotation never asked cannot
    have been answered right. Vanilla accuracy is over the original rows only.

    Chance (a uniform guesser): ``1/n`` per row for vanilla and ``(1/n)^r`` for a
    question with ``r`` rotations, averaged over the questions, so 2- and 3-option
    questions count at their own level.

    Args:
        indices: the TSV ``index`` of each row.
        correct: whether each row was answered right.
        categories: optional ``name -> per-row value`` (e.g. ``category``,
            ``l2-category``); a group takes the value of its original row.
        n_options: number of options of each row; ``None``: rotations are not checked
            and chance assumes 4 options.

    Returns:
        ``{"circular", "vanilla", "groups", "originals", "skipped_rows",
        "skipped_groups", "missing_rotation", "missing_ids", "chance_circular",
        "chance_vanilla", "per_<name>": {"circular": {...}, "vanilla": {...}}}``.
    """
    if len(indices) != len(correct):
        raise ValueError(f"{len(indices)} indices for {len(correct)} results")
    if n_options is not None and len(n_options) != len(indices):
        raise ValueError(f"{len(n_options)} option counts for {len(indices)} rows")
    idx = [int(i) for i in indices]
    rows_of: dict[int, list[int]] = defaultdict(list)
    for row, i in enumerate(idx):
        rows_of[i % CIRCULAR_OFFSET].append(row)
    head = {i: row for row, i in enumerate(idx) if i < CIRCULAR_OFFSET}
    group_ids = sorted(head)
    skipped = sorted(g for g in rows_of if g not in head)
    group_ok, missing, chance_c, chance_v = [], [], [], []
    for g in group_ids:
        rows = rows_of[g]
        n = int(n_options[head[g]]) if n_options is not None else None
        ok = all(correct[r] for r in rows)
        if n is not None and len(rows) < n:
            missing.append(g)
            ok = False
        group_ok.append(ok)
        k = n or 4
        chance_v.append(1.0 / k)
        chance_c.append((1.0 / k) ** (n if n is not None else len(rows)))
    originals = [head[g] for g in group_ids]
    out: dict[str, Any] = {
        "circular": accuracy(group_ok),
        "vanilla": accuracy([correct[r] for r in originals]),
        "groups": len(group_ids),
        "originals": len(originals),
        "skipped_groups": len(skipped),
        "skipped_rows": sum(len(rows_of[g]) for g in skipped),
        "skipped_ids": skipped[:10],
        "missing_rotation": len(missing),
        "missing_ids": missing[:10],
        "chance_circular": sum(chance_c) / len(chance_c) if chance_c else 0.0,
        "chance_vanilla": sum(chance_v) / len(chance_v) if chance_v else 0.0,
    }
    for name, values in (categories or {}).items():
        out[f"per_{name}"] = {
            "circular": grouped_accuracy(group_ok, [values[head[g]] for g in group_ids]),
            "vanilla": grouped_accuracy([correct[r] for r in originals], [values[r] for r in originals]),
        }
    return out


#: MME's two halves (Fu et al., 2023, "MME", Sec. 2), spelt as the release folders and
#: VLMEvalKit's ``MME_rating`` (``vlmeval/dataset/utils/yorn.py``) spell them:
#: perception, the ten perception subtasks; cognition, the four reasoning subtasks.
MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene",
                  "landmark", "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
#: The 14 official subtask names; any other name is an error.
MME_SUBTASKS = MME_PERCEPTION + MME_COGNITION


def check_mme_subtasks(names: Iterable[str], where: str) -> None:
    """Raise ValueError naming ``where`` and the closest official name for every
    subtask name that is not one of :data:`MME_SUBTASKS` (an extra or misspelt one
    would otherwise be added to perception and could push it above 2000)."""
    import difflib

    bad = sorted({n for n in names if n not in MME_SUBTASKS})
    if bad:
        hints = []
        for n in bad:
            close = difflib.get_close_matches(n, MME_SUBTASKS, n=1) or difflib.get_close_matches(
                n.lower(), [s.lower() for s in MME_SUBTASKS], n=1)
            hints.append(f"{n!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{where}: unknown MME subtask {', '.join(hints)}; the official 14 are "
                         f"{', '.join(MME_SUBTASKS)}")


def mme_scores(subtasks: Sequence[str], images: Sequence[str], correct: Sequence[bool],
               cognition: Iterable[str] = MME_COGNITION) -> dict[str, Any]:
    """MME scores (Fu et al., 2023): per subtask ``acc`` (per question) and ``acc_plus``
    (per image: both of its questions right), both in percent, and ``score = acc +
    acc_plus`` in [0, 200]; ``perception`` and ``cognition`` are sums of subtask scores.

    Args:
        subtasks: subtask of each question.
        images: image identifier of each question (grouped within its subtask).
        correct: whether each question was answered right.
        cognition: the subtasks that count towards the cognition total.

    Raises:
        ValueError: a subtask (or a ``cognition`` entry) is not one of the 14 official names.
    """
    if not (len(subtasks) == len(images) == len(correct)):
        raise ValueError("subtasks, images and correct must have the same length")
    cognition = set(cognition)
    check_mme_subtasks(list(subtasks) + sorted(cognition), "MME scores")
    per_q: dict[str, list[bool]] = defaultdict(list)
    per_img: dict[str, dict[str, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for s, img, c in zip(subtasks, images, correct):
        per_q[s].append(bool(c))
        per_img[s][img].append(bool(c))
    per_subtask = {}
    totals = {"perception": 0.0, "cognition": 0.0}
    for s in sorted(per_q):
        acc = 100.0 * accuracy(per_q[s])
        acc_plus = 100.0 * accuracy([all(v) for v in per_img[s].values()])
        per_subtask[s] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                          "questions": len(per_q[s]), "images": len(per_img[s])}
        totals["cognition" if s in cognition else "perception"] += acc + acc_plus
    return {"subtasks": per_subtask, **totals, "total": totals["perception"] + totals["cognition"]}


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence (O(len(a)*len(b)) time, O(len(b)) memory)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hyp: Sequence[Hashable], ref: Sequence[Hashable], beta: float = 1.0) -> dict[str, float]:
    """ROUGE-L of token sequences (Lin, 2004, Sec. 3.1): with ``l = LCS(hyp, ref)``,
    ``P = l/|hyp|``, ``R = l/|ref|``, ``F = (1+beta^2) P R / (R + beta^2 P)``.

    ``beta=1`` gives the F1 that the ``rouge-score`` package reports. Empty input on
    either side scores 0.
    """
    lcs = lcs_length(hyp, ref)
    if lcs == 0:
        return {"precision": 0.0, "recall": 0.0, "f": 0.0}
    p, r = lcs / len(hyp), lcs / len(ref)
    return {"precision": p, "recall": r, "f": (1 + beta**2) * p * r / (r + beta**2 * p)}


def rule_shares(rules: Iterable[str], order: Sequence[str] | None = None) -> dict[str, float]:
    """Share of records resolved by each extraction rule (rules that never fired are 0)."""
    rules = list(rules)
    counts: dict[str, int] = defaultdict(int)
    for r in rules:
        counts[r] += 1
    keys = list(order or []) + sorted(k for k in counts if k not in (order or []))
    return {k: counts.get(k, 0) / len(rules) if rules else 0.0 for k in keys}


def label_metrics(records: Sequence[dict[str, Any]], labels: tuple[str, str]) -> dict[str, float]:
    """Accuracy, per-label accuracy, balanced accuracy, positive ratio, unparsed ratio."""
    correct = [r["correct"] for r in records]
    per = grouped_accuracy(correct, [r["gold"] for r in records])
    out = {"accuracy": accuracy(correct)}
    for lab in labels:
        out[f"accuracy/{lab}"] = per.get(lab, 0.0)
    present = [per[lab] for lab in labels if lab in per]
    out["balanced_accuracy"] = sum(present) / len(present) if present else 0.0
    b = binary_metrics([r["parsed"] for r in records], [r["gold"] for r in records], labels[0])
    out[f"{labels[0]}_ratio"] = b["yes_ratio"]
    out["unparsed_ratio"] = b["unparsed_ratio"]
    return out
