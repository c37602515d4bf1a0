"""Quantities with units in free text: numbers, units, conversions, and how each is read."""

from __future__ import annotations

import pytest

from clinalign.common.clinical_rules.quantities import (
    format_amount,
    number_value,
    parse_quantities,
)


def amounts(text: str) -> list[tuple[float, str]]:
    return [(round(q.amount, 6), q.unit) for q in parse_quantities(text)]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Take 400 mg.", [(400.0, "mg")]),
        ("Take 400mg.", [(400.0, "mg")]),
        ("Take 1,000 mg.", [(1000.0, "mg")]),
        ("Take 1 g.", [(1000.0, "mg")]),
        ("Take 2.5 mg.", [(2.5, "mg")]),
        ("Take 0.5 ml.", [(0.5, "ml")]),
        ("Take .5 mg.", [(0.5, "mg")]),
        ("Take 500 micrograms.", [(0.5, "mg")]),
        ("Take 500 mcg.", [(0.5, "mg")]),
        ("Take 500 µg.", [(0.5, "mg")]),
        ("Take two milligrams.", [(2.0, "mg")]),
        ("Take fifteen millilitres.", [(15.0, "ml")]),
        ("Take two hundred and fifty mg.", [(250.0, "mg")]),
        ("Use two puffs.", [(2.0, "puff")]),
        ("Use a puff.", [(1.0, "puff")]),
        ("Take half a tablet.", [(0.5, "tablet")]),
        ("Take one and a half tablets.", [(1.5, "tablet")]),
        ("Chew 2 chewable tablets.", [(2.0, "tablet")]),
        ("Take 1,000 units.", [(1000.0, "unit")]),
        ("Take 1,000 IU.", [(1000.0, "unit")]),
        ("Apply four applications.", [(4.0, "application")]),
    ],
)
def test_numbers_and_units_are_read_and_converted(text: str, expected: list) -> None:
    assert amounts(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Take 500 every 4 hours.",  # a number without a unit
        "It lasts 5 days; wait 24 hours.",  # time is not a dose unit
        "Drink 1 litre of water.",  # litres: a unit no formulary entry is written in
        "Weigh yourself: under 50 kg.",
        "Take 1,5 mg.",  # a decimal comma is ambiguous: not read as 5 mg
        "Use clotrimazole 1% cream.",
        "a day, a unit of blood",  # "a" is one only before a counted unit
    ],
)
def test_text_without_a_dose_unit_yields_no_quantity(text: str) -> None:
    assert parse_quantities(text) == []


def test_composite_phrases_are_multiplied_out() -> None:
    assert amounts("Take two 500 mg tablets.") == [(1000.0, "mg"), (2.0, "tablet")]
    assert amounts("Take 2 x 500 mg.") == [(1000.0, "mg")]
    assert amounts("Take 2x500mg.") == [(1000.0, "mg")]
    assert amounts("Use 2 puffs of 100 micrograms.") == [(2.0, "puff"), (0.2, "mg")]
    assert amounts("one 3.5 g sachet stirred into water") == [(3500.0, "mg"), (1.0, "sachet")]


@pytest.mark.parametrize(
    ("text", "role"),
    [
        ("1 to 2 puffs (100 micrograms per puff)", ["dose", "strength"]),
        ("a liquid of 10 mg/5 ml", ["strength"]),  # "/5 ml" is no quantity of its own
        ("a liquid with 250 mg in 5 ml", ["strength", "strength"]),
        ("one sachet dissolved in 200 ml of water", ["dose", "diluent"]),
        ("Do not take more than 4 g in 24 hours.", ["limit"]),
        ("The maximum is 4 g.", ["limit"]),
        ("The most you can take in 24 hours is 4 g.", ["limit"]),
        ("Up to a maximum of 4 g in 24 hours.", ["limit"]),
        ("Do not take 2 g at once.", ["warning"]),
        ("Taking 8 g can damage your liver.", ["warning"]),
        ("Take 1 g.", ["dose"]),
    ],
)
def test_each_quantity_is_read_as_dose_limit_strength_diluent_or_warning(
    text: str, role: list[str]
) -> None:
    assert [q.role for q in parse_quantities(text)] == role


@pytest.mark.parametrize(
    ("text", "period", "times"),
    [
        ("4 g in 24 hours", "24 hours", None),
        ("4 sprays into each nostril in 24 hours", "24 hours", None),
        ("75 mg a day", "24 hours", None),
        ("2,000 mg daily", "24 hours", None),
        ("6 mg per course", "course", None),
        ("70 mg a week", "week", None),
        ("2 puffs at a time", "dose", None),
        ("400 mg three times a day", None, 3.0),
        ("200 mg once or twice a day", None, 2.0),
        ("500 micrograms two to four times a day", None, 4.0),
        ("400 mg with food 3 times daily", None, 3.0),
        ("1 g every 4 to 6 hours", None, None),  # an interval does not bound the doses a day
        ("200 mg on the first day, then 100 mg", None, None),
    ],
)
def test_the_period_and_frequency_of_a_quantity(
    text: str, period: str | None, times: float | None
) -> None:
    first = parse_quantities(text)[0]
    assert (first.period, first.times_a_day) == (period, times)


def test_a_dose_with_a_frequency_implies_an_amount_a_day() -> None:
    (q,) = parse_quantities("Take 400 mg four times a day.")
    assert q.daily_amount == 1600.0


def test_number_values_and_formatting() -> None:
    assert number_value("1,000") == 1000.0
    assert number_value("twenty-four") == 24.0
    assert number_value("one thousand") == 1000.0
    assert number_value("half a") == 0.5
    assert format_amount(1200.0, "mg") == "1,200 mg"
    assert format_amount(4000.0, "mg") == "4 g"
    assert format_amount(0.2, "mg") == "200 micrograms"
    assert format_amount(1.0, "puff") == "1 puff"
    assert format_amount(8.0, "puff") == "8 puffs"
