"""One job over many processes (issue 19): micro-batches, data and query parallelism, sharded evaluation,
failures and stops. Unit tests run in this process; the torchrun jobs (gloo, CPU) are integration tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from curvzo import distributed
from curvzo.config_schema import LAUNCH_TIME_VARIABLE, launch_time
from curvzo.errors import ConfigError
from curvzo.example import Example
from curvzo.job import check_parallelism
from curvzo.minibatch import MinibatchLoss, chunk_bounds, reduce_terms
from curvzo.objectives import AnswerGeneration, CandidateClassification, GoldOptionLM
from curvzo.optim import HiZOO, MeZO
from curvzo.optim.streams import query_seed
from tests.helpers import REPO_ROOT, net_loss, tiny_model, tiny_net
from tests.test_cli import read_jsonl

SENTIMENT = [Example(f"Review {i}: {'great' if i % 2 else 'awful'} film{'!' * i} It was", (" terrible", " great"), i % 2)
             for i in range(7)]
CHOICES = [Example(f"Story {i} went on {'and on ' * i}because", (" the sun rose.", " rain fell on the hills."), i % 2)
           for i in range(5)]
ANSWERS = [Example(f"Passage: p{i}\nQuestion: q{'?' * i}\nAnswer:", (f" answer {'word ' * i}\n",), 0,
                   answers=(f"answer {i}",)) for i in range(5)]


@pytest.fixture(autouse=True)
def one_process():
    """Each test starts (and ends) as a single process in data mode."""
    distributed._WORLD = distributed.World()
    yield
    distributed._WORLD = distributed.World()


# shards, chunks and the reduction -------------------------------------------------------------------
def test_shards_are_contiguous_cover_the_batch_and_differ_by_at_most_one():
    assert distributed.shard_bounds(16, 2) == [(0, 8), (8, 16)]
    assert distributed.shard_bounds(10, 4) == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert distributed.shard_bounds(1, 2) == [(0, 1), (1, 1)]  # a batch smaller than the world: a rank gets nothing
    assert chunk_bounds(5, 2) == [(0, 2), (2, 4), (4, 5)] and chunk_bounds(5, None) == [(0, 5)] and chunk_bounds(0, 3) == []


def test_reduction_is_the_ratio_of_sums_in_float64():
    assert float(reduce_terms([1.0, 2.0, 3.5], [1.0, 1.0, 2.0])) == 6.5 / 4
    assert reduce_terms([0.1] * 3, [1.0] * 3).dtype == torch.float64


@pytest.fixture(scope="module", params=["tiny-opt", "tiny-llama"])
def loaded(request):
    return tiny_model(request.param)


@pytest.mark.parametrize("objective, examples", [
    (CandidateClassification(), SENTIMENT), (GoldOptionLM(), CHOICES), (AnswerGeneration(max_new_tokens=4), ANSWERS),
], ids=["classification", "multiple-choice", "generation"])
def test_micro_batched_loss_equals_the_whole_batch_loss(loaded, objective, examples):
    whole = MinibatchLoss(loaded.model, loaded.tokenizer, objective, 256, "cpu")
    expected = float(whole.closure(examples)())
    for size in (1, 2, 3, len(examples)):
        chunked = MinibatchLoss(loaded.model, loaded.tokenizer, objective, 256, "cpu", micro_batch_size=size)
        assert float(chunked.closure(examples)()) == pytest.approx(expected, rel=1e-5, abs=1e-6), size


def test_per_example_terms_add_up_to_the_objectives_loss(loaded):
    objective = GoldOptionLM()
    batch = objective.training_batch(CHOICES, loaded.tokenizer, 256)
    with torch.inference_mode():
        sums, counts = objective.example_losses(loaded.model, batch)
        assert counts.tolist() == [float((batch.token_cand // batch.max_options == e).sum()) for e in range(5)]
        assert float(sums.sum() / counts.sum()) == pytest.approx(float(objective.loss(loaded.model, batch)), rel=1e-5)


# exchanges in one process, and as one rank of a world (the other ranks' answers stood in) ------------------
def test_one_process_exchanges_are_the_identity():
    assert distributed.exchange(lambda: 3) == [3]
    assert distributed.map_dealt(lambda x: x * x, [1, 2, 3]) == [1, 4, 9]
    assert distributed.owned(3) == [0, 1, 2] and distributed.agreed_stop(15) == 15 and distributed.broadcast("a") == "a"


def test_dealt_work_runs_only_this_ranks_items_and_comes_back_in_order(monkeypatch):
    distributed._WORLD = distributed.World(rank=1, size=2, mode="query")
    ran = []
    # rank 0 computed items 0, 2, 4 (as 10×); this rank 1, 3
    monkeypatch.setattr(distributed, "exchange", lambda fn: [[0, 20, 40], fn()])
    assert distributed.map_dealt(lambda x: ran.append(x) or 10 * x, [0, 1, 2, 3, 4]) == [0, 10, 20, 30, 40]
    assert ran == [1, 3]


def test_query_parallel_mezo_evaluates_only_its_own_probe_and_counts_both(monkeypatch):
    """Rank 1 of 2 computes ℓ−; with ℓ+ from rank 0 it applies the update one process applies."""
    reference = tiny_net()
    one = MeZO(reference.parameters(), lr=1e-2, eps=1e-3, seed=3)
    one.step(net_loss(reference))
    net = tiny_net()
    opt = MeZO(net.parameters(), lr=1e-2, eps=1e-3, seed=3)
    plus, minus = one.trajectory[-1]["losses"]
    distributed._WORLD = distributed.World(rank=1, size=2, mode="query")
    calls = []
    loss = net_loss(net)
    monkeypatch.setattr(distributed, "exchange", lambda fn: [[plus], fn()])
    opt.step(lambda: calls.append(1) or loss())
    assert len(calls) == 1 and opt.forward_passes == 2
    assert opt.trajectory[-1]["losses"] == [plus, minus]
    assert all(torch.equal(a, b) for a, b in zip(net.parameters(), reference.parameters()))


def test_a_failure_on_one_rank_is_raised_on_every_rank_naming_it(monkeypatch):
    distributed._WORLD = distributed.World(rank=0, size=2)
    monkeypatch.setattr(distributed, "_all_gather_json", lambda mine: [mine, [False, "OutOfMemoryError: CUDA"]])
    with pytest.raises(distributed.RankFailure, match="rank 1 failed: OutOfMemoryError: CUDA"):
        distributed.exchange(lambda: 1.0)


def test_a_broken_transport_is_one_line_about_a_lost_rank(monkeypatch):
    distributed._WORLD = distributed.World(rank=0, size=2)

    def broken(mine):
        raise RuntimeError("[/pytorch/gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer.\nmore")
    monkeypatch.setattr(distributed, "_all_gather_json", broken)
    with pytest.raises(distributed.PeerLost, match=r"lost contact with another rank .*: Read error: Connection reset"):
        distributed.exchange(lambda: 1.0)


# q directions -----------------------------------------------------------------------------------------
def test_q_direction_mezo_averages_the_single_direction_steps():
    """q = 2 moves θ by the mean of the two one-direction MeZO steps along z(s_t) and z(query_seed(s_t, 1))."""
    class SecondDirection(MeZO):
        def step_seed(self, step: int) -> int:
            return query_seed(super().step_seed(step), 1)

    start = [p.detach().clone() for p in tiny_net(dtype=torch.float64).parameters()]
    moves = []
    for cls in (MeZO, SecondDirection):
        net = tiny_net(dtype=torch.float64)
        cls(net.parameters(), lr=1e-2, eps=1e-3, seed=5).step(net_loss(net))
        moves.append([p.detach() - s for p, s in zip(net.parameters(), start)])
    net = tiny_net(dtype=torch.float64)
    opt = MeZO(net.parameters(), lr=1e-2, eps=1e-3, seed=5, directions_per_step=2)
    assert opt.forward_passes_next_step() == 4
    opt.step(net_loss(net))
    assert opt.forward_passes == 4 and len(opt.trajectory[-1]["losses"]) == 4
    for p, s, a, b in zip(net.parameters(), start, *moves):
        torch.testing.assert_close(p.detach() - s, (a + b) / 2, rtol=1e-9, atol=1e-15)


def test_one_direction_is_plain_mezo_and_in_place_probes_refuse_several():
    nets = [tiny_net(), tiny_net()]
    MeZO(nets[0].parameters(), lr=1e-2, seed=1).step(net_loss(nets[0]))
    MeZO(nets[1].parameters(), lr=1e-2, seed=1, directions_per_step=1).step(net_loss(nets[1]))
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))
    with pytest.raises(ValueError, match="directions_per_step > 1 needs probe=exact"):
        MeZO(tiny_net().parameters(), lr=1e-2, directions_per_step=2, probe="inplace")


# what a world of processes refuses --------------------------------------------------------------------
def test_first_order_and_in_place_query_parallelism_are_refused_in_one_line():
    params = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ConfigError, match="runs in one process; launch it without torchrun"):
        check_parallelism(distributed.World(0, 2, "data"), torch.optim.AdamW(params))
    with pytest.raises(ConfigError, match="distributed.mode=query needs optimizer.probe=exact"):
        check_parallelism(distributed.World(0, 2, "query"), HiZOO(params, lr=1e-3, probe="inplace"))
    check_parallelism(distributed.World(), torch.optim.AdamW(params))  # one process: anything goes
    with pytest.raises(ConfigError, match="distributed.mode must be one of data, query"):
        distributed.set_mode("pipeline")


def test_the_ranks_share_rank_zeros_launch_time(monkeypatch):
    monkeypatch.setenv(LAUNCH_TIME_VARIABLE, "2026-01-02T03:04:05")
    assert launch_time("%Y-%m-%d/%H-%M-%S") == "2026-01-02/03-04-05"
    monkeypatch.delenv(LAUNCH_TIME_VARIABLE)
    assert launch_time("%Y") == time.strftime("%Y")


# torchrun jobs (gloo, two to four processes on CPU) -------------------------------------------------
def torchrun(nproc: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(torchrun_command(nproc, *args), cwd=REPO_ROOT, env=job_env(), capture_output=True, text=True,
                          timeout=timeout, check=False)


def torchrun_command(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m",
            "curvzo.run", *args]


def job_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def single(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curvzo.run", *args], cwd=REPO_ROOT, env=job_env(),
                          capture_output=True, text=True, timeout=300, check=False)


def comparable(run: Path) -> tuple:
    """What two runs of one trajectory must share: the trajectory, the metric rows (less timings), the
    summary's metrics and the final weights' fingerprint."""
    rows = [{k: v for k, v in row.items() if not k.startswith(("time/", "sys/"))} for row in read_jsonl(run / "metrics.jsonl")]
    summary = json.loads((run / "summary.json").read_text())
    kept = {k: summary[k] for k in ("status", "steps", "forward_passes", "zero_shot", "best", "test_at_best_dev",
                                    "last_dev", "final_weights_fingerprint")}
    return (run / "trajectory.jsonl").read_text(), rows, kept


def assert_same_run(parallel: Path, reference: Path) -> None:
    ours, theirs = comparable(parallel), comparable(reference)
    assert ours[0] == theirs[0]  # trajectory.jsonl, byte for byte
    assert ours[1] == theirs[1]  # every metric row: losses, projected gradients, dev and test metrics
    assert ours[2] == theirs[2]


SMOKE = ("task=sst2", "budget=smoke", "logger=jsonl")


@pytest.mark.integration
@pytest.mark.parametrize("nproc, micro, overrides", [
    (2, 2, ("model=tiny-opt", "optimizer=mezo")),  # the Done-when command
    (4, 1, ("model=tiny-opt", "optimizer=mezo")),
    (2, 2, ("model=tiny-llama", "optimizer=curvzo", "peft=lora")),
    (2, 2, ("model=tiny-llama", "optimizer=hizoo", "task=copa")),  # multiple choice (gold-option LM loss)
    (2, 2, ("model=tiny-llama", "optimizer=mezo", "peft=prefix")),
    (2, 2, ("model=tiny-opt", "optimizer=mezo", "task.train_objective=metric")),  # per-example accuracies gathered
], ids=["mezo-2", "mezo-4", "curvzo-lora-2", "hizoo-copa-2", "mezo-prefix-2", "mezo-metric-2"])
def test_data_parallel_equals_one_process_on_the_same_micro_batches(tmp_path, shared_data_dir, nproc, micro, overrides):
    args = (*SMOKE, *overrides, f"paths.data_dir={shared_data_dir}")
    proc = torchrun(nproc, *args, f"hydra.run.dir={tmp_path / 'parallel'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = single(*args, f"budget.micro_batch_size={micro}", f"hydra.run.dir={tmp_path / 'single'}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert_same_run(tmp_path / "parallel", tmp_path / "single")
    summary = json.loads((tmp_path / "parallel" / "summary.json").read_text())
    assert summary["distributed"] == {"world_size": nproc, "mode": "data"}
    assert sorted(p.name for p in (tmp_path / "parallel").iterdir()) == [
        ".hydra", "config.yaml", "metrics.jsonl", "run.log", "status.json", "summary.json", "trajectory.jsonl"]


@pytest.mark.integration
def test_every_other_zo_method_runs_data_parallel_as_one_process_in_a_sweep(tmp_path, shared_data_dir):
    """A -m sweep under torchrun: every rank runs the same jobs in the same order, into one sweep directory."""
    methods = ("dizo", "sparse_mezo", "zo_adam", "zo_sgd_momentum", "loren", "curvzo_uniform")
    args = ("-m", "model=tiny-opt", *SMOKE, f"optimizer={','.join(methods)}", f"paths.data_dir={shared_data_dir}")
    proc = torchrun(2, *args, f"hydra.sweep.dir={tmp_path / 'parallel'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "sweep: 6 jobs, 6 finished" in proc.stdout
    ref = single(*args, "budget.micro_batch_size=2", f"hydra.sweep.dir={tmp_path / 'single'}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    for job, method in enumerate(methods):
        assert json.loads((tmp_path / "parallel" / str(job) / "summary.json").read_text())["optimizer"] == method
        assert_same_run(tmp_path / "parallel" / str(job), tmp_path / "single" / str(job))


@pytest.mark.integration
def test_generation_trains_and_evaluates_sharded_as_one_process(tmp_path):
    from tests.test_cli_tasks import write_squad

    data = write_squad(tmp_path / "data")
    args = ("model=tiny-llama", "task=squad", "optimizer=mezo", "budget=smoke", "logger=jsonl",
            f"paths.data_dir={data}", "task.max_new_tokens=4", "budget.eval_batch_size=3")
    proc = torchrun(2, *args, f"hydra.run.dir={tmp_path / 'parallel'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = single(*args, "budget.micro_batch_size=2", f"hydra.run.dir={tmp_path / 'single'}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert_same_run(tmp_path / "parallel", tmp_path / "single")


@pytest.mark.integration
@pytest.mark.parametrize("nproc, overrides", [
    (2, ("optimizer=mezo",)),
    (3, ("optimizer=hizoo",)),
    (2, ("optimizer=loren", "optimizer.num_queries=4")),
    (2, ("optimizer=mezo", "optimizer.directions_per_step=2")),
], ids=["mezo-2", "hizoo-3", "loren-K4-2", "mezo-q2-2"])
def test_query_parallel_equals_one_process(tmp_path, shared_data_dir, nproc, overrides):
    args = ("model=tiny-opt", *SMOKE, *overrides, f"paths.data_dir={shared_data_dir}")
    proc = torchrun(nproc, *args, "distributed.mode=query", f"hydra.run.dir={tmp_path / 'parallel'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = single(*args, f"hydra.run.dir={tmp_path / 'single'}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert_same_run(tmp_path / "parallel", tmp_path / "single")
    assert json.loads((tmp_path / "parallel" / "summary.json").read_text())["distributed"]["mode"] == "query"


LONG = ("model=tiny-opt", "task=sst2", "optimizer=mezo", "budget=smoke", "budget.max_steps=300",
        "budget.eval_every=1000", "logger=jsonl")


def start_job(tmp_path: Path, run_dir: Path, data_dir: Path) -> subprocess.Popen:
    """A 300-step two-process job in its own session; returns once it has logged a few steps."""
    proc = subprocess.Popen(torchrun_command(2, *LONG, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"),
                            cwd=REPO_ROOT, env=job_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    metrics = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 4):
        assert proc.poll() is None and time.monotonic() < deadline, "the job did not start training"
        time.sleep(0.1)
    return proc


def worker_pids(launcher: int) -> dict[int, int]:
    """rank → pid of the processes torchrun started."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue
        variables = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if parent == launcher and b"RANK" in variables:
            found[int(variables[b"RANK"])] = int(pid)
    return found


