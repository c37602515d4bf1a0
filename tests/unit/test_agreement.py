"""Agreement statistics: published values, hand-computed values, a plain reference, edge cases."""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from clinalign.preference.agreement import (
    AgreementUndefinedError,
    AnnotatorAgreement,
    ItemConsensus,
    Label,
    PositionBias,
    agreement_report,
    annotator_agreement,
    cohen_kappa,
    fleiss_kappa,
    item_consensus,
    krippendorff_alpha_nominal,
    low_consensus,
    position_bias,
    raw_pairwise_agreement,
)


def labels_from_rows(rows: Mapping[str, Sequence[str | None]]) -> list[Label]:
    """One row per annotator, one column per item (``None``: not labelled)."""
    return [
        Label(item_id=f"u{u + 1:02d}", annotator_id=annotator, value=value)
        for annotator, row in rows.items()
        for u, value in enumerate(row)
        if value is not None
    ]


def labels_from_counts(counts: Sequence[Sequence[int]]) -> list[Label]:
    """Fleiss' layout: counts[i][j] raters put subject i in category j (raters differ)."""
    labels = []
    for i, row in enumerate(counts):
        values = [str(j + 1) for j, n in enumerate(row) for _ in range(n)]
        labels += [Label(f"s{i:02d}", f"r{r:02d}", value) for r, value in enumerate(values)]
    return labels


# -- published and hand-computed values ------------------------------------------------------

# Wikipedia, "Fleiss' kappa", worked example: 10 subjects, 14 raters, 5 categories.
# The article gives P-bar = 0.378, P-bar_e = 0.213 and kappa = 0.210 (three decimals).
FLEISS_WIKIPEDIA = [
    [0, 0, 0, 0, 14],
    [0, 2, 6, 4, 2],
    [0, 0, 3, 5, 6],
    [0, 3, 9, 2, 0],
    [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0],
    [3, 2, 6, 3, 0],
    [2, 5, 3, 2, 2],
    [6, 5, 2, 1, 0],
    [0, 2, 2, 3, 7],
]


def test_fleiss_kappa_matches_the_wikipedia_worked_example() -> None:
    labels = labels_from_counts(FLEISS_WIKIPEDIA)
    assert fleiss_kappa(labels) == pytest.approx(0.210, abs=5e-4)
    # With a constant number of raters the pooled raw agreement is Fleiss' P-bar.
    assert raw_pairwise_agreement(labels) == pytest.approx(0.378, abs=5e-4)


def test_alpha_and_fleiss_kappa_differ_only_by_the_small_sample_factor_on_complete_data() -> None:
    # With no missing data D_o = 1 - P-bar and D_e = (1 - P-bar_e) n / (n - 1) for n values,
    # so 1 - alpha = (1 - kappa) (n - 1) / n; here n = 10 * 14 = 140.
    labels = labels_from_counts(FLEISS_WIKIPEDIA)
    kappa = fleiss_kappa(labels)
    assert 1 - krippendorff_alpha_nominal(labels) == pytest.approx((1 - kappa) * 139 / 140)


# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section C: nominal data,
# 4 observers, 12 units, missing values. The paper reports alpha = 0.743. Layout as in the
# "C" data of R DescTools::KrippAlpha; unit 12 has a single value and cannot be paired.
KRIPPENDORFF_C = {
    "A": ["1", "2", "3", "3", "2", "1", "4", "1", "2", None, None, None],
    "B": ["1", "2", "3", "3", "2", "2", "4", "1", "2", "5", None, None],
    "C": [None, "3", "3", "3", "2", "3", "4", "2", "2", "5", "1", "3"],
    "D": ["1", "2", "3", "3", "2", "4", "4", "1", "2", "5", "1", None],
}


def test_krippendorff_alpha_matches_the_2011_paper_example_with_missing_data() -> None:
    # By hand over the 11 pairable units: n.. = 40; n_c = 9, 13, 10, 5, 3 for values 1..5;
    # sum_c o_cc = 3+2+4+4+4+0+4+2+4+3+2 = 32 (units 1..11); sum_c n_c(n_c-1) = 344.
    # alpha = (39 * 32 - 344) / (40 * 39 - 344) = 904 / 1216 = 113 / 152 = 0.7434...
    labels = labels_from_rows(KRIPPENDORFF_C)
    alpha = krippendorff_alpha_nominal(labels)
    assert alpha == pytest.approx(0.743, abs=5e-4)
    assert alpha == pytest.approx(113 / 152)


