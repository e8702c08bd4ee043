"""The README's examples work when copied: its job validates, and it needs nothing outside the repository; its
settings table names every setting, with the default the code has."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from schemas.models import CompletionJob, Provider
from worker.aggregator.settings import AggregatorSettings
from worker.keys.endpoint import Endpoint
from worker.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
SIMULATOR_PORT = 8099  # what the README starts `byok simulate-provider` on


def section(title: str) -> str:
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end > 0 else None]


def fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


SIMULATOR_PATHS = {Provider.OPENAI: "/openai/v1", Provider.ANTHROPIC: "/anthropic"}


def assert_runs_on_the_simulator(job: CompletionJob) -> None:
    assert job.model.base_url is not None, "without base_url the job would go to the real provider"
    endpoint = Endpoint.resolve(job.model.provider, job.model.base_url)
    assert endpoint.base_url == f"http://127.0.0.1:{SIMULATOR_PORT}{SIMULATOR_PATHS[job.model.provider]}"
    assert job.deadline is None or job.deadline > datetime.now(UTC), "a deadline in the past expires the job"


def test_the_job_example_is_a_valid_job_for_the_simulator() -> None:
    blocks = fenced(section("A job"), "json")
    jobs = [CompletionJob.model_validate_json(block) for block in blocks]
    assert [job.model.provider for job in jobs] == [Provider.OPENAI, Provider.ANTHROPIC]
    assert jobs[1].input.tools, "the second example is the agent's tool-call job"
    for job in jobs:
        assert_runs_on_the_simulator(job)


def test_the_job_of_run_it_by_hand_is_valid_once_the_sealed_key_is_filled_in() -> None:
    (script,) = fenced(section("Run it by hand"), "sh")
    heredoc = re.search(r"cat > job\.json <<EOF\n(.*?)\nEOF\n", script, re.DOTALL)
    assert heredoc is not None
    assert "$(cat sealed.txt)" in heredoc.group(1)
    job = CompletionJob.model_validate_json(heredoc.group(1).replace("$(cat sealed.txt)", "vault:v1:c2VhbGVk"))
    assert_runs_on_the_simulator(job)
    assert f"simulate-provider --port {SIMULATOR_PORT}" in script
    assert f"--base-url {job.model.base_url}" in script, "the key is sealed for the endpoint the job calls"


def test_the_readme_needs_nothing_beside_the_repository() -> None:
    assert "../shared" not in README
    assert "DESIGN.md" not in README


SETTING_FIELDS = {**Settings.model_fields, **AggregatorSettings.model_fields}


def test_every_setting_is_in_the_readme() -> None:
    missing = sorted(f"BYOK_{name.upper()}" for name in SETTING_FIELDS if f"`BYOK_{name.upper()}`" not in README)
    assert not missing, f"settings the README does not name: {missing}"


def test_the_settings_table_gives_the_defaults_the_code_has() -> None:
    rows = re.findall(r"^\| `(BYOK_[A-Z0-9_]+)` \| `([^`|]*)` \|", section("Settings (environment)"), re.MULTILINE)
    assert len(rows) > 30, "the table of one setting per row was not found"
    for name, documented in rows:
        field = SETTING_FIELDS.get(name.removeprefix("BYOK_").lower())
        assert field is not None, f"{name} is in the README but is not a setting"
        default = field.default
        if isinstance(default, bool):
            assert documented == str(default).lower(), name
        elif isinstance(default, int | float):
            assert float(documented) == default, f"{name}: README {documented}, code {default}"
        elif isinstance(default, str):
            assert documented == default, f"{name}: README {documented!r}, code {default!r}"
