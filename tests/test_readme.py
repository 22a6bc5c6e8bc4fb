from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    block = ci.split("# test-command-begin\n", 1)[1].split("# test-command-end", 1)[0].strip()
    readme = (ROOT / "README.md").read_text()
    assert block in readme
    assert "python3 -m venv .venv && . .venv/bin/activate && " + block in readme


def test_readme_main_job_uses_the_real_offline_path():
    readme = (ROOT / "README.md").read_text()
    assert "sftune train minilm rte --method full --data-dir ../shared/data/glue --max-steps 30" in readme
