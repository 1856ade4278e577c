"""The recipe is validated before any work; errors name the field and the file."""

from pathlib import Path

import pytest

from textmill.config import Recipe, RecipeError, load_recipe, parse_recipe

REPO = Path(__file__).resolve().parents[1]


def test_default_recipe_file_loads_and_matches_builtin_defaults():
    recipe = load_recipe(REPO / "recipes" / "default.yaml")
    assert recipe.raw.extractor in ("resiliparse", "trafilatura")
    assert recipe.raw == Recipe().raw
    assert recipe.execution == Recipe().execution
    assert recipe.deduped == Recipe().deduped


def test_unknown_field_is_named_with_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("raw:\n  extractorr: trafilatura\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert str(path) in message
    assert "raw.extractorr" in message
    assert "unknown field" in message


def test_wrong_value_is_named_with_what_was_given(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("raw:\n  extractor: readability\nexecution:\n  workers: 0\n")
    with pytest.raises(RecipeError) as info:
        load_recipe(path)
    message = str(info.value)
    assert "raw.extractor" in message and "'readability'" in message
    assert "execution.workers" in message


def test_not_a_mapping_and_bad_yaml(tmp_path):
    listing = tmp_path / "list.yaml"
    listing.write_text("- raw\n- deduped\n")
    with pytest.raises(RecipeError, match="must be a mapping"):
        load_recipe(listing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("raw: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(broken)
    with pytest.raises(RecipeError, match="cannot read"):
        load_recipe(tmp_path / "missing.yaml")


def test_empty_patterns_rejected():
    with pytest.raises(RecipeError, match="file_patterns"):
        parse_recipe({"raw": {"file_patterns": []}})


def test_cli_fails_before_any_work_on_a_bad_recipe(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from textmill.cli import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dh"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("raw:\n  rows_per_part: -5\n")
    result = CliRunner().invoke(app, ["demo", "--recipe", str(bad), "--root", str(tmp_path / "data")])
    assert result.exit_code == 2
    assert "raw.rows_per_part" in result.output
    assert not (tmp_path / "data").exists(), "no work may start before the recipe is valid"


def test_whole_page_text_needs_resiliparse():
    with pytest.raises(RecipeError, match="raw.*main_content: false.*resiliparse"):
        parse_recipe({"raw": {"extractor": "trafilatura", "main_content": False}})
    assert parse_recipe({"raw": {"extractor": "resiliparse", "main_content": False}}).raw.main_content is False