@pytest.mark.integration
def test_a_killed_rank_ends_the_job_with_a_failed_status(tmp_path, shared_data_dir):
    run_dir = tmp_path / "run"
    proc = start_job(tmp_path, run_dir, shared_data_dir)
    os.kill(worker_pids(proc.pid)[1], signal.SIGKILL)
    started = time.monotonic()
    proc.wait(timeout=60)
    assert proc.returncode != 0 and time.monotonic() - started < 60
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "failed" and status["error"].startswith("rank 0: PeerLost: lost contact with another rank")


@pytest.mark.integration
def test_sigterm_to_the_group_checkpoints_and_two_processes_resume_bit_exactly(tmp_path, shared_data_dir):
    run_dir = tmp_path / "run"
    proc = start_job(tmp_path, run_dir, shared_data_dir)
    os.killpg(proc.pid, signal.SIGTERM)  # a scheduler's stop: the launcher and every rank
    proc.wait(timeout=60)
    status = json.loads((run_dir / "status.json").read_text())
    assert status["status"] == "preempted" and 0 < status["steps"] < 300
    assert (run_dir / "checkpoint.safetensors").exists()
    resumed = torchrun(2, *LONG, f"paths.data_dir={shared_data_dir}", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "summary.json").read_text())["resumed_from_step"] == status["steps"]
    ref = single(*LONG, f"paths.data_dir={shared_data_dir}", "budget.micro_batch_size=2",
                 f"hydra.run.dir={tmp_path / 'single'}")
    assert ref.returncode == 0, ref.stderr[-3000:]
    assert_same_run(run_dir, tmp_path / "single")


