from pathlib import Path

from sftune.cli.catalog import methods_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_methods_table_in_docs_is_generated_from_the_registry():
    text = (ROOT / "docs" / "methods.md").read_text()
    block = text.split("<!-- methods-table:begin -->\n", 1)[1].split("<!-- methods-table:end -->", 1)[0]
    assert block == methods_markdown(), (
        "regenerate: python -c \"from sftune.cli.catalog import write_methods_table as w; w('docs/methods.md')\"")
