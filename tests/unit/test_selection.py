"""Which detectors run: ids and prefixes, the config's lists and the command
line's, and the checks that come before any work."""

from __future__ import annotations

import pytest

from tunescope.config import parse_config
from tunescope.detectors import loss_spike
from tunescope.detectors.selection import (
    all_detectors,
    detector_ids,
    get_detector,
    is_selected,
    select_detectors,
    unmatched_ids,
    validate_config,
)
from tunescope.errors import ConfigError, UsageError


def test_selection_by_prefix_and_ignore():
    ids = [d.ID for d in select_detectors(select="TS1", ignore=["TS103"])]
    assert ids and all(i.startswith("TS1") for i in ids) and "TS103" not in ids
    cfg = parse_config({"select": ["TS0"], "ignore": ["TS001"]})
    assert select_detectors(config=cfg) == []
    # the command line's select replaces the config's; its ignore adds to it
    ids = [d.ID for d in select_detectors(select="TS0,TS10", config=cfg)]
    assert "TS001" not in ids and "TS101" in ids
    with pytest.raises(UsageError, match="TS7"):
        select_detectors(select="TS7")


def test_ids_are_read_in_any_case_and_any_spacing():
    ids = [d.ID for d in select_detectors(select=" ts10 , ", ignore="ts101")]
    assert ids and "TS101" not in ids and all(i.startswith("TS10") for i in ids)
    with pytest.raises(UsageError, match=r"--ignore: 'TS9'"):
        select_detectors(ignore=["ts9"])


def test_is_selected_and_unmatched_ids():
    assert is_selected("TS101", None, [])
    assert is_selected("TS101", ["TS1"], ["TS103"])
    assert not is_selected("TS103", ["TS1"], ["TS103"])
    assert not is_selected("TS201", ["TS1"], [])
    assert not is_selected("TS201", None, ["TS2"])
    assert unmatched_ids(["TS1", "TS9", "TS10"], ["TS101", "TS102"]) == ["TS9"]


def test_get_detector_by_id_in_any_case():
    assert get_detector(" ts101 ") is loss_spike
    assert detector_ids() == [d.ID for d in all_detectors()]
    with pytest.raises(UsageError, match="unknown detector 'TS999'; known: TS001"):
        get_detector("TS999")


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"TS999": {"z": 1}}, "TS999: unknown detector id"),
        ({"select": ["TS9"]}, "select: 'TS9' matches no detector"),
        ({"TS101": {"zz": 1}}, "TS101.zz: unknown option (did you mean 'z'?)"),
        ({"TS101": {"z": "big"}}, "TS101.z: expected a number"),
    ],
)
def test_validate_config_names_the_key(table, says):
    cfg = parse_config(table)
    with pytest.raises(ConfigError, match=None) as e:
        validate_config(cfg)
    assert says in str(e.value)


def test_validate_config_accepts_the_defaults_and_good_options():
    validate_config(parse_config({}))
    validate_config(parse_config({"TS101": {"z": 7}, "ignore": ["TS1"]}))
