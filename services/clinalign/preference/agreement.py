"""Inter-annotator agreement for nominal clinician labels, with missing data.

Every statistic takes a flat sequence of :class:`Label` (one item, one annotator, one value,
e.g. "A", "B" or "tie" for a pairwise comparison); an item may be labelled by any subset of
the annotators. Conventions shared by all of them:

* An annotator labels an item at most once. A second label for the same (item, annotator) is
  bad input and raises ``ValueError`` (the labelling queue never shows a task twice).
* An item is *pairable* when it has at least two labels. Only pairable items say anything
  about agreement; items with a single label are ignored by every statistic.
* A statistic that has no value on the data raises :class:`AgreementUndefinedError` (a
  ``ValueError``), which :func:`agreement_report` turns into ``None``. That happens when no
  item is pairable, when the statistic's own preconditions fail (Cohen: exactly two
  annotators sharing an item), or when every label it uses has the same value, so that the
  chance term makes the formula 0/0. Nothing here divides by zero.

References: Cohen, J. (1960), "A coefficient of agreement for nominal scales", Educational
and Psychological Measurement 20(1):37-46. Fleiss, J. L. (1971), "Measuring nominal scale
agreement among many raters", Psychological Bulletin 76(5):378-382. Krippendorff, K. (2011),
"Computing Krippendorff's Alpha-Reliability", Annenberg School for Communication, section C
("nominal data, any number of observers, missing data").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
# item_id -> annotator_id -> value
ValuesByItem = dict[str, dict[str, str]]
_Data = TypeVar("_Data")


class AgreementUndefinedError(ValueError):
    """The statistic has no value on these labels (see the module docstring)."""


@dataclass(frozen=True)
class Label:
    """One annotator's nominal label on one item."""

    item_id: str
    annotator_id: str
    value: str


@dataclass(frozen=True)
class ItemConsensus:
    """How far one item's labels agree: ``consensus`` is the share equal to ``modal_value``."""

    item_id: str
    consensus: float
    n_labels: int
    modal_value: str


@dataclass(frozen=True)
class AnnotatorAgreement:
    """One annotator's share in the agreement: ``labels`` they gave, and of the pairings of
    one of their labels with another annotator's label on the same item, the share that
    agree (``None`` when they share no item with anyone)."""

    annotator_id: str
    labels: int
    agreement: float | None


@dataclass(frozen=True)
class PositionBias:
    """Of ``labels`` choices between two responses shown side by side, the share that
    went to the one shown first (``None`` when there are none); 0.5 is no bias."""

    labels: int
    first_shown_share: float | None


@dataclass(frozen=True)
class AgreementReport:
    """Every statistic that is defined on a set of labels; ``None`` where one is not.

    ``pairable_items`` entered the raw agreement and alpha; ``fleiss_items`` (those with the
    modal number of labels) entered Fleiss' kappa.
    """

    items: int
    annotators: int
    raw_agreement: float | None
    cohen_kappa: float | None
    fleiss_kappa: float | None
    krippendorff_alpha: float | None
    pairable_items: int
    fleiss_items: int


# -- grouping ------------------------------------------------------------------------------


def _group_by_item(labels: Iterable[Label]) -> ValuesByItem:
    by_item: ValuesByItem = {}
    for label in labels:
        item_values = by_item.setdefault(label.item_id, {})
        if label.annotator_id in item_values:
            raise ValueError(
                f"annotator {label.annotator_id!r} labelled item {label.item_id!r} more than once"
            )
        item_values[label.annotator_id] = label.value
    return by_item


def _pairable_counts(by_item: Mapping[str, Mapping[str, str]]) -> IntArray:
    """u_c_counts[u, c]: labels of value c on pairable item u; shape (pairable items, values).

    Rows follow item id order, columns sorted value order.
    """
    pairable = [by_item[item_id] for item_id in sorted(by_item) if len(by_item[item_id]) >= 2]
    values = sorted({value for item_values in pairable for value in item_values.values()})
    value_index = {value: c for c, value in enumerate(values)}
    flat_index = [
        u * len(values) + value_index[value]
        for u, item_values in enumerate(pairable)
        for value in item_values.values()
    ]
    counts = np.bincount(
        np.asarray(flat_index, dtype=np.int64), minlength=len(pairable) * len(values)
    )
    return counts.astype(np.int64).reshape(len(pairable), len(values))


def _require_pairable(u_c_counts: IntArray) -> None:
    if u_c_counts.shape[0] == 0:
        raise AgreementUndefinedError("no item has two or more labels")


def _require_two_values(value_totals: IntArray) -> None:
    if np.count_nonzero(value_totals) < 2:
        raise AgreementUndefinedError(
            "every label has the same value, so chance agreement is 1 and the statistic is 0/0"
        )


# -- statistics on grouped labels ------------------------------------------------------------


