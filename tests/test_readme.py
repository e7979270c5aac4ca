"""The README's quick-start commands stay true."""
import re
import subprocess

import pytest

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


def _install_step(test_command: str) -> str:
    """The README test command's first step: install chromium, a font and unzip if one is missing."""
    step = test_command.split(" && python3 -m venv", 1)[0]
    assert step.startswith("(command -v chromium &&"), step
    return step


_PACKAGES = "chromium fonts-dejavu-core unzip"
_ALL = ("chromium", "unzip", "dpkg")


@pytest.mark.parametrize("uid, present, expected", [
    ("0", (), ["apt-get update", f"apt-get install -y {_PACKAGES}"]),  # root in a container: no sudo there
    ("1000", (), ["sudo apt-get update", "apt-get update", f"sudo apt-get install -y {_PACKAGES}",
                  f"apt-get install -y {_PACKAGES}"]),
    ("0", ("chromium", "dpkg"), ["apt-get update", f"apt-get install -y {_PACKAGES}"]),  # no unzip
    ("0", ("chromium", "unzip"), ["apt-get update", f"apt-get install -y {_PACKAGES}"]),  # no font
    ("0", _ALL, []), ("1000", _ALL, [])])
def test_the_readme_test_command_installs_what_the_tests_need_as_root_and_not(tmp_path, uid, present, expected):
    """Run the install step with stub `id`, `apt-get`, `sudo` (and `chromium`, `unzip`, a `dpkg`
    that knows the font) on a PATH of nothing else: root calls apt-get itself (a container has
    no sudo), others go through sudo; nothing is installed when all three are there."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    log = tmp_path / "calls.log"
    scripts = {"id": f'echo {uid}', "apt-get": f'echo "apt-get $*" >> {log}',
               "sudo": f'echo "sudo $*" >> {log}; exec "$@"'}
    for name in present:
        scripts[name] = "exit 0"
    for name, body in scripts.items():
        (stubs / name).write_text(f"#!/bin/sh\n{body}\n")
        (stubs / name).chmod(0o755)
    if uid == "0":
        (stubs / "sudo").unlink()  # and no sudo at all
    result = subprocess.run(["/bin/bash", "-c", _install_step(readme_commands()[1])], env={"PATH": str(stubs)},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert (log.read_text().splitlines() if log.exists() else []) == expected
