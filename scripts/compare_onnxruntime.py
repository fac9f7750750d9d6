#!/usr/bin/env python3
"""Measure the public tools this crate is compared with, on this machine, in one run.

Anchors (all CPU, float32, the thread count given by --threads, medians of repeated runs):

  torch_wrn50_2_layer3   PyTorch eager, torchvision wide_resnet50_2 truncated after layer3, 224x224
  ort_wrn50_2_layer3     ONNX Runtime, the same network exported to ONNX (all graph optimisations)
  torch_resnet18_layer3  PyTorch eager, resnet18 truncated after layer3
  ort_resnet18_layer3    ONNX Runtime, the same
  faiss_784x1638 / faiss_784x16384
                         faiss IndexFlatL2 (exact), 784 queries x 1024 dims, k = 1
  torch_coreset_1pct     (--coreset) PyTorch greedy k-center as in the original PatchCore code:
                         projection 1024 -> 128, 1 % of 163,840 rows, one-row-at-a-time updates
  *_peak_rss_mb          peak resident memory of a fresh process that loads the network and runs
                         one forward pass (ru_maxrss of the child)

Weights are random (torchvision's init plus randomised BatchNorm statistics): speed does not
depend on their values, and no download is needed. Optionally (--ours) the script then runs the
crate's own criterion benches for the same figures and prints both side by side, reading the
medians criterion writes under target/criterion.

Requires: torch, torchvision, onnx, onnxruntime, faiss-cpu, numpy (all from PyPI). Nothing in the
crate's build or tests needs Python.

Usage: python3 scripts/compare_onnxruntime.py [--threads 2] [--repeats 30] [--coreset] [--ours]
                                             [--json OUT.json]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def truncated(name):
    import torch
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)
    body = torch.nn.Sequential(
        net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3
    )
    return body.eval()


def median_ms(fn, repeats, warmup=3):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def torch_forward(name, threads, repeats, size=224, batch=1):
    import torch

    torch.set_num_threads(threads)
    net = truncated(name)
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        return median_ms(lambda: net(x), repeats)


def ort_forward(name, threads, repeats, size=224, batch=1):
    import numpy as np
    import onnxruntime as ort
    import torch

    net = truncated(name)
    x = torch.randn(batch, 3, size, size)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, f"{name}.onnx")
        torch.onnx.export(net, (x,), path, input_names=["x"], output_names=["y"], dynamo=False)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    xin = {"x": x.numpy().astype(np.float32)}
    return median_ms(lambda: sess.run(None, xin), repeats)


def faiss_knn(bank_rows, threads, repeats, queries=784, dim=1024, k=1):
    import faiss
    import numpy as np

    faiss.omp_set_num_threads(threads)
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((bank_rows, dim), dtype=np.float32)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    index = faiss.IndexFlatL2(dim)
    index.add(bank)
    return median_ms(lambda: index.search(q, k), repeats)


def torch_coreset(threads, rows=163_840, dim=1024, ratio=0.01):
    """The original PatchCore greedy k-center (ApproximateGreedy's plain sibling), in torch."""
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(rows, dim, generator=g)
    t = time.perf_counter()
    proj = torch.nn.Linear(dim, 128, bias=False)
    with torch.no_grad():
        reduced = proj(feats)
        n = int(rows * ratio)
        idx = [0]
        mind = torch.linalg.norm(reduced - reduced[0:1], dim=1)
        for _ in range(n - 1):
            i = int(torch.argmax(mind))
            idx.append(i)
            mind = torch.minimum(mind, torch.linalg.norm(reduced - reduced[i : i + 1], dim=1))
    return (time.perf_counter() - t) * 1e3


def peak_rss_mb(kind, name, threads):
    """Peak RSS of a fresh interpreter doing one forward pass with `kind` (torch or ort)."""
    code = (
        "import sys; sys.path.insert(0, %r); import compare_onnxruntime as c; "
        "c.%s_forward(%r, %d, 1)" % (os.path.dirname(os.path.abspath(__file__)), kind, name, threads)
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-c", code], check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(before, after) / 1024.0


def criterion_median_ms(*parts):
    path = os.path.join(REPO, "target", "criterion", *parts, "new", "estimates.json")
    target = os.environ.get("CARGO_TARGET_DIR")
    if target:
        path = os.path.join(target, "criterion", *parts, "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"] / 1e6


def run_ours():
    benches = [
        ("backbone", "/1$"),
        ("knn", "k1$"),
        ("coreset", "greedy_1pct/"),
    ]
    for bench, flt in benches:
        subprocess.run(
            ["cargo", "bench", "--bench", bench, "--", flt, "--sample-size", "10"],
            cwd=REPO,
            check=True,
        )
    return {
        "ours_wrn50_2_layer3": criterion_median_ms("backbone_to_layer3_224", "wide_resnet50_2", "1"),
        "ours_resnet18_layer3": criterion_median_ms("backbone_to_layer3_224", "resnet18", "1"),
        "ours_knn_784x1638": criterion_median_ms("knn_784x1024", "bank1638", "k1"),
        "ours_knn_784x16384": criterion_median_ms("knn_784x1024", "bank16384", "k1"),
        "ours_coreset_1pct": criterion_median_ms("full", "greedy_1pct", "163840x1024"),
    }


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--coreset", action="store_true", help="also time the torch greedy coreset")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--ours", action="store_true", help="also run the crate's criterion benches")
    p.add_argument("--json", help="write the results to this file")
    a = p.parse_args(argv)

    import faiss
    import onnxruntime
    import torch

    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, faiss {faiss.__version__}, "
        f"threads {a.threads}",
        flush=True,
    )
    r = {}
    for name in ["wide_resnet50_2", "resnet18"]:
        short = name.replace("wide_resnet", "wrn").replace("resnet", "resnet")
        r[f"torch_{short}_layer3"] = torch_forward(name, a.threads, a.repeats)
        r[f"ort_{short}_layer3"] = ort_forward(name, a.threads, a.repeats)
        print({k: round(v, 2) for k, v in r.items()}, flush=True)
    for rows in [1638, 16384]:
        r[f"faiss_784x{rows}"] = faiss_knn(rows, a.threads, a.repeats)
    if a.coreset:
        r["torch_coreset_1pct"] = torch_coreset(a.threads)
    if not a.no_rss:
        r["torch_wrn50_2_peak_rss_mb"] = peak_rss_mb("torch", "wide_resnet50_2", a.threads)
        r["ort_wrn50_2_peak_rss_mb"] = peak_rss_mb("ort", "wide_resnet50_2", a.threads)
    if a.ours:
        r.update(run_ours())
    width = max(len(k) for k in r)
    for k, v in r.items():
        unit = "MB" if k.endswith("_mb") else "ms"
        print(f"{k:<{width}}  {v:10.2f} {unit}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