def test_report_on_the_krippendorff_example_pins_raw_agreement_and_the_fleiss_subset() -> None:
    report = agreement_report(labels_from_rows(KRIPPENDORFF_C))
    # Raw: pairs 3 (unit 1) + 8 x 6 (units 2..9) + 3 + 1 = 55;
    # agreeing 3+3+6+6+6+0+6+3+6+3+1 = 43.
    assert report.raw_agreement == pytest.approx(43 / 55)
    # Fleiss keeps the 8 units with the modal 4 labels (2..9). Category totals 4, 13, 10, 5;
    # P_i = .5, 1, 1, 1, 0, 1, .5, 1 so P-bar = 0.75; P-bar_e = (16+169+100+25)/1024 = 310/1024;
    # kappa = (768 - 310) / (1024 - 310) = 458 / 714 = 229 / 357.
    assert report.fleiss_kappa == pytest.approx(229 / 357)
    assert report.krippendorff_alpha == pytest.approx(113 / 152)
    assert report.cohen_kappa is None  # four annotators
    assert (report.items, report.annotators, report.pairable_items, report.fleiss_items) == (
        12,
        4,
        11,
        8,
    )


def test_cohen_kappa_by_hand_on_pairwise_comparison_labels() -> None:
    # Rows ann-1, columns ann-2 over 10 shared items:
    #          A  B  tie | ann-1 total
    #   A      4  1  0   | 5
    #   B      0  3  1   | 4
    #   tie    0  0  1   | 1
    #   ann-2  4  4  2
    # p_o = 8/10; p_c = (5*4 + 4*4 + 1*2)/100 = 0.38; kappa = 0.42/0.62 = 21/31 = 0.677...
    first = ["A"] * 5 + ["B"] * 4 + ["tie"]
    second = ["A"] * 4 + ["B"] + ["B"] * 3 + ["tie"] + ["tie"]
    # A twelfth item only ann-1 labelled is not shared and must not count.
    labels = labels_from_rows({"ann-1": [*first, "A"], "ann-2": [*second, None]})
    assert cohen_kappa(labels) == pytest.approx(21 / 31)


def test_cohen_kappa_matches_the_wikipedia_example() -> None:
    # Wikipedia, "Cohen's kappa": 50 proposals; both yes 20, both no 15, 5 and 10 split.
    # p_o = 0.7, p_e = 0.5 * 0.6 + 0.5 * 0.4 = 0.5, kappa = 0.4.
    reader_a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    reader_b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(labels_from_rows({"a": reader_a, "b": reader_b})) == pytest.approx(0.4)


def test_cohen_kappa_is_zero_when_two_constant_annotators_always_disagree() -> None:
    # p_o = 0 and p_c = 0 (their marginals never meet), so kappa = 0, not undefined.
    labels = labels_from_rows({"a": ["A"] * 3, "b": ["B"] * 3})
    assert cohen_kappa(labels) == 0.0


def test_fleiss_uses_the_larger_label_count_when_two_are_equally_common() -> None:
    rows: dict[str, list[str | None]] = {
        "a": ["A", "A", "A", "B"],
        "b": ["A", "B", "A", "B"],
        "c": [None, None, "A", "A"],
    }
    # Items u01, u02 have 2 labels, u03, u04 have 3: Fleiss keeps u03 and u04.
    # Totals A 4, B 2 of 6; P_i = 1, 1/3; P-bar = 2/3; P-bar_e = 20/36; kappa = (24-20)/(36-20).
    report = agreement_report(labels_from_rows(rows))
    assert report.fleiss_items == 2
    assert report.fleiss_kappa == pytest.approx(1 / 4)


# -- reference implementation on random data -------------------------------------------------


