"""The stamp of every result JSON (simplematch.provenance): version, UTC time, units, first and once."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

import simplematch
from simplematch.provenance import STAMP_KEYS, UNITS, stamped


def test_stamp_comes_first_with_version_utc_time_and_the_kinds_units() -> None:
    local = datetime(2026, 3, 1, 14, 30, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    doc = stamped({"pairs": 3, "pck": {"0.1": 50.0}}, "eval", now=local)
    assert list(doc) == [*STAMP_KEYS, "pairs", "pck"]
    assert doc["smatch_version"] == simplematch.__version__
    assert doc["written_at"] == "2026-03-01T12:30:05Z"  # converted to UTC, whole seconds
    assert doc["units"] == UNITS["eval"] and "percent" in doc["units"]["pck"]
    assert doc["pairs"] == 3 and doc["pck"] == {"0.1": 50.0}


def test_restamping_replaces_the_old_stamp() -> None:
    first = stamped({"step": 1}, "train_last", now=datetime(2020, 1, 1, tzinfo=timezone.utc))
    again = stamped({**first, "step": 2}, "train_last")
    assert list(again) == [*STAMP_KEYS, "step"] and again["step"] == 2
    assert again["written_at"] != first["written_at"]
    json.dumps(again)  # plain JSON


def test_units_tell_score_and_peak_cos_apart() -> None:
    units = UNITS["infer"]
    assert "-1..1" in units["keypoints.*.score"] and "raw" in units["keypoints.*.score"]
    assert "0-1" in units["keypoints.*.cues"] and "(score + 1) / 2" in units["keypoints.*.cues"]


@pytest.mark.parametrize("kind", sorted(UNITS))
def test_every_kind_names_units_for_its_fields(kind: str) -> None:
    assert UNITS[kind] and all(isinstance(v, str) and v for v in UNITS[kind].values())
