"""The README's figures hold: each generated block equals the rendering of the results file its
named command writes, and every other paragraph that states a figure names where it comes from."""

from bench import readme_figures as rf


def test_readme_figures_match_their_results():
    assert rf.problems() == []


def test_a_drifted_figure_is_caught(tmp_path, monkeypatch):
    """The check is not vacuous: edit one figure inside a block, or add an unsourced one, and it
    fails."""
    page = rf.README.read_text(encoding="utf-8")
    block = rf.methods_block()
    first = next(line for line in block.splitlines() if line.startswith("| ShortGPT"))
    drifted = tmp_path / "README.md"
    drifted.write_text(page.replace(first, first.replace("|", "| 1.00 |", 2)[:-1]), encoding="utf-8")
    monkeypatch.setattr(rf, "README", drifted)
    assert any("differ from bench/results" in p for p in rf.problems())
    drifted.write_text(page + "\nThe probe now runs in 3.2 s on a laptop.\n", encoding="utf-8")
    assert any("a figure with no command" in p for p in rf.problems())


def test_every_block_names_a_command_that_exists():
    for name, block in rf.BLOCKS.items():
        script = block.command.split()[1]
        assert (rf.ROOT / script).is_file(), (name, script)
