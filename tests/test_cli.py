"""The `roomlens` command line, run in-process on the real models."""

from __future__ import annotations

import pytest

from roomlens.cli import build_parser, main


def test_models_list_reports_real_weights(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "nanodet-m-416" in out and "u2netp" in out and "efficientnet-lite0" in out
    assert "ceaaafe9cb954496426b750682b9d1f593721d109668dbb4d525945cda99be39" in out
    assert "FAILS" not in out


def test_every_subcommand_has_help() -> None:
    parser = build_parser()
    for command in ("migrate", "index", "serve", "search", "eval", "models", "segment"):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args([command, "--help"])
        assert exc.value.code == 0


def test_missing_photo_is_a_clean_error(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    code = main(["search", str(tmp_path / "nope.jpg")])
    assert code == 1
    assert "cannot read" in capsys.readouterr().err