def test_the_distributed_bench_reports_each_run_against_one_process():
    from curvzo.bench.distributed import main, to_markdown

    result = {"machine": {"cpu": "X", "cores": 2, "gpu": None}, "command": "c", "model": "m", "task": "t",
              "batch_size": 16, "steps": 4, "rows": [{"label": "1 process x 2 threads", "sec_per_step": 2.0},
                                                     {"label": "2 processes x 1 thread (query)", "sec_per_step": 1.6}]}
    text = to_markdown(result)
    assert "| 1 process x 2 threads | 2.000 | 0.50 | 1.00x |" in text
    assert "| 2 processes x 1 thread (query) | 1.600 | 0.62 | 1.25x |" in text
    assert "Machine: cpu X, cores 2\n" in text
    with pytest.raises(SystemExit):
        main(["--out", "x", "--steps", "0"])


def test_exchanges_travel_as_json_through_a_real_process_group(tmp_path):
    """A one-rank gloo group runs the real transport: floats round-trip exactly (NaN, ±inf too), no pickles."""
    import math

    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        values = [0.1 + 0.2, 1 / 3, float("inf"), -0.0, 7, "texte", [1, 2]]
        gathered = distributed._all_gather_json([True, values])
        assert gathered[0][0] is True and gathered[0][1][:2] == values[:2] and gathered[0][1][2:] == values[2:]
        assert math.isnan(distributed._all_gather_json(float("nan"))[0])
        assert distributed._broadcast_json({"run_dir": "/x", "header": None}) == {"run_dir": "/x", "header": None}
    finally:
        torch.distributed.destroy_process_group()
    source = Path(distributed.__file__).read_text()
    assert not any(name in source for name in ("all_gather_object", "broadcast_object_list", "import pickle"))


