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
  *_peak_rss_mb          peak resident memory (ru_maxrss) of a fresh process that loads the
                         network and runs one forward pass; the ONNX Runtime process does not
                         import torch (the model is exported beforehand). With --ours, also
                         `patchcore predict` of one image (WRN-50-2 weights file with all layers,
                         ~1,646-row bank), the whole inspection, not just the backbone

Weights are random (torchvision's init, seeded, plus randomised BatchNorm statistics): speed
does not depend on their values, and no download is needed. Optionally (--ours) the script then runs the
crate's own criterion benches for the same figures and prints both side by side, reading the
medians criterion writes under target/criterion.

Requires: torch, torchvision, onnx, onnxruntime, faiss-cpu, numpy, pillow (all from PyPI) and GNU
time (`/usr/bin/time`, Debian package `time`) for the peak-RSS figures. Nothing in the crate's
build or tests needs Python.

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

    # Seeded, so that every call builds the same network (the reduced-precision anchors compare
    # an exported copy with the PyTorch original); the global RNG is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
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
    """Median wall time in ms of `repeats` calls after `warmup` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def torch_forward(name, threads, repeats, size=224, batch=1, warmup=3):
    import torch

    torch.set_num_threads(threads)
    net = truncated(name)
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        return median_ms(lambda: net(x), repeats, warmup)


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


def child_peak_rss_mb(cmd):
    """Peak RSS of a process running `cmd`, measured by GNU time (`/usr/bin/time -f %M`).

    Not `os.wait4` on a child of this interpreter: Linux carries the RSS high-water mark of the
    forked parent (this process, with torch loaded) across `exec`, so the child would report at
    least the parent's size. GNU time is a small process, so its child starts small.
    """
    with tempfile.NamedTemporaryFile("r") as out:
        subprocess.run(
            ["/usr/bin/time", "-f", "%M", "-o", out.name] + cmd,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        return int(out.read().split()[-1]) / 1024.0


def torch_peak_rss_mb(name, threads):
    """A fresh interpreter that builds the network and runs one forward pass in PyTorch."""
    here = os.path.dirname(os.path.abspath(__file__))
    code = (
        f"import sys; sys.path.insert(0, {here!r}); import compare_onnxruntime as c; "
        f"c.torch_forward({name!r}, {threads}, 1, warmup=0)"
    )
    return child_peak_rss_mb([sys.executable, "-c", code])


def ort_peak_rss_mb(name, threads, workdir):
    """A fresh interpreter that loads the exported ONNX model and runs it once (no torch)."""
    import torch

    path = os.path.join(workdir, f"{name}.onnx")
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(truncated(name), (x,), path, input_names=["x"], output_names=["y"], dynamo=False)
    code = (
        "import numpy as np, onnxruntime as ort; so = ort.SessionOptions(); "
        f"so.intra_op_num_threads = {threads}; "
        f"s = ort.InferenceSession({path!r}, so, providers=['CPUExecutionProvider']); "
        "s.run(None, {'x': np.zeros((1, 3, 224, 224), np.float32)})"
    )
    return child_peak_rss_mb([sys.executable, "-c", code])


def ours_peak_rss_mb(workdir):
    """`patchcore predict` of one image with WRN-50-2 (a full torchvision-layout weights file
    with random values) and a memory bank of ~1,646 rows (21 fitted images, coreset 10 %)."""
    import numpy as np
    import torch
    import torchvision
    from PIL import Image
    from safetensors.torch import save_file

    subprocess.run(["cargo", "build", "--release", "--bin", "patchcore"], cwd=REPO, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    exe = os.path.join(target, "release", "patchcore")
    net = torchvision.models.wide_resnet50_2(weights=None).eval()
    weights = os.path.join(workdir, "wide_resnet50_2.safetensors")
    save_file(
        {
            k: v.detach().float().contiguous()
            for k, v in net.state_dict().items()
            if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
        },
        weights,
    )
    train = os.path.join(workdir, "train")
    os.makedirs(train, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(21):
        img = np.clip(120 + rng.normal(0, 12, size=(300, 300, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(train, f"{i:03}.png"))
    test = os.path.join(workdir, "test.png")
    Image.fromarray(img).save(test)
    model = os.path.join(workdir, "model.safetensors")
    subprocess.run(
        [exe, "fit", "--weights", weights, "--train", train, "--out", model, "--coreset", "0.1",
         "--force"],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    return child_peak_rss_mb([exe, "predict", "--model", model, "--weights", weights, test])


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
        ("predict", "224/bank1638"),
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
        # The same search without the bf16 screen (the f32 GEMM path alone).
        "ours_knn_784x1638_noscreen": criterion_median_ms(
            "knn_784x1024", "bank1638_noscreen", "k1"
        ),
        "ours_knn_784x16384_noscreen": criterion_median_ms(
            "knn_784x1024", "bank16384_noscreen", "k1"
        ),
        "ours_coreset_1pct": criterion_median_ms("full", "greedy_1pct", "163840x1024"),
        "ours_predict_wrn50_2_224_bank1638": criterion_median_ms(
            "predict_wrn50_2", "224_bank1638", "full"
        ),
        "ours_predict_wrn50_2_224_bank1638_score_only": criterion_median_ms(
            "predict_wrn50_2", "224_bank1638", "score_only"
        ),
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
        r["torch_wrn50_2_peak_rss_mb"] = torch_peak_rss_mb("wide_resnet50_2", a.threads)
        with tempfile.TemporaryDirectory() as d:
            r["ort_wrn50_2_peak_rss_mb"] = ort_peak_rss_mb("wide_resnet50_2", a.threads, d)
            if a.ours:
                r["ours_predict_wrn50_2_peak_rss_mb"] = ours_peak_rss_mb(d)
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
