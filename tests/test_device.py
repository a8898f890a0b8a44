"""Where the app's model passes run (tca/app/device.py): TCA_DEVICE / TCA_PRECISION, the
precision shown on the page and returned by the API, the GPU tasks (spaces.GPU, a no-op off
ZeroGPU) run as ZeroGPU runs them (arguments and result pickled across a forked process), and
torch's threads from a CPU quota (fake cgroup files). Tiny random-weight model, CPU only."""

from __future__ import annotations

import multiprocessing
import pickle

import pytest
import spaces
import torch

import app as app_module
from tca.app import device, export, runs, serving
from tca.app.device import GPU_SECONDS, Placement, cpu_threads, placement_from_env, to_cpu
from tca.app.request import from_controls
from tca.app.runs import ExplorerRun
from tca.errors import ConfigError
from tca.precision import CpuBf16

TINY = "tca-tiny-ViT"
AMX = CpuBf16(("AMX", "AVX-512 BF16"), "test")
NO_BF16 = CpuBf16((), "test")
SETTINGS = (TINY, "tca", 0.7, "3,6,9", 2, "mean", "single")


# ------------------------------------------------------------------ TCA_DEVICE / TCA_PRECISION


def test_placement_from_the_environment():
    p = placement_from_env({}, AMX, cuda_available=False)
    assert (p.device, p.precision, p.choice, p.zero_gpu, p.home) == (
        "cpu",
        "bf16",
        "auto",
        False,
        "cpu",
    )
    assert placement_from_env({}, NO_BF16, cuda_available=False).precision == "fp32"
    p = placement_from_env({"TCA_PRECISION": "FP32"}, AMX, cuda_available=False)
    assert (p.precision, p.choice) == ("fp32", "fp32")
    p = placement_from_env({"TCA_DEVICE": "cpu"}, AMX, cuda_available=True)
    assert (p.device, p.precision) == ("cpu", "bf16")
    p = placement_from_env({}, AMX, cuda_available=True)  # auto: the GPU, fp32 there
    assert (p.device, p.precision, p.home) == ("cuda", "fp32", "cuda")
    p = placement_from_env({"TCA_DEVICE": "cuda", "TCA_PRECISION": "bf16"}, AMX, True)
    assert (p.device, p.precision) == ("cuda", "bf16")
    # ZeroGPU: no CUDA in the server process, models stay on the CPU there
    p = placement_from_env({"SPACES_ZERO_GPU": "true"}, AMX, cuda_available=False)
    assert (p.device, p.precision, p.zero_gpu, p.home) == ("cuda", "fp32", True, "cpu")


@pytest.mark.parametrize(
    "env, message",
    [
        ({"TCA_DEVICE": "tpu"}, "TCA_DEVICE must be one of auto, cpu, cuda, got 'tpu'"),
        ({"TCA_DEVICE": "cuda"}, "TCA_DEVICE=cuda, but torch finds no CUDA device here"),
        (
            {"TCA_PRECISION": "int8"},
            "TCA_PRECISION must be one of auto, fp32, fp16, bf16, got 'int8'",
        ),
    ],
)
def test_bad_settings_name_the_variable(env, message):
    with pytest.raises(ConfigError) as err:
        placement_from_env(env, AMX, cuda_available=False)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "placement, line",
    [
        (
            Placement("cpu", "bf16", "auto", False, AMX),
            "bf16 (native on this CPU: AMX, AVX-512 BF16) · switch: TCA_PRECISION=fp32 "
            "(exact, as in the paper)",
        ),
        (
            Placement("cpu", "fp32", "fp32", False, AMX),
            "fp32 (exact, as in the paper) · switch: TCA_PRECISION=bf16 (about 3x faster here)",
        ),
        (Placement("cpu", "fp32", "auto", False, NO_BF16), "fp32 (no native bf16 here)"),
        (
            Placement("cpu", "bf16", "bf16", False, NO_BF16),
            "bf16 (emulated on this CPU, slower than fp32) · switch: TCA_PRECISION=fp32 "
            "(exact, as in the paper)",
        ),
        (Placement("cuda", "fp32", "auto", True, AMX), "fp32 (ZeroGPU)"),
        (
            Placement("cuda", "fp16", "fp16", False, AMX),
            "fp16 (CUDA) · switch: TCA_PRECISION=fp32 (exact, as in the paper)",
        ),
    ],
)
def test_the_precision_line(placement, line):
    assert placement.describe() == line