def reference_raw_agreement(labels: Sequence[Label]) -> float:
    by_item = defaultdict(list)
    for label in labels:
        by_item[label.item_id].append(label.value)
    pairs = [pair for values in by_item.values() for pair in itertools.combinations(values, 2)]
    return sum(a == b for a, b in pairs) / len(pairs)


def reference_cohen_kappa(labels: Sequence[Label]) -> float:
    by_item: dict[str, dict[str, str]] = defaultdict(dict)
    for label in labels:
        by_item[label.item_id][label.annotator_id] = label.value
    shared = [sorted(values.items()) for values in by_item.values() if len(values) == 2]
    pairs = [(first[1], second[1]) for first, second in shared]
    p_o = sum(a == b for a, b in pairs) / len(pairs)
    a_share = Counter(a for a, _ in pairs)
    b_share = Counter(b for _, b in pairs)
    p_e = sum(a_share[v] / len(pairs) * b_share[v] / len(pairs) for v in a_share)
    return (p_o - p_e) / (1 - p_e)


def reference_fleiss_kappa(labels: Sequence[Label]) -> float:
    by_item = defaultdict(list)
    for label in labels:
        by_item[label.item_id].append(label.value)
    frequency = Counter(len(values) for values in by_item.values() if len(values) >= 2)
    n = max(frequency, key=lambda m: (frequency[m], m))
    subjects = [values for values in by_item.values() if len(values) == n]
    categories = sorted({value for values in subjects for value in values})
    p_j = [sum(values.count(c) for values in subjects) / (len(subjects) * n) for c in categories]
    p_i = [sum(values.count(c) * (values.count(c) - 1) for c in categories) for values in subjects]
    p_bar = sum(p_i) / (len(subjects) * n * (n - 1))
    p_e = sum(p * p for p in p_j)
    return (p_bar - p_e) / (1 - p_e)


def reference_krippendorff_alpha(labels: Sequence[Label]) -> float:
    # Krippendorff (2011): the full coincidence matrix from every ordered pair of values in a
    # unit weighted 1 / (m_u - 1), then alpha = 1 - D_o / D_e with the nominal metric.
    by_item = defaultdict(list)
    for label in labels:
        by_item[label.item_id].append(label.value)
    coincidences: defaultdict[tuple[str, str], float] = defaultdict(float)
    for values in by_item.values():
        if len(values) < 2:
            continue
        for i, j in itertools.permutations(range(len(values)), 2):
            coincidences[values[i], values[j]] += 1 / (len(values) - 1)
    n_c: defaultdict[str, float] = defaultdict(float)
    for (c, _), weight in coincidences.items():
        n_c[c] += weight
    n = sum(n_c.values())
    observed = sum(w for (c, k), w in coincidences.items() if c != k) / n
    expected = sum(n_c[c] * n_c[k] for c in n_c for k in n_c if c != k) / (n * (n - 1))
    return 1 - observed / expected


def random_labels(seed: int, n_annotators: int, coverage: float) -> list[Label]:
    """Items with a hidden true value; each annotator labels with probability ``coverage``
    and then gives the true value 70% of the time."""
    rng = np.random.default_rng(seed)
    values = np.array(["A", "B", "tie"])
    labels = []
    for item in range(40):
        truth = rng.choice(values)
        for annotator in range(n_annotators):
            if rng.random() < coverage:
                value = truth if rng.random() < 0.7 else rng.choice(values)
                labels.append(Label(f"item-{item}", f"ann-{annotator}", str(value)))
    return labels


@pytest.mark.parametrize("seed", range(8))
def test_statistics_agree_with_the_plain_reference_on_random_missing_data(seed: int) -> None:
    labels = random_labels(seed, n_annotators=6, coverage=0.5)
    assert raw_pairwise_agreement(labels) == pytest.approx(reference_raw_agreement(labels))
    assert fleiss_kappa(labels) == pytest.approx(reference_fleiss_kappa(labels))
    assert krippendorff_alpha_nominal(labels) == pytest.approx(reference_krippendorff_alpha(labels))


@pytest.mark.parametrize("seed", range(8))
def test_cohen_kappa_agrees_with_the_plain_reference_on_random_data(seed: int) -> None:
    labels = random_labels(100 + seed, n_annotators=2, coverage=0.8)
    assert cohen_kappa(labels) == pytest.approx(reference_cohen_kappa(labels))


