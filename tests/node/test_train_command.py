"""`synthlearn node train` on the command line: DP flags reach the run, bad settings are refused."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from shared.cli import app

TINY_TOML = """
[gan]
resolution = 16
channel_base = 64
channel_min = 4
z_dim = 8
w_dim = 16
min_class_images = 8
checkpoint_kimg = 0.032
grid_per_class = 2
device = "cpu"
"""


def _train(tiny_site: Path, tmp_path: Path, *extra: str) -> tuple[int, str]:
    """(exit code, output + the error a user would see) of `synthlearn node train`."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(TINY_TOML)
    result = CliRunner().invoke(app, ["node", "train", "--site-dir", str(tiny_site),
                                      "--batch", "8", "--config", str(cfg), *extra])
    return result.exit_code, result.output + str(result.exception or "")


def test_dp_flags_train_privately_and_record_epsilon(tiny_site: Path, tmp_path: Path) -> None:
    code, out = _train(tiny_site, tmp_path, "--kimg", "0.032", "--dp-epsilon", "40",
                       "--dp-delta", "0.001", "--run-name", "dp")
    assert code == 0, out
    metrics = json.loads((tiny_site / "runs" / "dp" / "metrics.json").read_text())
    assert metrics["dp"]["delta"] == 0.001
    # The last line names the run and the next step (the JSON alone named neither).
    assert (f"run saved in {tiny_site / 'runs' / 'dp'} (the same command continues it); next: "
            f"synthlearn node generate --site-dir {tiny_site} --run-name dp -n N") in out
    assert 0 < metrics["dp"]["epsilon_spent"] <= 40.0
    resolved = json.loads((tiny_site / "runs" / "dp" / "config.json").read_text())
    assert resolved["dp_epsilon"] == 40.0
    # DP forces these; the resolved config says what trained, not what was asked.
    assert (resolved["augment"], resolved["d_norm"], resolved["mbstd"]) == ("fixed", "group",
                                                                           False)


def test_toml_batch_is_kept_when_the_option_is_not_given(tiny_site: Path,
                                                         tmp_path: Path) -> None:
    cfg = tmp_path / "run.toml"
    cfg.write_text(TINY_TOML.replace("[gan]\n", "[gan]\nbatch = 32\nseed = 7\n"))
    result = CliRunner().invoke(app, ["node", "train", "--site-dir", str(tiny_site),
                                      "--kimg", "0.064", "--config", str(cfg),
                                      "--run-name", "toml"])
    assert result.exit_code == 0, result.output + str(result.exception or "")
    run = tiny_site / "runs" / "toml"
    resolved = json.loads((run / "config.json").read_text())
    assert (resolved["batch"], resolved["seed"]) == (32, 7)
    # …and it trained at 32: 64 images seen in two steps of 32.
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert max(int(s.get("step", 0)) for s in steps) == 2


def test_dp_without_kimg_is_refused_with_the_reason(tiny_site: Path, tmp_path: Path) -> None:
    code, out = _train(tiny_site, tmp_path, "--max-minutes", "1", "--dp-epsilon", "5")
    assert code != 0
    assert "DP training needs --kimg" in out
    assert not (tiny_site / "runs" / "default" / "checkpoint.pt").exists()
