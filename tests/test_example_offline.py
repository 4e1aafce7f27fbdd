"""The offline diffusion example runs in its fast mode and shows what it claims."""

import importlib.util
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "offline_diffusion.py"


def test_offline_diffusion_example_fast(capsys):
    spec = importlib.util.spec_from_file_location("offline_diffusion_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    res = module.main(["--fast"])
    printed = capsys.readouterr().out
    for name in ("plain kNN", "offline diffusion", "transductive", "R-DiP"):
        assert name in printed
    # diffusion helps on the digits' manifold structure (cosine 600-item split vs. diffusion)
    assert res["offline"] > res["knn"]
    assert res["per_query_ms"] > 0
