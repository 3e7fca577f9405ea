"""The web console and HTTP API: browsers and API clients adapted to the store (DESIGN.md
"web"). It may import ``recorder`` and ``consent_ivr``; never ``agi`` or ``esl_listener``."""
