"""Several working copies of one volume against the reference model, on both stores,
with history pruned by retention policies (stale writers, killed prunes, prunes racing
commits and collection) among the steps."""

from __future__ import annotations

import pytest
from hypothesis.stateful import run_state_machine_as_test

from tests.model.machine import LONG, Env, machine_for, model_settings

pytestmark = pytest.mark.model

# Bounded runs: under two minutes on the filesystem store, under a minute on MinIO
# (shrinking a failure takes minutes more). `make test` runs them beside the e2e tier
# (hack/run-tests.sh). KVOL_MODEL_LONG=1 runs twenty times the examples, each twice as
# long, random rather than fixed.


@pytest.mark.timeout(0 if LONG else 1800)
def test_working_copies_follow_the_model_on_a_filesystem_store(fs_env: Env) -> None:
    run_state_machine_as_test(machine_for(fs_env), settings=model_settings(100, 40))


@pytest.mark.timeout(0 if LONG else 1800)
def test_overlay_copies_follow_the_model_on_a_filesystem_store(overlay_env: Env) -> None:
    run_state_machine_as_test(machine_for(overlay_env), settings=model_settings(60, 40))


@pytest.mark.timeout(0 if LONG else 1800)
def test_overlay_copies_on_image_snapshots_follow_the_model(image_env: Env) -> None:
    run_state_machine_as_test(machine_for(image_env), settings=model_settings(15, 40))


@pytest.mark.s3
@pytest.mark.timeout(0 if LONG else 1800)
def test_working_copies_follow_the_model_on_minio(s3_env: Env) -> None:
    run_state_machine_as_test(machine_for(s3_env), settings=model_settings(30, 30))
