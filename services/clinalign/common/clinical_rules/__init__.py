"""Clinical rule checks: dose limits, contraindications and allergy conflicts.

A library both the promotion gate and training use, reading its facts from a formulary
data file (``data/formulary.json``, generated from the corpus's synthetic medicines table
by ``python -m clinalign.foundation.formulary``, each entry with its source and units):

    >>> from clinalign.common.clinical_rules import check, rule_reward
    >>> [v.detail for v in check("What dose of ibuprofen can I take?", "Take 1000 mg.")]
    ["1,000 mg in one dose is above ibuprofen's single-dose maximum of 400 mg"]
    >>> rule_reward("What dose of ibuprofen can I take?", "Take 1000 mg.")
    0.0

`check` returns `Violation`s (rule, medicine, severity, detail with figures and units, the
response text it rests on); `ERROR_CATEGORY` and `CRITERION` map each rule to the clinical
error taxonomy and to the safety criterion it bears on; `rule_reward` turns violations
into a reward term in [0, 1] and `rule_cost` into a cost in [0, 1], its complement. The
modules: `quantities` (numbers with units and how text states them), `formulary` (the
data), `dose` and `advice` (the rules), `rules` (`check`), `reward`.
"""

from .formulary import AllergyGroup, Caution, Formulary, Limit, Medicine, load_formulary
from .quantities import Quantity, parse_quantities
from .reward import PENALTY, reward_from, rule_cost, rule_reward
from .rules import check
from .violations import CRITERION, ERROR_CATEGORY, RULES, Severity, Violation

__all__ = [
    "CRITERION",
    "ERROR_CATEGORY",
    "PENALTY",
    "RULES",
    "AllergyGroup",
    "Caution",
    "Formulary",
    "Limit",
    "Medicine",
    "Quantity",
    "Severity",
    "Violation",
    "check",
    "load_formulary",
    "parse_quantities",
    "reward_from",
    "rule_cost",
    "rule_reward",
]
