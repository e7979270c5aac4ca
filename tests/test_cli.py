"""`flask runs ...` commands through Flask's CLI runner."""
import json


def invoke(app, *args):
    return app.test_cli_runner().invoke(args=["runs", *args])


def test_sample_records_runs_through_the_tracker(app, store):
    result = invoke(app, "sample", "6")
    assert result.exit_code == 0, result.output
    records = list(store.iter_records(store.list_ids()))
    assert len(records) == 6
    stille = next(r for r in records if r["config_name"] == "stillepost")
    assert [i["stage_iteration"] for i in stille["items"] if i["item_type"] == "interception_iteration"] == \
        list(range(1, 9))
    multi = next(r for r in records if r["config_name"] == "bauhaus")
    assert sorted({i["loop_iteration"] for i in multi["items"] if i["stage"] >= 3}) == [1, 2]
    assert {r["status"] for r in records} == {"completed", "blocked", "failed"}
    assert invoke(app, "sample", "3", "--if-empty").exit_code == 0
    assert len(store.list_files()) == 6


def test_stats_and_show(app, store, recorded_runs):
    result = invoke(app, "stats")
    assert result.exit_code == 0 and json.loads(result.output) == store.scan_stats()
    result = invoke(app, "reindex")
    assert result.exit_code == 0 and f"Indexed {len(recorded_runs)} runs" in result.output
    result = invoke(app, "show", recorded_runs[0])
    assert result.exit_code == 0 and json.loads(result.output) == store.load(recorded_runs[0])


def test_show_unknown_run_fails_with_the_error(app):
    result = invoke(app, "show", "exec_../x")
    assert result.exit_code == 1 and "NOT_FOUND" in result.output
