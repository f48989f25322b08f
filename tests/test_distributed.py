"""Multi-process training on CPU with gloo: two ranks, reference (DDP) and fused
(in-graph all-reduce) steps, sharded evaluation, torchrun end to end, a worker killed and
restarted, and a two-node launch simulated on this machine."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from adautomix_fast import AdAutoMix, ReferenceStep, Schedule, build_optimizer, resolve
from adautomix_fast.runtime.distributed import DistContext, average_buffers_, make_graph_grad_sync, wrap_reference_model
from adautomix_fast.step.fused import FusedStep
from adautomix_fast.step.precision import Precision

WORLD = 2
B = 12


def _init(rank, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    return DistContext(rank, WORLD, rank, "gloo")


def _flat(tensors):
    return torch.cat([t.detach().reshape(-1).float() for t in tensors])


def _same_on_all_ranks(t):
    gathered = [torch.zeros_like(t) for _ in range(WORLD)]
    dist.all_gather(gathered, t)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def _build(cfg, ctx, fused):
    from adautomix_fast.registry import build_model
    torch.manual_seed(0)
    model = build_model(cfg, 5, cifar_stem=True)
    opt = build_optimizer(model, cfg)
    schedule = Schedule(cfg, steps_per_epoch=4)
    precision = Precision.from_config(cfg, torch.device("cpu"))
    if fused:
        return model, FusedStep(model, opt, schedule, precision, compile=False,
                                grad_sync=make_graph_grad_sync(ctx))
    return model, ReferenceStep(model, opt, schedule, precision,
                                forward=wrap_reference_model(model, ctx, torch.device("cpu")))


def _rank_batch(rank, step):
    g = torch.Generator().manual_seed(100 * rank + step)
    return torch.randn(B, 3, 16, 16, generator=g), torch.randint(0, 5, (B,), generator=g)


def _rank_plan(model, rank, step):
    return model.sample_plan(B, generator=torch.Generator().manual_seed(1000 + 100 * rank + step),
                             image_size=(16, 16))


def _worker_steps(rank, init_file, n, out_dir, method="adautomix"):
    ctx = _init(rank, init_file)
    settings = dict(lam_concat=(n == 2), gen_norm=(n == 2), mix_samples=n) if method == "adautomix" else {}
    cfg = resolve(dict(dataset="digits", arch="tiny", batch_size=B, epochs=1, amp=False, method=method, **settings))
    ref_model, ref = _build(cfg, ctx, fused=False)
    fused_model, fused = _build(cfg, ctx, fused=True)
    for i in range(3):
        x, y = _rank_batch(rank, i)          # every rank has its own data and its own plan
        ref(x, y, _rank_plan(ref_model, rank, i))
        fused(x, y, _rank_plan(fused_model, rank, i))
        grads = _flat([p.grad for p in ref_model.parameters() if p.grad is not None])
        assert _same_on_all_ranks(grads), f"step {i}: gradients differ across ranks"
        assert _same_on_all_ranks(_flat(ref_model.student.parameters())), f"step {i}: student differs"
        assert _same_on_all_ranks(_flat(fused_model.student.parameters())), f"step {i}: fused student differs"
        if ref_model.has_teacher:
            assert _same_on_all_ranks(_flat(ref_model.generator.parameters())), f"step {i}: generator differs"
            assert _same_on_all_ranks(_flat(ref_model.teacher.parameters())), f"step {i}: teacher differs"
            assert _same_on_all_ranks(_flat(fused_model.teacher.parameters())), f"step {i}: fused teacher differs"
    # The fused step with its in-graph all-reduce computes what DDP computes.
    for (k, a), (_, b) in zip(ref_model.named_parameters(), fused_model.named_parameters()):
        torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4, msg=k)
    # BatchNorm statistics are per rank during training, averaged before evaluation/checkpoints.
    average_buffers_(ref_model, ctx)
    assert _same_on_all_ranks(_flat(ref_model.buffers()))
    torch.save({"rank": rank, "student": _flat(ref_model.student.parameters())}, os.path.join(out_dir, f"r{rank}.pt"))
    dist.destroy_process_group()


@pytest.mark.parametrize("n,method", [(2, "adautomix"), (3, "adautomix"), (None, "cutmix")])
def test_two_ranks_stay_identical_and_fused_equals_ddp(tmp_path, n, method):
    mp.spawn(_worker_steps, args=(str(tmp_path / "init"), n, str(tmp_path), method), nprocs=WORLD, join=True)
    a, b = (torch.load(tmp_path / f"r{r}.pt", weights_only=True) for r in range(WORLD))
    assert torch.equal(a["student"], b["student"])


def _worker_eval(rank, init_file, out_dir):
    from adautomix_fast.data import build_loaders
    from adautomix_fast.evaluate import evaluate
    ctx = _init(rank, init_file)
    torch.manual_seed(0)
    model = AdAutoMix("tiny", 10, cifar_stem=True)
    _, val, _ = build_loaders("digits", None, 50, eval_batch_size=47, workers=0, rank=rank, world_size=WORLD)
    sharded = evaluate(model, val, torch.device("cpu"), ctx=ctx)
    if rank == 0:
        _, full_val, _ = build_loaders("digits", None, 50, eval_batch_size=47, workers=0)
        single = evaluate(model, full_val, torch.device("cpu"))
        assert sharded["images"] == single["images"] == 360
        # Each image is scored in a batch of other images and size on the two sides; fp32
        # convolutions may round differently per batch on some CPUs, which can flip only images
        # whose top two logits nearly tie: the two counts may differ by those images alone.
        ties = _near_ties(model, full_val)
        for key in single:
            if key != "images":
                head = key.rsplit("_", 1)[0]
                assert abs(sharded[key] - single[key]) <= 100 * ties[head] / 360 + 1e-9, (key, sharded, single, ties)
        with open(os.path.join(out_dir, "ok"), "w") as f:
            f.write("ok")
    dist.destroy_process_group()


def _near_ties(model, loader, margin=1e-4):
    """Per head, the images whose top two logits (top-1) or 5th and 6th logits (top-5) are closer
    than ``margin``, a thousand times the fp32 rounding of logits of this size."""
    model.eval()
    ties: dict = {}
    with torch.no_grad():
        for x, _ in loader:
            for head, z in model.eval_logits(x).items():
                top = z.float().topk(6, dim=1).values
                ties[head] = ties.get(head, 0) + int(((top[:, 0] - top[:, 1] < margin)
                                                      | (top[:, 4] - top[:, 5] < margin)).sum())
    return ties


def test_sharded_evaluation_equals_one_process(tmp_path):
    mp.spawn(_worker_eval, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    assert (tmp_path / "ok").exists()


# ----------------------------------------------------------------------------- torchrun
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAIN = ["-m", "adautomix_fast.train", "--arch", "tiny", "--workers", "0", "--batch-size", "50",
         "--epochs", "1", "--log-interval", "1", "--impl", "reference"]


def torchrun(args, env_extra=None, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env_extra or {}))
    env.pop("ADAUTOMIX_DATA", None)
    cmd = [sys.executable, "-m", "torch.distributed.run"] + args
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


def final_model(folder):
    return torch.load(os.path.join(folder, "checkpoint-last.pt"), weights_only=True)["model"]


def test_torchrun_two_processes_one_checkpoint_rank0_logs(tmp_path):
    proc = torchrun(["--standalone", "--nproc_per_node", "2"] + TRAIN + ["--output", str(tmp_path),
                                                                       "--run-name", "ddp"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(tmp_path) == ["ddp"]
    files = sorted(os.listdir(tmp_path / "ddp"))
    # one set of files, written by rank 0 alone (the pictures included: drawn by default)
    assert files == ["checkpoint-best.pt", "checkpoint-last.pt", "config.yaml", "curves.png",
                     "log.jsonl", "mix-epoch0001.png", "summary.csv"]
    records = [json.loads(line) for line in open(tmp_path / "ddp" / "log.jsonl")]
    start = [r for r in records if r["type"] == "start"]
    assert len(start) == 1 and start[0]["world_size"] == 2          # written once, by rank 0
    steps = [r for r in records if r["type"] == "train"]
    assert [r["step"] for r in steps] == list(range(1, 15))          # 1437 // 2 // 50 steps per rank
    epoch = [r for r in records if r["type"] == "epoch"][0]
    assert epoch["images"] == 360                                    # every val image once, over 2 ranks
    assert proc.stdout.count("final top-1 of every head") == 1       # printed by rank 0 only


def test_killed_worker_is_restarted_and_finishes_like_an_uninterrupted_run(tmp_path):
    common = ["--standalone", "--nproc_per_node", "2", "--max-restarts", "1"] + TRAIN + [
        "--output", str(tmp_path), "--save-every-steps", "5"]
    faulty = torchrun(common + ["--run-name", "faulty"],
                      env_extra={"ADAUTOMIX_FAIL_AT_STEP": "7", "ADAUTOMIX_FAIL_RANK": "1"})
    assert faulty.returncode == 0, faulty.stderr[-3000:]
    records = [json.loads(line) for line in open(tmp_path / "faulty" / "log.jsonl")]
    starts = [r for r in records if r["type"] == "start"]
    assert [s["restart"] for s in starts] == [0, 1]
    assert starts[1]["resume_epoch"] == 0 and starts[1]["resume_batch"] == 5   # from the step-5 checkpoint
    clean = torchrun(common + ["--run-name", "clean"])
    assert clean.returncode == 0, clean.stderr[-3000:]
    a, b = final_model(tmp_path / "faulty"), final_model(tmp_path / "clean")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0, msg=k)


def test_two_node_launch_simulated_on_one_machine(tmp_path):
    port = _free_port()
    node = ["--nnodes", "2", "--nproc_per_node", "1", "--rdzv_backend", "c10d",
            "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "twonode"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("ADAUTOMIX_DATA", None)
    procs = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *node, "--node_rank", str(r),
                               *TRAIN, "--output", str(tmp_path)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for r in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert os.listdir(tmp_path) == ["digits-tiny-twonode"]             # named by the rendezvous id
    assert (tmp_path / "digits-tiny-twonode" / "checkpoint-last.pt").is_file()


@pytest.mark.slow
def test_torchrun_fused_step_compiles_once_per_rank(tmp_path):
    """Each rank captures its fused step, the gradient all-reduce inside the graph, once. aot_eager:
    dynamo's capture and its guards are what two ranks could break; Inductor's code for the step is
    held to the reference by tests/test_fused.py (its CPU code for gloo collectives is not what a GPU
    runs: make gpu-check)."""
    train = [a if a != "reference" else "fused" for a in TRAIN] + ["--compile-backend", "aot_eager"]
    proc = torchrun(["--standalone", "--nproc_per_node", "2"] + train + ["--output", str(tmp_path),
                                                                       "--run-name", "fused"], timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in open(tmp_path / "fused" / "log.jsonl")]
    train_records = [r for r in records if r["type"] == "train"]
    assert train_records[-1]["recompiles_after_warmup"] == 0
    assert all(r["nonfinite_steps"] == 0 for r in train_records)
    assert [r for r in records if r["type"] == "epoch"][0]["images"] == 360


def test_sigterm_to_a_torchrun_job_stops_every_rank_after_the_same_step(tmp_path):
    """SLURM signals every process of the job step: torchrun's agent (which forwards the signal to
    its workers) and the workers themselves. The ranks agree at a log-interval boundary and rank 0
    writes one checkpoint at that batch."""
    folder = tmp_path / "pre"
    train = list(TRAIN)
    train[train.index("--epochs") + 1] = "2"
    train[train.index("--log-interval") + 1] = "3"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             *train, "--output", str(tmp_path), "--run-name", "pre"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    log = folder / "log.jsonl"
    deadline = time.monotonic() + 300
    while not (log.exists() and log.read_text().count('"type": "train"') >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert err.count("stopped by SIGTERM at ") == 1, err[-3000:]       # rank 0's line, for every rank
    ckpt = torch.load(folder / "checkpoint-last.pt", weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["epoch"] * 14 + ckpt["batch_in_epoch"] == ckpt["global_step"]
    assert ckpt["global_step"] % 3 == 0 or ckpt["batch_in_epoch"] == 0   # a log-interval boundary (or an epoch end)
    assert len(ckpt["rng"]["ranks"]) == 2
