"""The inputs bench/bench_validate.py generates: a valid fleet of N specialists and a compose file
of the same number of services and about the same number of lines."""

from __future__ import annotations

import importlib.util
import pathlib

import yaml

from fleetspec.spec import loading
from fleetspec.validation import checks

ROOT = pathlib.Path(__file__).resolve().parents[2]


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_validate", ROOT / "bench" / "bench_validate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_fleet_is_valid_with_the_asked_number_of_specialists():
    text = bench_module().generate_fleet(40)
    fleet = loading.load_text(text, "generated.yaml")
    assert [d.render() for d in checks.check(fleet)] == []
    assert len(fleet.spec.specialists) == 40
    assert [s.rank for s in fleet.spec.specialists[:4]] == [8, 16, 32, 64]
    # one keyword rule every max(1, 40 // 20) = 2 specialists, then the signals rule
    assert len(fleet.spec.routing.rules) == 21


def test_generated_compose_matches_services_and_lines():
    bench = bench_module()
    fleet_text = bench.generate_fleet(40)
    compose = yaml.safe_load(bench.generate_compose(40, len(fleet_text.splitlines())))
    assert len(compose["services"]) == 40
    lines = len(bench.generate_compose(40, len(fleet_text.splitlines())).splitlines())
    # 2 header lines + 40 services × round(fleet lines / 40) lines each
    assert lines == 2 + 40 * round(len(fleet_text.splitlines()) / 40)


def test_compose_services_never_go_below_their_eight_lines():
    text = bench_module().generate_compose(3, 1)
    assert len(text.splitlines()) == 2 + 3 * 8


def test_summary_median_and_quartiles():
    s = bench_module().summary([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (s["median"], s["min"], s["max"]) == (3.0, 1.0, 5.0)
    assert (s["p25"], s["p75"]) == (1.5, 4.5)
