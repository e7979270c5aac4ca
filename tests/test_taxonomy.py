"""The taxonomy is complete, consistent and documented."""
import re
from pathlib import Path

from execution_history import ExecutionTracker
from execution_history.taxonomy import STAGES, TAXONOMY, TAXONOMY_VERSION

REQUIRED = {
    "pipeline_start", "user_input_text", "user_input_image", "translation_result",
    "stage1_safety_check", "stage1_blocked", "interception_iteration", "interception_final",
    "stage3_safety_check", "stage3_blocked", "output_text", "output_image", "output_audio",
    "output_video", "pipeline_complete", "pipeline_error",
}


def test_taxonomy_has_the_contract_types():
    assert TAXONOMY_VERSION == "1.1"
    assert len(TAXONOMY) >= 20
    assert REQUIRED <= set(TAXONOMY)


def test_every_type_has_stage_description_and_a_log_method():
    for name, entry in TAXONOMY.items():
        assert entry.name == name
        assert entry.stage in STAGES
        assert entry.description.strip() and "\n" not in entry.description
        method = getattr(ExecutionTracker, f"log_{name}")
        assert name in method.__doc__


def test_readme_documents_every_type_with_its_stage():
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)` \| (\d) \|", readme, flags=re.M))
    assert rows == {name: str(entry.stage) for name, entry in TAXONOMY.items()}
