import pytest

import db3_timm
from db3_timm import _registry
from db3_timm import create_generator, create_labeler, list_generators, list_labelers, register_labeler


@pytest.fixture
def clean_registry(monkeypatch):
    for kind in ("labeler", "generator"):
        monkeypatch.setitem(_registry._factories, kind, dict(_registry._factories[kind]))
    _registry._reset_entry_point_cache()
    yield
    _registry._reset_entry_point_cache()


class Echo:
    def __init__(self, oracle, scale=1):
        self.oracle, self.scale = oracle, scale


def test_register_create_list(clean_registry):
    register_labeler(Echo, name="echo_bd")
    register_labeler(name="echo_sd")(Echo)
    made = create_labeler("echo_bd", "ORACLE", scale=3)
    assert isinstance(made, Echo) and made.oracle == "ORACLE" and made.scale == 3
    assert {"echo_bd", "echo_sd"} <= set(list_labelers("echo*"))
    assert list_labelers("*_bd", exclude_filters="x*") == sorted(n for n in list_labelers() if n.endswith("_bd"))
    assert "echo_bd" not in list_generators()


def test_unknown_name_lists_known_names(clean_registry):
    register_labeler(Echo, name="echo_bd")
    with pytest.raises(ValueError, match="unknown labeler 'nope'.*echo_bd"):
        create_labeler("nope", None)
    with pytest.raises(ValueError, match="unknown generator 'nope'"):
        create_generator("nope", None)


PLUGIN = '''
from db3_timm import register_generator

class Grid:
    def __init__(self, oracle, size=2):
        self.oracle, self.size = oracle, size

def make_labeler(oracle, **cfg):
    return ("plugin-labeler", oracle, cfg)

register_generator(Grid, name="plugin_grid")
'''


def test_entry_point_plugins_are_discovered(tmp_path, monkeypatch, clean_registry):
    (tmp_path / "db3_fake_plugin.py").write_text(PLUGIN)
    info = tmp_path / "db3_fake_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: db3-fake-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[db3_timm.labelers]\nplugin_labeler = db3_fake_plugin:make_labeler\n\n"
        "[db3_timm.generators]\nplugin_grid = db3_fake_plugin:Grid\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert "plugin_labeler" not in _registry._factories["labeler"]  # listed without importing
    assert "plugin_labeler" in list_labelers("plugin_*")
    assert "plugin_grid" in list_generators()
    assert create_labeler("plugin_labeler", "O", k=1) == ("plugin-labeler", "O", {"k": 1})
    grid = create_generator("plugin_grid", "O", size=5)
    assert type(grid).__name__ == "Grid" and grid.size == 5
