"""The README's results section is generated from results/*.json: it follows the tables and never
touches the hand-written text around it."""

import json
from pathlib import Path

import pytest

from qexp.errors import QexpError
from qexp.report.readme import BEGIN, END, readme_for, results_section, update_readme
from qexp.report.tables import PAPERS

ROOT = Path(__file__).resolve().parents[1]


def _comparison(caption, tier, verdict, n=3, low=1.0, high=2.0):
    return {"caption": caption, "tier": tier, "metric": "accuracy", "direction": "greater", "margin": 0.0,
            "n": n, "mean": 1.5 if n else None, "std": 0.2 if n else None, "low": low if n > 1 else None,
            "high": high if n > 1 else None, "verdict": verdict, "seeds": [], "diffs": []}


def test_section_follows_the_json_and_keeps_the_rest(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "dong2017.json").write_text(json.dumps({"_comparisons": [
        _comparison("SQ beats BWN (test caption)", "real", "reproduced"),
        _comparison("SQ-TWN beats TWN (test caption)", "real", "inconclusive", low=-0.5),
        _comparison("never run (test caption)", "real", "inconclusive", n=0),
        _comparison("mini claim (test caption)", "mini", "not reproduced", low=-3.0, high=-1.0)]}))
    readme = tmp_path / "README.md"
    readme.write_text(f"# project\n\nhand-written intro\n\n{BEGIN}\nstale text\n{END}\n\n## after\nkept\n")

    assert update_readme(readme, results, papers=("dong2017",))
    text = readme.read_text()
    assert text.startswith("# project\n\nhand-written intro\n\n" + BEGIN)
    assert text.endswith(END + "\n\n## after\nkept\n")
    assert "stale text" not in text
    assert "| SQ beats BWN (test caption) | A > B | 3 | +1.50 ± 0.20 | [+1.00, +2.00] | **reproduced** |" in text
    assert "| never run (test caption) | A > B | 0 |  | — (n < 2) | **missing** (no runs) |" in text
    # the summary counts reproduced / not reproduced / inconclusive / missing per tier
    assert "| [dong2017](#dong2017) | Real data: Fashion-MNIST | 3 | 1 | 0 | 1 | 1 |" in text
    assert "| [dong2017](#dong2017) | Mini | 1 | 0 | 1 | 0 | 0 |" in text
    assert "Full tables: [results/dong2017.md](results/dong2017.md)" in text
    assert "dong2017.png" not in text  # no plot there, no broken image link

    before = readme.stat().st_mtime_ns
    assert update_readme(readme, results, papers=("dong2017",))  # idempotent: nothing rewritten
    assert readme.stat().st_mtime_ns == before


def test_no_markers_no_readme_and_bad_markers(tmp_path):
    readme = tmp_path / "README.md"
    assert not update_readme(readme, tmp_path)  # no README: nothing to do
    readme.write_text("# no markers\n")
    assert not update_readme(readme, tmp_path)
    assert readme.read_text() == "# no markers\n"
    readme.write_text(f"{END}\n{BEGIN}\n")
    with pytest.raises(QexpError, match="markers"):
        update_readme(readme, tmp_path)
    assert readme.read_text() == f"{END}\n{BEGIN}\n"  # untouched


def test_only_the_readmes_own_results_folder_is_linked(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"{BEGIN}\n{END}\n")
    assert readme_for(tmp_path / "results", readme) == readme
    assert readme_for(tmp_path / "scratch", readme) is None


def test_the_projects_readme_agrees_with_results():
    """README.md's results section is exactly what results/*.json give (run `qexp tables` after
    changing results or configs/paper/*.yaml)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(BEGIN):text.index(END) + len(END)]
    assert section == results_section(ROOT, ROOT / "results", PAPERS)