LEAVE_THE_GROUP = """
import sys, time
from curvzo import distributed
world = distributed.start()
time.sleep(float(sys.argv[1]))
arrived = time.time()
distributed.stop(finished=sys.argv[2] == "finished")
print(f"{world.rank} {arrived} {time.time()}")
"""


def leave_the_group(delays: tuple[float, float], how: str) -> dict[int, tuple[float, float]]:
    """Two gloo ranks that reach :func:`distributed.stop` after ``delays``: when each arrived and left."""
    env = {**job_env(), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    procs = [subprocess.Popen([sys.executable, "-c", LEAVE_THE_GROUP, str(delay), how], cwd=REPO_ROOT,
                              env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for rank, delay in enumerate(delays)]
    times = {}
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-2000:]
        rank, arrived, left = out.split()
        times[int(rank)] = (float(arrived), float(left))
    return times


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.integration
def test_a_finished_job_leaves_the_group_only_when_every_rank_has_finished():
    """The last collective of a slow rank is never cut off by a fast one tearing down its sockets
    (a 4-rank CI job once aborted one rank that way); after a failure no rank waits."""
    times = leave_the_group((0.0, 2.0), "finished")
    assert times[0][1] >= times[1][0]  # rank 0 left after rank 1 arrived
    times = leave_the_group((0.0, 2.0), "failed")
    assert times[0][1] < times[1][0]  # no barrier: rank 0 was gone before rank 1 arrived
