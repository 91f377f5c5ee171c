"""Sluice's default levels, for the evaluation scripts: the level of a text from the kinds found in it.

Mirrors `Kind::default_level` (crates/sensitivity/src/kind.rs) and `Combination::defaults`
(crates/sensitivity/src/config.rs): each kind has a level, a person's name together with personal data or
an identifier is restricted, and so is a date of birth together with health or special-category data. The
level of a text is the highest of these. generate.py labels the set with it and score.py gives a level to
systems that do not report their own (Presidio).
"""

LEVELS = ["public", "internal", "confidential", "restricted"]
RANK = {name: i for i, name in enumerate(LEVELS)}

# Identifiers: restricted alone.
IDENTIFIERS = [
    "passport",
    "drivers_license",
    "tax_id",
    "bank_account",
    "routing_number",
    "government_id",
    "us_ssn",
    "uk_nino",
    "es_dni",
    "iban",
    "payment_card",
]
CONTACT = ["email", "phone", "ip_address"]
PERSONAL = ["person_name", "postal_address", "date_of_birth", "health", "special_category"]
SECRETS = [
    "private_key",
    "aws_access_key",
    "aws_secret_key",
    "github_token",
    "gitlab_token",
    "slack_token",
    "slack_webhook",
    "stripe_key",
    "openai_key",
    "google_api_key",
    "jwt",
    "generic_secret",
]

DEFAULT_LEVEL = {}
DEFAULT_LEVEL.update({k: "restricted" for k in IDENTIFIERS + SECRETS})
DEFAULT_LEVEL.update({k: "confidential" for k in CONTACT})
DEFAULT_LEVEL.update({k: "internal" for k in PERSONAL})

# (all of, any of, level)
COMBINATIONS = [
    (
        ["person_name"],
        ["health", "special_category", "date_of_birth", "postal_address"] + IDENTIFIERS,
        "restricted",
    ),
    (["date_of_birth"], ["health", "special_category"], "restricted"),
]


def level_of(kinds):
    """The level of a text whose findings have these kinds (an unknown kind counts as restricted)."""
    kinds = set(kinds)
    level = "public"
    for kind in kinds:
        level = max(level, DEFAULT_LEVEL.get(kind, "restricted"), key=RANK.__getitem__)
    for all_of, any_of, combined in COMBINATIONS:
        if all(k in kinds for k in all_of) and any(k in kinds for k in any_of):
            level = max(level, combined, key=RANK.__getitem__)
    return level
