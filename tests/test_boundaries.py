"""The direction of the imports follows the data: pipeline code never loads the index or SQLite."""
import subprocess
import sys

import pytest

from .conftest import PROJECT


@pytest.mark.parametrize("module", ["execution_history.tracker", "execution_history.exporters",
                                    "execution_history.s3store"])
def test_module_loads_no_index_and_no_sqlite(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in sys.modules if m in ('sqlite3', 'execution_history.index', "
            "'execution_history.s3index')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


def test_the_tracker_imports_no_boto3_for_a_local_folder(tmp_path):
    code = "import sys, execution_history; execution_history.ExecutionTracker('x').finalize(); print('boto3' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "RUN_HISTORY_DIR": str(tmp_path / "runs"),
                                 "XDG_STATE_HOME": str(tmp_path / "state")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