@pytest.mark.parametrize("seed", range(4))
def test_alpha_fleiss_identity_holds_on_random_complete_data(seed: int) -> None:
    labels = random_labels(200 + seed, n_annotators=5, coverage=1.0)
    n_values = len(labels)
    expected = 1 - (1 - fleiss_kappa(labels)) * (n_values - 1) / n_values
    assert krippendorff_alpha_nominal(labels) == pytest.approx(expected)


# -- perfect agreement and degenerate cases --------------------------------------------------


def test_perfect_agreement_gives_one_everywhere() -> None:
    rows = {"a": ["A", "B", "tie", "A"], "b": ["A", "B", "tie", "A"]}
    report = agreement_report(labels_from_rows(rows))
    assert report.raw_agreement == 1.0
    assert report.cohen_kappa == pytest.approx(1.0)
    assert report.fleiss_kappa == pytest.approx(1.0)
    assert report.krippendorff_alpha == pytest.approx(1.0)


def test_identical_labels_leave_chance_corrected_statistics_undefined() -> None:
    labels = labels_from_rows({"a": ["A"] * 3, "b": ["A"] * 3})
    report = agreement_report(labels)
    assert report.raw_agreement == 1.0
    assert (report.cohen_kappa, report.fleiss_kappa, report.krippendorff_alpha) == (None,) * 3
    with pytest.raises(AgreementUndefinedError, match="every label has the same value"):
        krippendorff_alpha_nominal(labels)
    with pytest.raises(AgreementUndefinedError, match="every label has the same value"):
        fleiss_kappa(labels)
    with pytest.raises(AgreementUndefinedError, match="same value"):
        cohen_kappa(labels)


@pytest.mark.parametrize(
    "labels",
    [[], [Label("x", "a", "A"), Label("y", "b", "B")]],
    ids=["no labels", "single-label items only"],
)
def test_nothing_pairable_leaves_every_statistic_undefined(labels: list[Label]) -> None:
    report = agreement_report(labels)
    assert report.pairable_items == report.fleiss_items == 0
    assert report.raw_agreement is None
    assert report.cohen_kappa is None
    assert report.fleiss_kappa is None
    assert report.krippendorff_alpha is None
    for statistic in (raw_pairwise_agreement, fleiss_kappa, krippendorff_alpha_nominal):
        with pytest.raises(AgreementUndefinedError, match="no item has two or more labels"):
            statistic(labels)


def test_cohen_kappa_needs_exactly_two_annotators_who_share_an_item() -> None:
    three = labels_from_rows({"a": ["A", "B"], "b": ["A", "B"], "c": ["A", "A"]})
    with pytest.raises(AgreementUndefinedError, match="exactly two annotators, got 3"):
        cohen_kappa(three)
    disjoint = labels_from_rows({"a": ["A", None], "b": [None, "B"]})
    with pytest.raises(AgreementUndefinedError, match="share no item"):
        cohen_kappa(disjoint)


def test_a_second_label_by_the_same_annotator_is_rejected() -> None:
    labels = [Label("x", "a", "A"), Label("x", "b", "A"), Label("x", "a", "B")]
    with pytest.raises(ValueError, match="annotator 'a' labelled item 'x' more than once"):
        agreement_report(labels)


# -- consensus and the adjudication list -----------------------------------------------------


def test_item_consensus_reports_the_modal_value_and_its_share() -> None:
    labels = labels_from_rows(
        {
            "a": ["A", "B", "tie", "A"],
            "b": ["A", "A", "B", None],
            "c": ["A", "B", None, None],
        }
    )
    assert item_consensus(labels) == [
        ItemConsensus("u01", 1.0, 3, "A"),
        ItemConsensus("u02", 2 / 3, 3, "B"),
        ItemConsensus("u03", 0.5, 2, "B"),  # a 1-1 tie goes to the smaller value
        ItemConsensus("u04", 1.0, 1, "A"),
    ]