def _raw_agreement(u_c_counts: IntArray) -> float:
    _require_pairable(u_c_counts)
    u_m = u_c_counts.sum(axis=1)  # labels on item u
    # Pairs are pooled: agreeing pairs over all pairs, so an item with m labels weighs
    # m(m-1)/2. (The factor 1/2 cancels.) With a constant m this equals Fleiss' P-bar.
    agreeing_pairs = int((u_c_counts * (u_c_counts - 1)).sum())
    all_pairs = int((u_m * (u_m - 1)).sum())
    return agreeing_pairs / all_pairs


def _cohen_kappa(by_item: Mapping[str, Mapping[str, str]]) -> float:
    annotators = sorted(
        {annotator for item_values in by_item.values() for annotator in item_values}
    )
    if len(annotators) != 2:
        raise AgreementUndefinedError(
            f"Cohen's kappa needs exactly two annotators, got {len(annotators)}"
        )
    first, second = annotators
    shared = [
        (item_values[first], item_values[second])
        for item_values in by_item.values()
        if len(item_values) == 2
    ]
    if not shared:
        raise AgreementUndefinedError("the two annotators share no item")
    n_shared = len(shared)
    agreeing = sum(first_value == second_value for first_value, second_value in shared)
    first_totals = Counter(first_value for first_value, _ in shared)
    second_totals = Counter(second_value for _, second_value in shared)
    # N^2 * p_c: chance agreement from each annotator's own marginals (Cohen 1960).
    chance_pairs = sum(first_totals[value] * second_totals[value] for value in first_totals)
    if chance_pairs == n_shared**2:
        raise AgreementUndefinedError("both annotators gave every shared item the same value")
    # Cohen (1960) Eq. 1, kappa = (p_o - p_c) / (1 - p_c), with p_o = agreeing / N and
    # p_c = chance_pairs / N^2; numerator and denominator multiplied by N^2 to stay exact.
    return (n_shared * agreeing - chance_pairs) / (n_shared**2 - chance_pairs)


def _fleiss_rows(u_c_counts: IntArray) -> IntArray:
    """Rows of the pairable items that carry the modal number of labels.

    Fleiss (1971) assumes n raters on every subject, so the other items are dropped. When two
    label counts are equally common the larger wins (more pairs per item).
    """
    u_m = u_c_counts.sum(axis=1)
    label_counts, frequency = np.unique(u_m, return_counts=True)
    n_raters = label_counts[frequency == frequency.max()].max()
    return u_c_counts[u_m == n_raters]


def _fleiss_kappa(u_c_counts: IntArray) -> float:
    _require_pairable(u_c_counts)
    i_j_counts = _fleiss_rows(u_c_counts)  # Fleiss' n_ij: subject i, category j
    n_subjects, n_raters = i_j_counts.shape[0], int(i_j_counts[0].sum())
    j_totals = i_j_counts.sum(axis=0)
    _require_two_values(j_totals)
    j_share = j_totals / (n_subjects * n_raters)  # p_j, Fleiss (1971) Eq. 1
    # P_i, Eq. 2: agreeing ordered rater pairs on subject i over all n(n-1) of them.
    i_agreement = (i_j_counts * (i_j_counts - 1)).sum(axis=1) / (n_raters * (n_raters - 1))
    mean_agreement = float(i_agreement.mean())  # P-bar
    chance_agreement = float((j_share**2).sum())  # P-bar_e, Eq. 5
    # kappa = (P-bar - P-bar_e) / (1 - P-bar_e); P-bar_e < 1 because two categories occur.
    return (mean_agreement - chance_agreement) / (1.0 - chance_agreement)


def _krippendorff_alpha_nominal(u_c_counts: IntArray) -> float:
    _require_pairable(u_c_counts)
    c_n = u_c_counts.sum(axis=0)  # n_c: pairable values c, the coincidence matrix's margins
    _require_two_values(c_n)
    u_m = u_c_counts.sum(axis=1)  # m_u: values in unit u
    # Diagonal of the coincidence matrix, o_cc = sum_u n_uc (n_uc - 1) / (m_u - 1)
    # (Krippendorff 2011, section C: each unit contributes its pairs weighted 1 / (m_u - 1)).
    o_diagonal_sum = float(((u_c_counts * (u_c_counts - 1)).sum(axis=1) / (u_m - 1)).sum())
    n_values = int(c_n.sum())  # n..
    expected_same = int((c_n * (c_n - 1)).sum())
    # alpha_nominal = [(n.. - 1) sum_c o_cc - sum_c n_c (n_c - 1)]
    #               / [n.. (n.. - 1) - sum_c n_c (n_c - 1)]          (2011, section C)
    # The denominator is positive because at least two values occur.
    return ((n_values - 1) * o_diagonal_sum - expected_same) / (
        n_values * (n_values - 1) - expected_same
    )