# ------------------------------------------------------------------ precision on the page / API


@pytest.fixture(scope="module")
def bf16_app(tmp_path_factory):
    placement = Placement("cpu", "bf16", "auto", False, AMX)
    app = app_module.App(
        TINY,
        "none",
        exports=export.ExportDir(tmp_path_factory.mktemp("exports")),
        placement=placement,
    )
    app.demo = app_module.build_demo(TINY, "none", app=app, first_screen=None, delete_cache=None)
    return app


class _Progress:
    def __call__(self, frac, desc=None):
        pass


def _classify(app, image, stream=False, stream_state=None):
    model, method, keep_rate, layers, k, score, templates = SETTINGS
    return app.classify(
        image, "cat, dog", model, method, keep_rate, layers, k, score, templates,
        stream, stream_state, progress=_Progress(),
    )  # fmt: skip


def test_precision_is_served_shown_and_returned(bf16_app, example_image):
    summary, shown, _ = _classify(bf16_app, str(example_image))
    assert summary["precision"] == "bf16"
    clip = bf16_app.cache.peek(TINY).clip
    assert clip.dtype == torch.bfloat16 and clip.device.type == "cpu"
    # the page: the Model control's info line
    (dropdown,) = [
        c for c in bf16_app.demo.config["components"] if c["props"].get("elem_id") == "model-select"
    ]
    assert dropdown["props"]["info"] == (
        "Precision: bf16 (native on this CPU: AMX, AVX-512 BF16) · switch: TCA_PRECISION=fp32 "
        "(exact, as in the paper)"
    )


def test_fp32_app_returns_fp32(tmp_path, example_image):
    app = app_module.App(
        TINY,
        "none",
        exports=export.ExportDir(tmp_path),
        placement=Placement(support=AMX, choice="fp32"),
    )
    app_module.build_demo(TINY, "none", app=app, first_screen=None, delete_cache=None)
    summary, _, _ = _classify(app, str(example_image))
    assert summary["precision"] == "fp32"
    assert app.placement.describe() == (
        "fp32 (exact, as in the paper) · switch: TCA_PRECISION=bf16 (about 3x faster here)"
    )


# ------------------------------------------------------------------ GPU tasks


def test_gpu_tasks_carry_their_bound_and_are_plain_calls_off_zero_gpu(bf16_app):
    assert not spaces.config.Config.zero_gpu  # not a ZeroGPU Space here
    for name in ("run", "compare", "sweep", "stream_demo"):
        task = getattr(bf16_app, f"_{name}")
        assert task.gpu_duration_s == GPU_SECONDS[name]
        # spaces.GPU handed back our wrapper itself: one plain call around the passes
        assert task.__wrapped__.__func__ is getattr(app_module.App, f"_{name}_passes")

    calls = []
    task = device.gpu_task(lambda x: {"t": torch.ones(2) * x, "n": x}, 7, lambda: calls.append(1))
    out = task(3)
    assert task.gpu_duration_s == 7 and calls == [1]
    assert out["n"] == 3 and out["t"].device.type == "cpu" and out["t"].tolist() == [3.0, 3.0]


def test_to_cpu_walks_results_and_copies_nothing_on_the_cpu(bf16_app, example_image):
    _, shown, _ = _classify(bf16_app, str(example_image))
    assert to_cpu(shown) is shown  # nothing to move: the very same object
    nested = {"a": [torch.zeros(1), (1, "x")], "b": None}
    assert to_cpu(nested) is nested
    meta = torch.empty(3, device="meta")  # a tensor off the CPU that .cpu() cannot copy
    with pytest.raises(NotImplementedError):
        to_cpu({"x": [meta]})  # reached inside a dict inside a list


