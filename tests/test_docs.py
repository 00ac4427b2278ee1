"""The reference stays true to the code: every setting the code reads has a row, every link leads somewhere."""

import re

from tests.support import ROOT

READERS = "get|required|secret|number|integer|boolean|choice|csv|port|is_set"
READS = re.compile(rf'env\.(?:{READERS})\(\s*"([A-Z][A-Z0-9_]+)"')
LINK = re.compile(r"\]\(([^)#\s]+\.md)(?:#[^)]*)?\)")


def test_every_setting_the_code_reads_has_a_row_in_docs_settings():
    read = {name for path in (ROOT / "paastis").rglob("*.py") for name in READS.findall(path.read_text())}
    table = (ROOT / "docs" / "settings.md").read_text()
    missing = sorted(name for name in read if f"`{name}`" not in table)
    assert len(read) > 40  # the pattern still finds the code's reads
    assert missing == [], f"add a row to docs/settings.md for: {', '.join(missing)}"


def test_links_between_readme_and_docs_pages_lead_to_existing_files():
    pages = [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]
    broken = [
        f"{page.relative_to(ROOT)} -> {target}"
        for page in pages
        for target in LINK.findall(page.read_text())
        if not target.startswith("http") and not (page.parent / target).resolve().exists()
    ]
    assert broken == []
