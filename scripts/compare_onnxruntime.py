#!/usr/bin/env python3
"""Measure the public tools this crate is compared with, on this machine, in one run.

Anchors (all CPU, float32 unless said, the thread count given by --threads, medians of repeated
runs, batch 1):

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

Reduced precision (--reduced), for wrn50_2 and resnet18, each truncated after layer3, 224x224, all
from one ONNX export of the network that the PyTorch reference runs:

  ov_<net>_layer3        OpenVINO CPU plugin, INFERENCE_PRECISION_HINT f32 (explicitly: on a CPU
                         with AMX or AVX512-BF16 the plugin's default is bf16), one stream of
                         --threads threads, latency hint
  ov_bf16_<net>_layer3   the same with the hint bf16
  ov_int8_<net>_layer3   after NNCF post-training quantisation (`nncf.quantize`, default preset:
                         int8 weights per channel, symmetric int8/uint8 activations, fast bias
                         correction), compiled with the hint f32, so that anything NNCF leaves
                         unquantised runs in f32
  ort_int8_<net>_layer3  ONNX Runtime, `quant_pre_process`, then `quantize_static`: QDQ format,
                         per-channel int8 weights, uint8 activations (U8S8), MinMax calibration;
                         session options as for ort_<net>_layer3
  <key>_maxrel, <key>_l2rel
                         error of that layer3 output `a` against PyTorch f32's `b` on one held-out
                         input, over the whole 1024x14x14 tensor, in float64:
                           maxrel = max|a - b| / max|b|,   l2rel = ||a - b||_2 / ||b||_2
                         (also for the f32 ort_ and ov_ keys: their rounding floor, ~1e-6)

Calibration set (--calib, default 64) and held-out input are synthetic, generated here, nothing is
downloaded: each image is a smooth random colour field with random rectangles and ellipses and
pixel noise (`synthetic_images`, seed 1 for calibration, seed 2 for the held-out one), preprocessed
as for the f32 model and the crate: [0, 1], ImageNet mean/std. Both quantisers calibrate on the same
images. With random weights the activation statistics are not those of a trained network, so the
errors are an indication of each method's error on this architecture, not of its accuracy on real
data. The script also prints, per variant, what actually ran: for OpenVINO the precision the plugin
settled on and, from its per-layer profiling, the executed nodes' oneDNN kernels (e.g.
`brgconv_avx512_amx_bf16`: AMX) and runtime precisions; for ONNX Runtime int8 the node types of the
optimised graph (e.g. QLinearConv). These go to the --json file under "notes".

--reduced is off by default: it needs two more packages, and the existing runs (BENCHMARKS.md) keep
their command, dependencies and run time. With it, the two calibrations take well under a minute
on two cores.

--ours-int8 runs `cargo bench --bench backbone -- int8` and reports every criterion median that
run wrote whose path names int8, as `ours_<group>_<function>_<param>`; --ours-bf16 does the same
for bf16.

Weights are random (torchvision's init, seeded, plus randomised BatchNorm statistics): speed
does not depend on their values, and no download is needed. Optionally (--ours) the script then
runs the crate's own criterion benches for the same figures and prints both side by side, reading
the medians criterion writes under target/criterion.

Requires: torch, torchvision, onnx, onnxruntime, faiss-cpu, numpy, pillow (all from PyPI) and GNU
time (`/usr/bin/time`, Debian package `time`) for the peak-RSS figures; with --reduced also
openvino and nncf (PyPI). Nothing in the crate's build or tests needs Python.

Usage: python3 scripts/compare_onnxruntime.py [--threads 2] [--repeats 30] [--coreset] [--ours]
                                             [--reduced [--calib 64]] [--ours-int8] [--ours-bf16]
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


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def synthetic_images(n, seed, size=224):
    """`n` synthetic RGB images, preprocessed as the f32 models expect: [0, 1], then ImageNet
    mean/std (the crate's `IMAGENET_MEAN`/`IMAGENET_STD`), NCHW float32, shape (n, 3, size, size).

    Each image is a smooth random colour field (a 6x6 grid of random colours, bicubic upsampling)
    with 2-6 random filled rectangles and ellipses and Gaussian pixel noise (sigma 6 grey levels):
    texture-like, not natural images, and nothing is downloaded.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    mean = np.array(IMAGENET_MEAN, np.float32)[:, None, None]
    std = np.array(IMAGENET_STD, np.float32)[:, None, None]
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        grid = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(grid).resize((size, size), Image.BICUBIC)
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(2, 7))):
            x0, y0 = (int(v) for v in rng.integers(0, size - 20, size=2))
            x1, y1 = x0 + int(rng.integers(10, size // 2)), y0 + int(rng.integers(10, size // 2))
            fill = tuple(int(v) for v in rng.integers(0, 256, size=3))
            (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x1, y1], fill=fill)
        a = np.asarray(img, np.float32) + rng.normal(0.0, 6.0, size=(size, size, 3))
        a = np.clip(a, 0, 255).round() / 255.0
        out[i] = (a.transpose(2, 0, 1) - mean) / std
    return out


def rel_errors(a, b):
    """(max|a-b| / max|b|, ||a-b||_2 / ||b||_2) of output `a` against the f32 reference `b`,
    both over the whole layer3 tensor, in float64."""
    import numpy as np

    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    d = a - b
    return float(np.abs(d).max() / np.abs(b).max()), float(np.linalg.norm(d) / np.linalg.norm(b))


def ov_kernels(core, model, config, x, runs=3):
    """What the OpenVINO CPU plugin ran: a second compilation of `model` with `config` and
    per-layer profiling (PERF_COUNT) gives the inference precision the plugin settled on and, for
    the nodes executed in the last of `runs` inferences, their count, oneDNN kernel (`exec_type`,
    e.g. `brgconv_avx512_amx_bf16`), runtime precision (from the execution graph: `u8` for a
    quantised convolution reading unsigned activations) and summed time, per node type. Fused
    nodes (ReLU, Add) do not run on their own and are left out, as are the weight reorders done
    once at compilation."""
    import collections

    compiled = core.compile_model(model, "CPU", dict(config, PERF_COUNT=True))
    req = compiled.create_infer_request()
    for _ in range(runs):
        req.infer({0: x})
    precision = {
        op.get_friendly_name(): op.get_rt_info()["runtimePrecision"].astype(str)
        for op in compiled.get_runtime_model().get_ordered_ops()
    }
    count, ms = collections.Counter(), collections.Counter()
    for p in req.profiling_info:
        if str(p.status).endswith("EXECUTED"):
            kernel = f"{p.exec_type}/{precision.get(p.node_name, '?')}"
            count[(p.node_type, kernel)] += 1
            ms[(p.node_type, kernel)] += p.real_time.total_seconds() * 1e3
    hint = compiled.get_property("INFERENCE_PRECISION_HINT")
    hint = getattr(hint, "to_string", lambda: str(hint))()
    return f"precision {hint}; " + ", ".join(
        f"{node} {k}x {kernel} {ms[(node, kernel)]:.1f} ms"
        for (node, kernel), k in sorted(count.items(), key=lambda kv: -ms[kv[0]])
    )


def ort_session(path, threads, optimized=None):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized:
        so.optimized_model_filepath = optimized
    so.log_severity_level = 3
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def onnx_op_counts(path):
    import collections

    import onnx

    c = collections.Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node)
    return ", ".join(f"{k}x {op}" for op, k in c.most_common())