def _tensors(value, seen=None):
    """Every tensor inside a Run (dataclasses, dicts, lists, tuples)."""
    import dataclasses

    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _tensors(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _tensors(v)
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _tensors(getattr(value, f.name))


def _zero_gpu_worker(app, args_queue, result_queue):
    """What ZeroGPU's worker does: a forked process gets the arguments pickled, runs the task
    and sends the result back pickled. The parent held the cache's locks at the fork."""
    import faulthandler

    faulthandler.dump_traceback_later(100, exit=True)  # a hang shows where, and ends
    cache = app.cache
    locks = (cache._lock, cache._load_lock, cache.image_lane)
    locks_free = all(lock.acquire(timeout=5) for lock in locks)
    for lock in locks:
        lock.release()
    req, stream_state = pickle.loads(args_queue.get())
    result_queue.put(pickle.dumps((locks_free, app._run(req, stream_state))))


def test_a_gpu_task_runs_in_a_forked_worker_as_on_zero_gpu(tmp_path, example_image):
    """The app as on ZeroGPU (the device is the CPU here, spaces.GPU a plain call): the server
    loads the model and never runs a task itself; the task runs in a forked process."""
    zero = Placement("cpu", "bf16", "auto", True, AMX)
    app = app_module.App(TINY, "none", exports=export.ExportDir(tmp_path), placement=zero)
    req = from_controls(str(example_image), "cat, dog", *SETTINGS)
    assert app._say(_Progress(), TINY) is None  # no callback across; the model loaded here
    assert app.cache.peek(TINY) is not None
    here = runs.run(app.cache, req)  # the same request, run in the server for comparison
    ctx = multiprocessing.get_context("fork")
    args_queue, result_queue = ctx.Queue(), ctx.Queue()
    held = [app.cache._load_lock, app.cache.image_lane]
    for lock in held:  # another visitor's load and pass in progress at the fork
        lock.acquire()
    try:
        worker = ctx.Process(target=_zero_gpu_worker, args=(app, args_queue, result_queue))
        worker.start()
    finally:
        for lock in held:
            lock.release()
    args_queue.put(pickle.dumps((req, None)))  # pickled, as spaces.GPU pickles them
    locks_free, (there, stream_state) = pickle.loads(result_queue.get(timeout=110))
    worker.join(timeout=30)
    assert locks_free and worker.exitcode == 0
    assert isinstance(there, ExplorerRun) and stream_state is None
    schedule = [197] * 3 + [141] * 3 + [100] * 3 + [74] * 3
    assert there.result.tokens_per_layer == here.result.tokens_per_layer == schedule
    assert torch.equal(there.trace.token_index, here.trace.token_index)
    assert there.result.condensed.probs == here.result.condensed.probs
    assert there.result.precision == "bf16"
    assert all(t.device.type == "cpu" for t in _tensors(there))


def test_the_cache_places_models_and_moves_them_on_request():
    cache = serving.ModelCache(None, precision="bf16", device="cpu")
    clip = cache.get(TINY).clip
    assert clip.dtype == torch.bfloat16 and clip.device.type == "cpu"
    cache.place_on("meta")  # any other device: the loaded models move there
    assert cache.peek(TINY).clip.device.type == "meta" and cache.device == "meta"


# ------------------------------------------------------------------ torch threads


def _cgroup(tmp_path, files: dict[str, str]):
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    "files, affinity, threads",
    [
        ({}, 8, 8),  # no cgroup files: the affinity mask
        ({"cpu.max": "max 100000\n"}, 8, 8),  # v2 without a quota
        ({"cpu.max": "200000 100000\n"}, 8, 2),  # v2: 2 CPUs
        ({"cpu.max": "150000 100000\n"}, 8, 2),  # 1.5 CPUs: rounded up
        ({"cpu.max": "50000 100000\n"}, 8, 1),  # half a CPU: at least 1
        ({"cpu.max": "800000 100000\n"}, 4, 4),  # the quota exceeds the mask
        ({"cpu/cpu.cfs_quota_us": "300000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 16, 3),
        (
            {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
            6,
            6,
        ),
    ],
)
def test_threads_follow_the_cpu_quota(tmp_path, files, affinity, threads):
    assert cpu_threads(affinity, _cgroup(tmp_path, files)) == threads


def test_omp_num_threads_wins_and_zero_gpu_takes_one():
    before = torch.get_num_threads()
    try:
        assert device.set_torch_threads({"OMP_NUM_THREADS": "1"}) == before
        assert device.set_torch_threads({"SPACES_ZERO_GPU": "true"}) == 1
        torch.set_num_threads(before)
        device.in_worker(Placement())  # off ZeroGPU: nothing changes
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
