"""The short load test: real gunicorn, concurrent clients, 4 writer processes; nothing lost, no error."""
from bench import load


def test_short_load_test_has_no_errors_and_loses_no_run():
    figures = load.main(["--short"])
    assert figures["requests"] > 100 and figures["runs_written"] > 20
    assert figures["errors"] == 0, figures["first_errors"]
    assert figures["runs_lost"] == 0
    assert set(figures["latency_ms"]) == {"all", "list", "filtered", "get", "export"}
    assert figures["latency_ms"]["all"]["n"] == figures["requests"]
    # the CPU in use meanwhile: the machine's share and every role's, each measured
    cpu = figures["cpu"]
    assert 0 < cpu["machine_busy_pct"] <= 100
    assert 0 <= cpu["machine_iowait_pct"] <= 100 and 0 <= cpu["machine_steal_pct"] <= 100
    assert cpu["server_cores"] > 0 and cpu["writers_cores"] > 0 and cpu["load_generator_cores"] > 0
