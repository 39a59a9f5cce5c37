"""`torchshrink plan` flags of the joint search's local search and workers."""

from __future__ import annotations

import pytest

from torchshrink.cli import main


@pytest.mark.parametrize("flags, named", [(["--refine", "4"], "--refine"), (["--workers", "2"], "--workers"),
                                          (["--ray-address", "auto"], "--ray-address")])
def test_joint_only_flags_without_search_joint_are_an_error(capsys: pytest.CaptureFixture[str], flags: list[str],
                                                            named: str) -> None:
    code = main(["plan", "--model", "lenet300", "--data", "synthetic", "--max-bytes", "0.1", *flags])
    err = capsys.readouterr().err
    assert code == 2 and f"{named} belong to the joint search: add --search joint" in err
