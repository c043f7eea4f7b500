"""Every generated table in docs/ agrees with the files under results/ it is rendered from."""

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _generate():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_agree_with_their_results_files():
    assert _generate().stale_docs() == [], "run python docs/generate.py and commit the docs"


def test_a_changed_results_file_is_caught(tmp_path):
    """The check is not vacuous: a block whose renderer gives other text than the doc holds is reported."""
    generate = _generate()
    generate.RENDERERS["test-constant"] = lambda root, value: f"| value |\n|---|\n| {value} |"
    try:
        (tmp_path / "docs").mkdir()
        doc = tmp_path / "docs" / "page.md"
        doc.write_text("intro\n<!-- generated: test-constant 1 -->\n| value |\n|---|\n| 1 |\n<!-- /generated -->\n")
        assert generate.stale_docs(tmp_path) == []
        doc.write_text(doc.read_text().replace("| 1 |", "| 2 |"))
        assert generate.stale_docs(tmp_path) == ["docs/page.md"]
        assert "| 1 |" in generate.render_doc(doc.read_text(), tmp_path)
    finally:
        del generate.RENDERERS["test-constant"]
