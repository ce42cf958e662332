"""torch.compile (no graph breaks), torch.export and torch.jit.trace on every variant in eval mode."""

import pytest
import torch

from efficientformer import create_model, list_models


@pytest.mark.parametrize("name", list_models())
def test_trace_export_and_compile(name):
    model = create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
        traced = torch.jit.trace(model, x)
        assert torch.allclose(traced(x), ref, atol=1e-5)
        exported = torch.export.export(model, (x,))
        assert torch.allclose(exported.module()(x), ref, atol=1e-5)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
        assert torch.allclose(compiled(x), ref, atol=1e-5)


@pytest.mark.slow
def test_inductor_compile_s0():
    model = create_model("efficientformerv2_s0").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-4, atol=1e-4)
