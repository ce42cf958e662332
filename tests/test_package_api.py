"""The package root re-exports the public API, lazily for the heavy parts, and stably."""

import importlib

import efficientformer


def test_root_deploy_api_is_stable_across_imports():
    first = efficientformer.deploy_model
    importlib.import_module("efficientformer.deploy")  # the subpackage import must not shadow the function
    from efficientformer.deploy import deploy

    assert efficientformer.deploy_model is first is deploy
    assert callable(efficientformer.save_deployed) and callable(efficientformer.load_deployed)
    assert set(efficientformer.__all__) >= {"create_model", "load_checkpoint", "deploy_model", "inference_model"}
    for name in efficientformer.__all__:
        assert getattr(efficientformer, name) is not None
