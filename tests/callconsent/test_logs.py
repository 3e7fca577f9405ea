from __future__ import annotations

import io
import json
import logging

import pytest

from callconsent import logs


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("caller +4915112345678 pressed 1", "caller …78 pressed 1"),
        ("number 0151 123 456 78 withheld", "number …78 withheld"),
        ("from (030) 1234-5678", "from …78"),
        (
            "caller +4915112345678 recording 00479980-f461-4b6c-aabc-66925068c45d",
            "caller …78 recording 00479980-f461-4b6c-aabc-66925068c45d",
        ),
    ],
)
def test_phone_numbers_are_masked(text: str, masked: str) -> None:
    assert logs.mask_numbers(text) == masked


@pytest.mark.parametrize(
    "text",
    [
        "linkedid 1795348625.74",
        "epoch 2026-W50 expires 2026-04-05 (2026-W14)",
        "at 2026-11-24 09:00",
        "port 4573",
        "recording 0b7e4a52-2a0e-4f8e-9c55-0a1f0c3e2d11",
        "recording 00479980-f461-4b6c-aabc-66925068c45d",  # its first group all digits
        "recording=12345678-1234-4234-8234-123456789012 encrypted",  # every group digits
    ],
)
def test_ids_dates_and_times_are_not_masked(text: str) -> None:
    assert logs.mask_numbers(text) == text


@pytest.mark.parametrize("fmt", ["kv", "json"])
def test_every_format_masks_values_too(fmt: str) -> None:
    out = io.StringIO()
    logs.setup("info", fmt, out)
    logging.getLogger("t").info("consent_declined", extra={"kv": {"caller": "+4915112345678"}})
    line = out.getvalue().strip()
    assert "15112345678" not in line and "…78" in line
    if fmt == "json":
        assert json.loads(line)["event"] == "consent_declined"
    else:
        assert "event=consent_declined caller=…78" in line
