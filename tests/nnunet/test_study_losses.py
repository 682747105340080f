"""The nnU-Net trainers in the study's loss list: named in `calibseg study --help` and by the
study's loss check when nnU-Net is installed, absent otherwise."""

import os
import subprocess
import sys

import pytest

import calibseg.nnunet as nn_pkg
from calibseg.bundles import LOSSES as BUNDLE_LOSSES
from calibseg.evaluate.study import StudySettings

EXE = os.path.join(os.path.dirname(sys.executable), "calibseg")
HIDE = "import sys; sys.modules['nnunetv2'] = None; from calibseg.cli.app import main; "
NNUNET_NAMES = ["nnunet_dicece", "nnunet_hardl1ace", "nnunet_softl1ace"]


def test_study_losses_follow_the_extra(monkeypatch):
    monkeypatch.setattr(nn_pkg, "nnunet_available", lambda: True)
    assert list(nn_pkg.study_losses()) == NNUNET_NAMES
    monkeypatch.setattr(nn_pkg, "nnunet_available", lambda: False)
    assert nn_pkg.study_losses() == ()


def test_check_names_the_nnunet_command_for_a_trainer_loss(monkeypatch):
    monkeypatch.setattr(nn_pkg, "nnunet_available", lambda: True)
    with pytest.raises(ValueError, match=r"nnunet ensemble train … --loss hardl1ace"):
        StudySettings(losses=("baseline_dice_ce", "nnunet_hardl1ace")).check()


def test_check_lists_the_valid_losses(monkeypatch):
    for available in (True, False):
        monkeypatch.setattr(nn_pkg, "nnunet_available", lambda a=available: a)
        with pytest.raises(ValueError, match="unknown loss 'focal'") as err:
            StudySettings(losses=("focal",)).check()
        msg = str(err.value)
        assert all(name in msg for name in BUNDLE_LOSSES)
        assert all((name in msg) == available for name in NNUNET_NAMES)
    StudySettings(losses=("baseline_dice_ce", "hardl1ace_dice_ce_paper")).check()


def _help(code_prefix: str = "") -> str:
    if code_prefix:
        cmd = [
            sys.executable,
            "-c",
            code_prefix + "sys.argv = ['calibseg', 'study', '--help']; main()",
        ]
    else:
        cmd = [EXE, "study", "--help"]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "400"}
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_study_help_through_the_console_script():
    out = _help()
    assert "hardl1ace_dice_ce_paper" in out
    for name in NNUNET_NAMES:
        assert (name in out) == nn_pkg.nnunet_available()
    # without the extra the help names only the bundle losses
    hidden = _help(HIDE)
    assert "hardl1ace_dice_ce_paper" in hidden and "nnunet_" not in hidden


def test_study_refuses_a_trainer_loss_in_one_line(tmp_path, error_line):
    if not nn_pkg.nnunet_available():
        pytest.skip("nnU-Net extra not installed (make nnunet or pip install 'calibseg[nnunet]')")
    line = error_line(
        ["study", "--out", str(tmp_path / "s"), "--losses", "nnunet_softl1ace"], tmp_path
    )
    assert "--loss softl1ace" in line
    assert not (tmp_path / "s").exists()
