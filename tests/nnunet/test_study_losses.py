"""The nnU-Net trainers in the study's loss list: named in `calibseg study --help` and accepted
by the study's loss check when nnU-Net is installed; without it not offered, and naming one is
one error line with the install command."""

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


def test_check_accepts_trainer_losses_with_the_extra(monkeypatch):
    monkeypatch.setattr(nn_pkg, "nnunet_available", lambda: True)
    StudySettings(losses=("baseline_dice_ce", *NNUNET_NAMES)).check()
    StudySettings(losses=("nnunet_dicece",)).check()


def test_check_without_the_extra_names_the_install(monkeypatch):
    monkeypatch.setattr(nn_pkg, "nnunet_available", lambda: False)
    with pytest.raises(ValueError, match="nnunet_hardl1ace is an nnU-Net loss") as err:
        StudySettings(losses=("baseline_dice_ce", "nnunet_hardl1ace")).check()
    assert "pip install 'calibseg[nnunet]'" in str(err.value)


def test_check_refuses_seed_or_patience_in_nnunet_options(monkeypatch):
    from calibseg.nnunet.options import TrainOptions

    monkeypatch.setattr(nn_pkg, "nnunet_available", lambda: True)
    for options in (TrainOptions(seed=3), TrainOptions(patience=2)):
        with pytest.raises(ValueError, match="without seed and patience"):
            StudySettings(losses=("nnunet_dicece",), nnunet_options=options).check()


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


def test_study_without_the_extra_is_one_line(tmp_path):
    """The console script with nnunetv2 hidden: the nnU-Net loss is named with the install
    command, in one line, exit 1, before anything is written."""
    cmd = [
        sys.executable,
        "-c",
        HIDE + "sys.argv = ['calibseg', 'study', '--out', 's', '--losses', "
        "'baseline_dice_ce,nnunet_softl1ace']; main()",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert "nnunet_softl1ace is an nnU-Net loss" in lines[0]
    assert "pip install 'calibseg[nnunet]'" in lines[0]
    assert not (tmp_path / "s").exists()
