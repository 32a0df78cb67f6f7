"""Stored results still come from this code. Every `nbs/results/<method>_builtin.json` of the objects task holds a fingerprint
(`tests/objects_ssl.py`: the losses of the first optimiser steps of its config and the probes of the untrained encoder),
recomputed here in seconds: a change to the data, the augmentations, a network, a loss, the optimiser or the evaluation that
moves the numbers fails this test with the command that refreshes the result."""
import json, sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import objects_ssl  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / 'nbs' / 'results'
STORED = sorted(p for p in RESULTS.glob('*_builtin.json') if json.loads(p.read_text()).get('task') == 'objects')


@pytest.mark.parametrize('path', STORED, ids=lambda p: p.stem)
def test_stored_result_comes_from_this_code(path, monkeypatch):
    monkeypatch.setenv('SELF_SUP_PROGRESS', '0')
    stored = json.loads(path.read_text())
    method = path.stem[:-len('_builtin')]
    assert 'fingerprint' in stored, f"{path.name} has no fingerprint: rerun `{stored['command']}`"
    current = objects_ssl.fingerprint(method, stored['config'], stored['fingerprint']['steps'])
    assert objects_ssl.fingerprint_matches(stored['fingerprint'], current), (
        f"{path.name} no longer comes from this code (stored fingerprint {stored['fingerprint']}, this code's {current}): "
        f"rerun `{stored['command']}`")


def test_a_changed_recipe_changes_the_fingerprint(monkeypatch):
    "The check can fail: the RotNet result's config with another learning rate, or other data, is not the stored result."
    monkeypatch.setenv('SELF_SUP_PROGRESS', '0')
    stored = json.loads((RESULTS / 'rotnet_builtin.json').read_text())
    assert not objects_ssl.fingerprint_matches(stored['fingerprint'], objects_ssl.fingerprint('rotnet', {**stored['config'], 'lr': 0.2}))
    assert not objects_ssl.fingerprint_matches(stored['fingerprint'], objects_ssl.fingerprint('rotnet', {**stored['config'], 'dataset': 'digits'}))
