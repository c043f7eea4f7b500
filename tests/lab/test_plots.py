"""colu plot writes the three explanatory figures."""

import pytest

pytest.importorskip("matplotlib")

from colu.tools import cli
from colu_lab.commands import plot as plots  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_colu_plot_writes_three_pngs(tmp_path, capsys):
    out = tmp_path / "figs"
    assert cli.main(["plot", "--out", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["conic_projection.png", "symmetry.png", "weightings.png"]
    for p in out.iterdir():
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000
    assert capsys.readouterr().out.count(".png") == 3


def test_figures_are_registered_once():
    assert set(plots.FIGURES) == {"conic_projection.png", "weightings.png", "symmetry.png"}
    assert cli.commands()["plot"].target == "colu_lab.commands.plot:main"
