import sys

import pytest

from lora_route.common.plotting import pyplot, save_png


def test_save_png_writes_a_png_and_closes_the_figure(tmp_path):
    plt = pyplot("test figures")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = save_png(fig, tmp_path / "sub" / "figure.png")
    assert path.read_bytes().startswith(b"\x89PNG")
    assert not plt.fignum_exists(fig.number)
    assert [p.name for p in path.parent.iterdir()] == ["figure.png"]


def test_failed_write_keeps_the_old_file_and_closes_the_figure(tmp_path):
    plt = pyplot("test figures")
    target = tmp_path / "figure.png"
    target.write_bytes(b"old")
    fig, _ = plt.subplots()
    with pytest.raises(TypeError):
        save_png(fig, target, dpi=120, format_options_that_do_not_exist=1)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]
    assert not plt.fignum_exists(fig.number)


def test_missing_matplotlib_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"study plots need matplotlib: pip install 'lora_route\[plot\]'"):
        pyplot("study plots")