def test_low_consensus_lists_items_lowest_first_then_by_item_id() -> None:
    labels = labels_from_rows(
        {
            "a": ["A", "A", "A", "A", "A", "A"],
            "b": ["B", "A", "B", "A", "A", "B"],
            "c": ["tie", "A", "A", "B", "A", "tie"],
            "d": ["A", "A", "B", "B", "A", "B"],
        }
    )
    # Consensus (modal share of 4): u01 0.5, u02 1, u03 0.5, u04 0.5, u05 1, u06 0.5.
    # Strictly below 0.75: the four items at 0.5, in item id order.
    flagged = low_consensus(labels, threshold=0.75)
    assert [entry.item_id for entry in flagged] == ["u01", "u03", "u04", "u06"]
    assert low_consensus(labels, threshold=0.5) == []  # strictly below the threshold


def test_low_consensus_orders_by_consensus_before_item_id() -> None:
    labels = labels_from_rows(
        {
            "a": ["A", "A", "A"],
            "b": ["A", "B", "B"],
            "c": ["B", "tie", "A"],
        }
    )
    # u01 2/3 (A), u02 1/3 (A, B, tie), u03 2/3 (A).
    flagged = low_consensus(labels, threshold=1.0)
    assert [(entry.item_id, entry.consensus) for entry in flagged] == [
        ("u02", pytest.approx(1 / 3)),
        ("u01", pytest.approx(2 / 3)),
        ("u03", pytest.approx(2 / 3)),
    ]


@pytest.mark.parametrize("threshold", [-0.1, 1.5])
def test_low_consensus_rejects_a_threshold_outside_zero_to_one(threshold: float) -> None:
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        low_consensus([], threshold)


# -- per annotator and position bias ---------------------------------------------------------


def test_annotator_agreement_by_hand() -> None:
    """u1: a=A b=A c=B; u2: a=A b=B; u3: a=B alone; u4: b=A c=A; u5: d=A alone.

    a: pairings u1 (b agrees, c not) and u2 (b not): 1 of 3. b: u1 (a yes, c no), u2 (a
    no), u4 (c yes): 2 of 4. c: u1 (a no, b no), u4 (b yes): 1 of 3. d shares nothing.
    """
    labels = labels_from_rows(
        {
            "a": ["A", "A", "B", None, None],
            "b": ["A", "B", None, "A", None],
            "c": ["B", None, None, "A", None],
            "d": [None, None, None, None, "A"],
        }
    )
    assert annotator_agreement(labels) == [
        AnnotatorAgreement("a", 3, pytest.approx(1 / 3)),
        AnnotatorAgreement("b", 3, 0.5),
        AnnotatorAgreement("c", 2, pytest.approx(1 / 3)),
        AnnotatorAgreement("d", 1, None),
    ]
    assert annotator_agreement([]) == []


@pytest.mark.parametrize("seed", range(5))
def test_annotator_agreement_agrees_with_a_plain_loop_and_pools_to_raw_agreement(
    seed: int,
) -> None:
    labels = random_labels(seed, n_annotators=4, coverage=0.6)
    pairings: Counter[str] = Counter()
    agreeing: Counter[str] = Counter()
    for x, y in itertools.permutations(labels, 2):
        if x.item_id == y.item_id:
            pairings[x.annotator_id] += 1
            agreeing[x.annotator_id] += x.value == y.value
    rows = annotator_agreement(labels)
    assert [r.annotator_id for r in rows] == sorted({x.annotator_id for x in labels})
    for r in rows:
        assert r.labels == sum(x.annotator_id == r.annotator_id for x in labels)
        expected = agreeing[r.annotator_id] / pairings[r.annotator_id]
        assert r.agreement == pytest.approx(expected)
    # Each pair is seen from both of its ends, so pooled they are the raw agreement.
    pooled = sum(agreeing.values()) / sum(pairings.values())
    assert pooled == pytest.approx(raw_pairwise_agreement(labels))


def test_position_bias_is_the_share_that_chose_the_first_shown() -> None:
    assert position_bias([True, True, False, True]) == PositionBias(4, 0.75)
    assert position_bias([False]) == PositionBias(1, 0.0)
    assert position_bias([]) == PositionBias(0, None)