def reduced_precision(name, short, threads, repeats, calib, heldout, workdir):
    """OpenVINO f32 / bf16 / int8 (NNCF) and ONNX Runtime int8 (static QDQ) of one truncated
    network, all from one ONNX export of it, timed like `ort_forward` and compared with PyTorch
    f32 on the held-out input. Returns (figures, notes)."""
    import nncf
    import openvino as ov
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    r, notes = {}, {}
    net = truncated(name)
    f32_path = os.path.join(workdir, f"{name}.onnx")
    x0 = torch.from_numpy(heldout)
    torch.onnx.export(net, (x0,), f32_path, input_names=["x"], output_names=["y"], dynamo=False)
    with torch.inference_mode():
        ref = net(x0).numpy()
    x = {"x": heldout}

    def errors(key, out):
        r[f"{key}_maxrel"], r[f"{key}_l2rel"] = rel_errors(out, ref)

    # ONNX Runtime f32, on the same export: only the error (its time is ort_forward's).
    errors(f"ort_{short}_layer3", ort_session(f32_path, threads).run(None, x)[0])

    # OpenVINO, compiled for one stream of `threads` threads, latency hint.
    core = ov.Core()
    ov_f32 = core.read_model(f32_path)

    def ov_run(key, model, precision):
        config = {
            "INFERENCE_PRECISION_HINT": precision,
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        req = core.compile_model(model, "CPU", config).create_infer_request()
        out = req.infer({0: heldout})[0]
        r[key] = median_ms(lambda: req.infer({0: heldout}), repeats)
        errors(key, out)
        notes[key] = ov_kernels(core, model, config, heldout)

    ov_run(f"ov_{short}_layer3", ov_f32, "f32")
    ov_run(f"ov_bf16_{short}_layer3", ov_f32, "bf16")

    # NNCF post-training quantisation (default preset: symmetric int8 activations, per-channel
    # int8 weights; fast bias correction), then compiled with the f32 hint so that whatever NNCF
    # leaves unquantised runs in f32, not in the plugin's default bf16.
    t = time.perf_counter()
    ov_q = nncf.quantize(
        ov_f32, nncf.Dataset(list(calib), lambda im: im[None]), subset_size=len(calib)
    )
    notes[f"ov_int8_{short}_layer3_calibration"] = (
        f"nncf.quantize, {len(calib)} images, {time.perf_counter() - t:.1f} s"
    )
    ov_run(f"ov_int8_{short}_layer3", ov_q, "f32")

    # ONNX Runtime static quantisation: QDQ format, per-channel int8 weights, uint8 activations
    # (the x86 default, U8S8), MinMax calibration on the same images.
    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            im = next(self.it, None)
            return None if im is None else {"x": im[None]}

    pre_path = os.path.join(workdir, f"{name}.pre.onnx")
    q_path = os.path.join(workdir, f"{name}.qdq.onnx")
    t = time.perf_counter()
    quant_pre_process(f32_path, pre_path)
    quantize_static(
        pre_path,
        q_path,
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    key = f"ort_int8_{short}_layer3"
    notes[f"{key}_calibration"] = (
        f"quantize_static, {len(calib)} images, {time.perf_counter() - t:.1f} s"
    )
    optimized = os.path.join(workdir, f"{name}.qdq.optimized.onnx")
    sess = ort_session(q_path, threads, optimized)
    out = sess.run(None, x)[0]
    r[key] = median_ms(lambda: sess.run(None, x), repeats)
    errors(key, out)
    notes[key] = "optimised graph: " + onnx_op_counts(optimized)
    return r, notes

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


def run_ours_int8(bench="backbone", filt="int8"):
    """The crate's own int8 (or, with filt="bf16", bf16) backbone bench, if there is one: every criterion median under
    target/criterion whose path names `filt` and that this run wrote, as `ours_<path>`."""
    start = time.time()
    subprocess.run(
        ["cargo", "bench", "--bench", bench, "--", filt, "--sample-size", "10"],
        cwd=REPO,
        check=True,
    )
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))
    root = os.path.join(target, "criterion")
    r = {}
    for d, _, files in os.walk(root):
        path = os.path.join(d, "estimates.json")
        rel = os.path.relpath(d, root).split(os.sep)
        if "estimates.json" in files and rel[-1] == "new" and filt in os.path.join(*rel):
            if os.path.getmtime(path) >= start:
                with open(path) as f:
                    r["ours_" + "_".join(rel[:-1])] = json.load(f)["median"]["point_estimate"] / 1e6
    if not r:
        print(f"--ours-{filt}: no criterion result naming {filt!r} was written", flush=True)
    return r


