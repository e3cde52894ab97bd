"""LC settings (``lifelong.edge.config``): flag > env > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from lifelong.common.errors import ConfigError, ValidationError
from lifelong.edge.config import ImageEntry, find_image, load


def test_precedence(tmp_path: Path) -> None:
    cfg = tmp_path / "lc.yaml"
    cfg.write_text("node: from-file\nbroker: mqtt://file:1883\npoll_seconds: 7\noutbox_window: 9\n")
    env = {"LIFELONG_LC_BROKER": "mqtt://env:1883", "LIFELONG_LC_OUTBOX_WINDOW": "11"}
    s = load({"outbox_window": "13", "node": None}, env, cfg)
    assert s.node == "from-file"
    assert s.broker == "mqtt://env:1883"
    assert s.poll_seconds == 7.0
    assert s.outbox_window == 13
    assert s.metrics_port == 9101  # default
    assert load({"node": "n"}, {"LIFELONG_LC_STOP_WORKERS_ON_EXIT": "yes"}).stop_workers_on_exit is True


@pytest.mark.parametrize(
    ("args", "env", "field"),
    [
        ({}, {}, "node"),
        ({"node": "a/b"}, {}, "node"),
        ({"node": "n", "outbox_window": "many"}, {}, "outbox_window"),
        ({"node": "n"}, {"LIFELONG_LC_CODEC": "xml"}, "codec"),
    ],
)
def test_bad_settings_name_the_field(args: dict[str, str], env: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        load(args, env)
    assert info.value.path == field


def test_unknown_config_key(tmp_path: Path) -> None:
    cfg = tmp_path / "lc.yaml"
    cfg.write_text("node: n\nbrokr: x\n")
    with pytest.raises(ValidationError) as info:
        load({}, {}, cfg)
    assert info.value.path == "brokr"


def test_an_unreadable_password_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("  s3cret\n")
    assert load({"node": "n", "password_file": str(secret)}).password() == "s3cret"
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError, match=f"password_file {missing}: No such file") as info:
        load({"node": "n", "password_file": str(missing)}).password()
    assert info.value.exit_code == 2


def test_images_map_an_image_to_its_entrypoint_from_the_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "lc.yaml"
    cfg.write_text(
        "node: n\n"
        "images:\n"
        "  kubeedge/sedna-example-lifelong-learning-atcii-classifier:v0.3.0:\n"
        "    entrypoint: [/opt/venv/bin/python]\n"
        "    workingDir: /opt/atcii\n"
        "    env: {PYTHONPATH: /opt/sedna/lib}\n"
        "  busybox: {cmd: [sh]}\n"
        "  bare:\n"
    )
    images = load({}, {}, cfg).images
    atcii = images["kubeedge/sedna-example-lifelong-learning-atcii-classifier:v0.3.0"]
    assert atcii == ImageEntry(
        entrypoint=["/opt/venv/bin/python"],
        cmd=[],
        workingDir="/opt/atcii",
        env={"PYTHONPATH": "/opt/sedna/lib"},
    )
    assert images["busybox"].cmd == ["sh"] and images["busybox"].entrypoint == []
    assert images["bare"] == ImageEntry()
    assert find_image(images, "busybox:1.36") == ("busybox", images["busybox"])
    assert find_image(images, "busybox2") is None
    assert load({"node": "n"}, {}).images == {}


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("images: [a, b]\n", "images"),
        ("images:\n  img: {entrypoint: python}\n", "images[img].entrypoint"),
        ("images:\n  img: {entrypoint: [python], workdir: /x}\n", "images[img].workdir"),
        ("images:\n  img: {env: {A: 1}}\n", "images[img].env.A"),
        ("images:\n  img: [python]\n", "images[img]"),
    ],
)
def test_a_bad_images_entry_names_what_is_wrong(tmp_path: Path, text: str, path: str) -> None:
    cfg = tmp_path / "lc.yaml"
    cfg.write_text("node: n\n" + text)
    with pytest.raises(ValidationError) as info:
        load({}, {}, cfg)
    assert info.value.path == path
    assert str(cfg) in str(info.value)


def test_the_documented_images_example_loads_and_serves_the_atcii_templates(tmp_path: Path) -> None:
    """docs/writing-workers.md's config example is a real config: the atcii example's
    args-only containers run with its entrypoint and working directory."""
    from lifelong.common.api import load_yaml
    from lifelong.edge.workers import launch

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "writing-workers.md").read_text()
    section = doc[doc.index("### Images in standalone mode") :]
    start = section.index("```yaml\n") + len("```yaml\n")
    block = section[start : section.index("\n```", start)]
    cfg = tmp_path / "lc.yaml"
    cfg.write_text(block)
    images = load({}, {}, cfg).images
    (job,) = load_yaml((root / "examples" / "atcii" / "lifelonglearningjob.yaml").read_text())
    for field, script in (("trainSpec", "train.py"), ("evalSpec", "eval.py"), ("deploySpec", "inference.py")):
        container = job["spec"][field]["template"]["spec"]["containers"][0]
        how = launch(container, images)
        assert how.argv == ["/opt/sedna/venv/bin/python", script]
        assert how.working_dir == "/opt/sedna/examples/lifelong_learning/atcii"
        assert how.image_env == {"PYTHONPATH": "/opt/sedna/lib"}
