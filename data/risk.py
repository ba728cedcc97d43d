"""Source category names -> LLaMA 2's three risk categories (Sec. 4.2.1: illicit and criminal activities;
hateful and harmful activities; unqualified advice): the tables of XSTest, Do-Not-Answer, PKU-SafeRLHF
and BeaverTails, and a keyword fallback for any other source's names."""
from __future__ import annotations

import re
from collections import Counter

# LLaMA 2 Sec. 4.2.1: the three risk categories of the safety annotation guidelines
RISK_CATEGORIES = ("illicit_and_criminal", "hateful_and_harmful", "unqualified_advice")

# XSTest prompt type (without "contrast_") -> LLaMA 2 risk category
XSTEST_RISK = {
    "homonyms": "illicit_and_criminal", "figurative_language": "illicit_and_criminal",
    "safe_targets": "illicit_and_criminal", "safe_contexts": "illicit_and_criminal",
    "definitions": "illicit_and_criminal", "privacy": "illicit_and_criminal",
    "privacy_public": "illicit_and_criminal", "privacy_fictional": "illicit_and_criminal",
    "discr": "hateful_and_harmful", "real_group_nons_discr": "hateful_and_harmful",
    "nons_group_real_discr": "hateful_and_harmful", "historical_events": "hateful_and_harmful",
}

# Do-Not-Answer types_of_harm -> LLaMA 2 risk category (None: outside the three)
DNA_RISK = {
    "Adult Content": "hateful_and_harmful",
    "Social stereotypes and unfair discrimination": "hateful_and_harmful",
    "Toxic language (hate speech)": "hateful_and_harmful",
    "Mental Health or Overreliance Crisis": "unqualified_advice",
    "Treat Chatbot as a Human": None,
    "Compromise privacy by leaking or inferring private information (person/individual)": "illicit_and_criminal",
    "Risks from leaking or inferring sensitive information (organization/gov)": "illicit_and_criminal",
    "Assisting illegal activities": "illicit_and_criminal",
    "Nudging or advising users to perform unethical or unsafe actions": "hateful_and_harmful",
    "Reducing the cost of disinformation campaigns": "illicit_and_criminal",
    "Causing material harm by disseminating misinformation e.g. in medicine or law": "unqualified_advice",
    "Disseminating false or misleading information": "hateful_and_harmful",
}

# keyword fallback for other sources' category names (first match wins, checked in this order)
_RISK_KEYWORDS = (
    ("unqualified_advice", r"advice|medic|health|financ|legal_advice|law\b|lawyer|invest|diagnos|mental"),
    ("hateful_and_harmful", r"hate|harass|discrim|toxic|self.?harm|suicid|eating|defam|stereotyp|bully|"
                            r"adult|sexual|offensive|harmful|misinformation|insult|racis|sexis"),
    ("illicit_and_criminal", r"crim|illegal|illicit|weapon|drug|terror|theft|steal|fraud|scam|hack|cyber|"
                             r"malware|privacy|violen|traffick|kill|murder|explos|bomb|counterfeit"),
)


def _lookup(category: str | None) -> tuple[bool, str | None]:
    """(whether the name is one the mapping knows, its LLaMA 2 risk category or None)."""
    if not category or not category.strip():
        return False, None
    c = category.strip()
    if c in RISK_CATEGORIES:
        return True, c
    if c in DNA_RISK:
        return True, DNA_RISK[c]
    t = c.removeprefix("contrast_")
    if t in XSTEST_RISK:
        return True, XSTEST_RISK[t]
    low = c.lower()
    for risk, pattern in _RISK_KEYWORDS:
        if re.search(pattern, low):
            return True, risk
    return False, None


def known_category(category: str | None) -> bool:
    """Whether `risk_category` knows this name (a risk category, a Do-Not-Answer harm type, an XSTest type,
    or a name its keywords place), even when it maps it to no risk category ("Treat Chatbot as a Human");
    a source name such as "hh-red-team" is not known."""
    return _lookup(category)[0]


def risk_category(category: str | None) -> str | None:
    """Map a source category name onto LLaMA 2's three risk categories (None when none fits)."""
    return _lookup(category)[1]


# PKU-SafeRLHF's 19 harm categories -> LLaMA 2's three risk categories (Sec. 4.2.1: illicit and criminal
# activities; hateful and harmful activities; unqualified advice).
PKU_RISK = {
    "Endangering National Security": "illicit_and_criminal",
    "Insulting Behavior": "hateful_and_harmful",
    "Discriminatory Behavior": "hateful_and_harmful",
    "Endangering Public Health": "hateful_and_harmful",
    "Copyright Issues": "illicit_and_criminal",
    "Violence": "illicit_and_criminal",
    "Drugs": "illicit_and_criminal",
    "Privacy Violation": "illicit_and_criminal",
    "Economic Crime": "illicit_and_criminal",
    "Mental Manipulation": "hateful_and_harmful",
    "Human Trafficking": "illicit_and_criminal",
    "Physical Harm": "hateful_and_harmful",
    "Sexual Content": "hateful_and_harmful",
    "Cybercrime": "illicit_and_criminal",
    "Disrupting Public Order": "illicit_and_criminal",
    "Environmental Damage": "illicit_and_criminal",
    "Psychological Harm": "hateful_and_harmful",
    "White-Collar Crime": "illicit_and_criminal",
    "Animal Abuse": "hateful_and_harmful",
}

# BeaverTails' 14 harm categories -> LLaMA 2 risk categories.
BEAVERTAILS_RISK = {
    "animal_abuse": "hateful_and_harmful",
    "child_abuse": "illicit_and_criminal",
    "controversial_topics,politics": "hateful_and_harmful",
    "discrimination,stereotype,injustice": "hateful_and_harmful",
    "drug_abuse,weapons,banned_substance": "illicit_and_criminal",
    "financial_crime,property_crime,theft": "illicit_and_criminal",
    "hate_speech,offensive_language": "hateful_and_harmful",
    "misinformation_regarding_ethics,laws_and_safety": "unqualified_advice",
    "non_violent_unethical_behavior": "hateful_and_harmful",
    "privacy_violation": "illicit_and_criminal",
    "self_harm": "hateful_and_harmful",
    "sexually_explicit,adult_content": "hateful_and_harmful",
    "terrorism,organized_crime": "illicit_and_criminal",
    "violence,aiding_and_abetting,incitement": "illicit_and_criminal",
}
# HH red-team attempts carry free-text `tags` (on a sample) and a `task_description`: they are mapped by
# risk_category's keyword table (tags first, then the description); None when nothing fits.


def risk_of(names, table: dict[str, str]) -> str | None:
    """Harm-category names -> one LLaMA 2 risk category: the one most names map to (ties: the order of
    RISK_CATEGORIES). Names outside `table` go through risk_category's keyword table."""
    votes = Counter(table.get(n) or risk_category(n) for n in names)
    votes.pop(None, None)
    if not votes:
        return None
    return max(RISK_CATEGORIES, key=lambda r: (votes[r], -RISK_CATEGORIES.index(r)))
