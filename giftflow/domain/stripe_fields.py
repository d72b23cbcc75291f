"""What Stripe accepts for a customer, as the pinned SDK (stripe 16, API 2026-10-28.endive) describes it."""

from __future__ import annotations

import typing

from stripe.params import CustomerCreateParamsTaxIdDatum


def _literal_values(hint) -> frozenset[str]:
    values: set[str] = set()
    for arg in typing.get_args(hint):
        if typing.get_origin(arg) is typing.Literal:
            values |= set(typing.get_args(arg))
    return frozenset(values)


# Stripe's tax-id types (eu_vat, gb_vat, us_ein, ...), from the SDK's own `tax_id_data[].type` Literal.
TAX_ID_TYPES: frozenset[str] = _literal_values(typing.get_type_hints(CustomerCreateParamsTaxIdDatum)["type"])

# Stripe's limits on metadata (https://docs.stripe.com/api/metadata).
METADATA_MAX_KEYS, METADATA_MAX_KEY_LEN, METADATA_MAX_VALUE_LEN = 50, 40, 500

ADDRESS_KEYS = ("line1", "line2", "city", "state", "postal_code", "country")

# ISO 3166-1 alpha-2, officially assigned codes.
ISO_COUNTRIES = frozenset(
    """
AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ CA CC
CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD GE
GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM
KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ
NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH
SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ VA VC VE VG
VI VN VU WF WS YE YT ZA ZM ZW
""".split()
)
