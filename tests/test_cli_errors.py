"""The command line's error contract: one line by default, the full traceback on request."""

import argparse

import pytest

import efficientformer.cli as cli


def _parser_with(func):
    parser = argparse.ArgumentParser(prog="efficientformer")
    parser.add_argument("--traceback", action="store_true")
    sub = parser.add_subparsers(dest="command")
    p = sub.add_parser("boom")
    p.add_argument("--x", default=None)
    p.set_defaults(func=func)
    return parser


def _bug(args):
    raise KeyError("some internal key")


def _user_error(args):
    raise ValueError("--x must be positive, got -1\nsecond line that is not shown")


def _permission(args):
    raise PermissionError(13, "Permission denied", "/root/out.onnx")


def test_a_bug_is_one_line_with_a_pointer_to_traceback(capsys, monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    assert cli.main(["boom"], parser=_parser_with(_bug)) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "internal error: KeyError" in err and "--traceback" in err


@pytest.mark.parametrize("argv", [["--traceback", "boom"], ["boom", "--traceback"]])
def test_traceback_flag_anywhere_shows_the_full_traceback(argv, capsys, monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    assert cli.main(argv, parser=_parser_with(_bug)) == 1
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "_bug" in err


def test_traceback_env_var_and_user_errors(capsys, monkeypatch):
    monkeypatch.setenv(cli.TRACEBACK_ENV, "1")
    assert cli.main(["boom"], parser=_parser_with(_user_error)) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().endswith("error: --x must be positive, got -1")
    monkeypatch.delenv(cli.TRACEBACK_ENV)
    assert cli.main(["boom"], parser=_parser_with(_permission)) == 2
    assert capsys.readouterr().err.strip() == "efficientformer boom: error: /root/out.onnx: Permission denied"


def test_real_parser_accepts_the_flag():
    assert "--traceback" in cli.build_parser().format_help()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["zoo", "*s0", "--runs", "0"], "--runs must be at least 1, got 0"),
        (["zoo", "*s0", "--img-size", "100"], "multiples of 32"),
        (["predict", "x.png", "--model", "efficientformerv2_s0", "--max-pixels", "0"], "--max-pixels must be"),
        (
            ["eval", "--model", "efficientformerv2_s0", "--checkpoint", "c.pth", "--data", ".", "--max-pixels", "0"],
            "--max-pixels must be",
        ),
        (["train", "--max-pixels", "0"], "max_pixels"),
    ],
)
def test_bad_options_are_one_line(argv, needle, capsys, monkeypatch):
    monkeypatch.delenv(cli.TRACEBACK_ENV, raising=False)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and needle in err


def test_work_moved_out_of_the_cli_keeps_its_old_import_path_with_a_deprecation_warning():
    import efficientformer.cli.zoo as cli_zoo
    from efficientformer.bench.profile import zoo_summary

    with pytest.warns(DeprecationWarning, match="efficientformer.bench.profile.zoo_summary"):
        assert cli_zoo.zoo_summary is zoo_summary
