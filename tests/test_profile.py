"""Parameter and MAC counts against the published figures, and the ``profile`` command."""

import argparse
import json

import pytest

from efficientformer import create_model, list_models
from efficientformer.bench.profile import PUBLISHED, paper_param_count, profile_model
from efficientformer.cli.deploy import register
from efficientformer.deploy import deploy


def run_cli(argv):
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.mark.parametrize("name", list_models())
def test_published_params_and_macs_at_224(name):
    pub_params, pub_gmacs = PUBLISHED[name]
    res = profile_model(create_model(name), 224)
    assert abs(res.macs / 1e9 / pub_gmacs - 1) < 0.02, (res.macs, pub_gmacs)
    # Paper convention: the published M-params to three decimals.
    assert abs(res.paper_params / 1e6 - pub_params) <= 0.0006, res.paper_params
    assert res.params > res.paper_params
    assert sum(r.macs for r in res.stages) == res.macs
    assert sum(r.params for r in res.stages) == res.params
    assert all(r.macs > 0 for r in res.stages)


def test_deployed_model_has_same_macs_and_fewer_params():
    m = create_model("efficientformerv2_s0", img_size=64).eval()
    a, b = profile_model(m, 64), profile_model(deploy(m), 64)
    assert abs(a.macs - b.macs) / a.macs < 0.01  # BN folding removes no MACs FlopCounterMode counts
    assert b.params < a.params
    assert paper_param_count(m) == a.paper_params


def test_macs_scale_with_resolution():
    m = create_model("efficientformer_l1")
    assert profile_model(m, 448).macs > 3.5 * profile_model(m, 224).macs


def test_profile_cli_json(capsys):
    assert run_cli(["profile", "--model", "efficientformerv2_s0", "--img-size", "64", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["model"] == "efficientformerv2_s0" and out[0]["img_size"] == [64, 64]
    assert [r["name"] for r in out[0]["stages"]] == ["stem", "stage1", "stage2", "stage3", "stage4", "head"]


def test_profile_cli_table(capsys):
    assert run_cli(["profile", "--model", "efficientformer_l1"]) == 0
    out = capsys.readouterr().out
    assert "12.250 M (paper convention)" in out and "published" in out


def test_profile_bad_inputs():
    with pytest.raises(ValueError, match="multiples? of 32"):
        run_cli(["profile", "--model", "efficientformerv2_s0", "--img-size", "100"])
    with pytest.raises(ValueError, match="unknown model"):
        run_cli(["profile", "--model", "efficientformer_l2"])
