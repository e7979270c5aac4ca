"""The README's quick-start commands stay true."""
import re

from .conftest import PROJECT


def readme_commands():
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"```sh\n(.+?)\n```", readme)[:2]


def test_ci_runs_the_readme_test_command():
    run_command, test_command = readme_commands()
    ci_lines = (PROJECT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert test_command in ci_lines
    assert "pytest" in test_command and "gunicorn -c gunicorn.conf.py wsgi:app" in run_command
    assert "runs sample" in run_command
