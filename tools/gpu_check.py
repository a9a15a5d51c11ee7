"""Everything that needs a GPU, in one command that fits in about 8 minutes on one GPU.

    python tools/gpu_check.py                    # -> results/gpu_check/: summary.md and the logs

1. The CUDA tests of test_all.py (`pytest -k cuda`: every model trains and evaluates on the GPU in
   float32 and with --amp, with the features kept on the GPU and without, checkpoints move
   between GPU and CPU, the GPU forward agrees with the CPU one). They skip on a machine without
   CUDA, so CI runs them only where there is a GPU.
2. The speed benchmark at QVHighlights' feature dims (tools/compare.py --benchmark), all four
   models, float32 and --amp. To fit the time it uses a quarter of QVHighlights' queries (1,806
   train / 388 val, generated once): seconds per epoch at full size are about 4x the table's, the
   per-step cost and the peak memory are those of the real batches. --full for the whole size.
summary.md names the GPU, torch and CUDA versions and holds both tables; each step's output is in
its own log file beside it. A step that fails is reported and the others still run.
"""

import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

import metrics  # noqa: E402


def run_step(name, cmd, out_dir):
    """Run one step, its output into <out_dir>/<name>.log; returns (ok, seconds)."""
    t0 = time.time()
    with open(os.path.join(out_dir, f"{name}.log"), "w") as log:
        code = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    print(f"{name}: {'ok' if code == 0 else f'FAILED (exit {code})'} in {time.time() - t0:.0f} s")
    return code == 0, time.time() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join("results", "gpu_check"), help="output folder")
    p.add_argument("--full", action="store_true", help="benchmark at QVHighlights' full size")
    args = p.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device visible to torch (torch.cuda.is_available() "
                         "is False); this script only checks what needs a GPU")
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    gpu = torch.cuda.get_device_name(0)
    head = [f"# GPU check: {gpu}", "",
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"{torch.cuda.device_count()} visible GPU(s); `python tools/gpu_check.py"
            + (" --full" if args.full else "") + "`", ""]
    results = [run_step("pytest_cuda", [sys.executable, "-m", "pytest", "test_all.py", "-k", "cuda",
                                        "-q", "-rs"], out)]
    size = [] if args.full else ["--benchmark-queries", "1806", "388"]
    tables = []
    for label, extra in (("fp32", []), ("amp", ["--amp"])):
        run_dir = os.path.join(out, f"benchmark_{label}")
        results.append(run_step(f"benchmark_{label}", [
            sys.executable, os.path.join(HERE, "compare.py"), "--benchmark", "--device", "cuda",
            "--no-progress", "--results-dir", run_dir, *size, *extra], out))
        table = os.path.join(run_dir, "comparison.md")
        if os.path.isfile(table):
            with open(table) as f:
                tables += [f"## Benchmark, {label}" + ("" if args.full else
                           " (a quarter of QVHighlights' queries: s/epoch x 4 for the full set)"),
                           "", f.read()]
    with open(os.path.join(out, "pytest_cuda.log")) as f:
        last = [line for line in f.read().splitlines() if line.strip()][-1:]
    lines = head + ["## CUDA tests", "", f"`pytest test_all.py -k cuda`: {' '.join(last)}", ""]
    lines += tables + ["", "Steps: " + ", ".join(
        f"{n} {'ok' if ok else 'FAILED'} ({s:.0f} s)" for n, (ok, s) in zip(
            ["pytest_cuda", "benchmark_fp32", "benchmark_amp"], results))]
    metrics.write_text_atomic(os.path.join(out, "summary.md"), "\n".join(lines) + "\n")
    print(f"summary: {os.path.join(out, 'summary.md')}")
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