def is_ms(key):
    """Figures are times in ms, except peak RSS (`_mb`) and relative errors (`_maxrel`,
    `_l2rel`)."""
    return not key.endswith(("_mb", "_maxrel", "_l2rel"))


def main(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--coreset", action="store_true", help="also time the torch greedy coreset")
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS subprocesses")
    p.add_argument("--ours", action="store_true", help="also run the crate's criterion benches")
    p.add_argument(
        "--reduced",
        action="store_true",
        help="also OpenVINO f32/bf16/int8 and ONNX Runtime int8, with their errors (calibrates)",
    )
    p.add_argument("--calib", type=int, default=64, help="calibration images for --reduced")
    p.add_argument(
        "--ours-int8",
        action="store_true",
        help="also run `cargo bench --bench backbone -- int8` and report what it wrote",
    )
    p.add_argument(
        "--ours-bf16",
        action="store_true",
        help="also run `cargo bench --bench backbone -- bf16` and report what it wrote",
    )
    p.add_argument("--json", help="write the results to this file")
    a = p.parse_args(argv)

    import faiss
    import onnxruntime
    import torch

    versions = (
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, "
        f"faiss {faiss.__version__}"
    )
    if a.reduced:
        import nncf
        import openvino

        versions += f", openvino {openvino.__version__}, nncf {nncf.__version__}"
        calib = synthetic_images(a.calib, seed=1)
        heldout = synthetic_images(1, seed=2)
    print(f"{versions}, threads {a.threads}", flush=True)
    r, notes = {}, {}
    for name in ["wide_resnet50_2", "resnet18"]:
        short = name.replace("wide_resnet", "wrn").replace("resnet", "resnet")
        r[f"torch_{short}_layer3"] = torch_forward(name, a.threads, a.repeats)
        r[f"ort_{short}_layer3"] = ort_forward(name, a.threads, a.repeats)
        if a.reduced:
            with tempfile.TemporaryDirectory() as d:
                figures, n = reduced_precision(
                    name, short, a.threads, a.repeats, calib, heldout, d
                )
            r.update(figures)
            notes.update(n)
        print(
            {k: round(v, 2) if is_ms(k) else f"{v:.2e}" for k, v in r.items() if short in k},
            flush=True,
        )
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
    if a.ours_int8:
        r.update(run_ours_int8())
    if a.ours_bf16:
        r.update(run_ours_int8(filt="bf16"))
    width = max(len(k) for k in r)
    for k, v in r.items():
        if k.endswith("_mb"):
            print(f"{k:<{width}}  {v:10.2f} MB")
        elif is_ms(k):
            print(f"{k:<{width}}  {v:10.2f} ms")
        else:
            print(f"{k:<{width}}  {v:10.2e}")
    for k, v in notes.items():
        print(f"{k}: {v}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(r, notes=notes) if notes else r, f, indent=2, sort_keys=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
