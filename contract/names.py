"""The one set of name patterns: gateway ids, province and venue codes.

They appear in certificates (CN), MQTT topics (``bz/v1/{province}/{venue}/{gateway}``), broker
ACLs, the registry and configs, so every place checks them with these.
"""

from __future__ import annotations

import re

GATEWAY_ID = r"^[a-z0-9][a-z0-9-]{1,62}$"  # a certificate CN and a topic level
PROVINCE = r"^[a-z0-9-]{1,32}$"
VENUE = r"^[a-z0-9-]{1,64}$"
ACCOUNT = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # broker accounts that are not gateways (matchers)

GATEWAY_ID_RE = re.compile(GATEWAY_ID)
PROVINCE_RE = re.compile(PROVINCE)
VENUE_RE = re.compile(VENUE)
ACCOUNT_RE = re.compile(ACCOUNT)