def _consensus(item_id: str, values: Iterable[str]) -> ItemConsensus:
    value_counts = Counter(values)
    # Ties between equally common values go to the smallest, so the result is deterministic.
    modal_value = min(value_counts, key=lambda value: (-value_counts[value], value))
    n_labels = sum(value_counts.values())
    return ItemConsensus(item_id, value_counts[modal_value] / n_labels, n_labels, modal_value)


def _or_none(statistic: Callable[[_Data], float], data: _Data) -> float | None:
    try:
        return statistic(data)
    except AgreementUndefinedError:
        return None


# -- public API ------------------------------------------------------------------------------


def raw_pairwise_agreement(labels: Sequence[Label]) -> float:
    """Share of agreeing annotator pairs, pooled over every item with two or more labels."""
    return _raw_agreement(_pairable_counts(_group_by_item(labels)))


def cohen_kappa(labels: Sequence[Label]) -> float:
    """Cohen's kappa over the items both of exactly two annotators labelled.

    Items labelled by only one of them are ignored. Raises :class:`AgreementUndefinedError`
    for any other number of annotators, no shared item, or both annotators using one value.
    """
    return _cohen_kappa(_group_by_item(labels))


def fleiss_kappa(labels: Sequence[Label]) -> float:
    """Fleiss' kappa over the items that carry the modal number of labels.

    Fleiss (1971) needs the same number of raters on every item, so items with any other
    number of labels are dropped; when two label counts are equally common the larger wins.
    ``AgreementReport.fleiss_items`` says how many items were kept.
    """
    return _fleiss_kappa(_pairable_counts(_group_by_item(labels)))


def krippendorff_alpha_nominal(labels: Sequence[Label]) -> float:
    """Krippendorff's alpha for nominal values, missing labels allowed."""
    return _krippendorff_alpha_nominal(_pairable_counts(_group_by_item(labels)))


def item_consensus(labels: Sequence[Label]) -> list[ItemConsensus]:
    """Consensus of every item (single-label items included, at 1.0), in item id order."""
    by_item = _group_by_item(labels)
    return [_consensus(item_id, by_item[item_id].values()) for item_id in sorted(by_item)]


def low_consensus(labels: Sequence[Label], threshold: float) -> list[ItemConsensus]:
    """Items whose consensus is strictly below ``threshold``, lowest first, then by item id."""
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    below = [entry for entry in item_consensus(labels) if entry.consensus < threshold]
    return sorted(below, key=lambda entry: (entry.consensus, entry.item_id))


def agreement_report(labels: Sequence[Label]) -> AgreementReport:
    """Every statistic on ``labels``, ``None`` where it is undefined."""
    by_item = _group_by_item(labels)
    u_c_counts = _pairable_counts(by_item)
    pairable_items = u_c_counts.shape[0]
    return AgreementReport(
        items=len(by_item),
        annotators=len({label.annotator_id for label in labels}),
        raw_agreement=_or_none(_raw_agreement, u_c_counts),
        cohen_kappa=_or_none(_cohen_kappa, by_item),
        fleiss_kappa=_or_none(_fleiss_kappa, u_c_counts),
        krippendorff_alpha=_or_none(_krippendorff_alpha_nominal, u_c_counts),
        pairable_items=pairable_items,
        fleiss_items=_fleiss_rows(u_c_counts).shape[0] if pairable_items else 0,
    )


def annotator_agreement(labels: Sequence[Label]) -> list[AnnotatorAgreement]:
    """Every annotator's labels and pairwise agreement with the others, by annotator id.

    An annotator's pairings are (their label, another annotator's label) on an item both
    labelled: on an item with m labels each annotator has m - 1. Pooled over the items as
    in :func:`raw_pairwise_agreement`, whose pairs these are, each seen from both ends.
    """
    by_item = _group_by_item(labels)
    given: Counter[str] = Counter()
    pairings: Counter[str] = Counter()
    agreeing: Counter[str] = Counter()
    for item_values in by_item.values():
        value_counts = Counter(item_values.values())
        for annotator, value in item_values.items():
            given[annotator] += 1
            pairings[annotator] += len(item_values) - 1
            agreeing[annotator] += value_counts[value] - 1  # the others with the same value
    return [
        AnnotatorAgreement(
            annotator,
            given[annotator],
            agreeing[annotator] / pairings[annotator] if pairings[annotator] else None,
        )
        for annotator in sorted(given)
    ]


def position_bias(chose_first_shown: Sequence[bool]) -> PositionBias:
    """How often a two-response choice went to the response shown first: one entry per
    non-tie label whose presented order is known, ``True`` when it chose the first."""
    n = len(chose_first_shown)
    return PositionBias(n, sum(chose_first_shown) / n if n else None)
