"""`python -m tca eval`: accuracy, GMACs and speed of CLIP vs TCA / EViT / ToMe over a labelled
image folder, in TCA's stream protocol.

    python -m tca eval DATA_DIR --methods none,tca,evit,tome --keep-rate 0.9 0.7 --out r.json

Protocol (tca-method.md §1.7-1.8, without the official runner's bugs of §6 items 9 and 17):

* Every setting (method x keep rate) sees the same images in the same stream order.
  ``--shuffle-seed S`` fixes the order; repeat ``r`` of ``--repeats N`` uses seed ``S + r``.
* ``tca`` runs as a stream with a *fresh* reservoir per run: the anchors (from the images seen so
  far) guide condensation, each image is filed into the reservoir in order, then its logits are
  corrected. Both accuracies are reported: condensation alone (``top1_condensation_only``,
  anchor-guided, before the correction) and the full method (``top1``).
* The baselines (``none``, ``evit``, ``tome``) get no reservoir and no logits correction. They are
  order-independent, so they run once even with ``--repeats N`` (their std is 0 by construction).
* With ``--batch-size B > 1`` images are still filed and corrected one by one in stream order,
  but the anchors used by the forward pass refresh once per batch (the released code uses
  batch 1; pass ``--batch-size 1`` for the exact protocol).

Every evaluated image is appended to a per-run JSONL file under ``--records`` as soon as its
batch is done (a TCA run also keeps a reservoir snapshot plus an append-only log of the images
filed since), so rerunning the same command after a crash resumes where it stopped and loses
nothing already computed. Unreadable images are reported, skipped and counted.

Modules, one concept each: ``datasets`` (folders and manifests), ``benchmark`` (clip_benchmark's
data sets: its layouts, class names and templates), ``suites`` (the paper's suites and its
numbers), ``settings`` (options, settings, stream orders), ``records`` (resumable per-run
output), ``loader`` (image decoding), ``loop`` (the evaluation), ``grid`` (its cells, in turn or
on Ray), ``report`` (JSON, table, CSV, plot). The command line lives in ``tca.cli``.
"""

from ..errors import EvalError
from .benchmark import load_benchmark
from .datasets import IMAGE_EXTENSIONS, Dataset, TarMember, load_dataset
from .loader import Batch, default_workers
from .loop import TOP_K, evaluate, execute, run
from .records import RECORDS_VERSION, ReservoirStore, Run, RunLog, check_records_dir
from .report import (
    CSV_FIELDS,
    RANDOM_NOTE,
    format_table,
    plot,
    summarise,
    summarise_records,
    write_csv,
    write_json,
)
from .settings import (
    BENCHMARK_TEMPLATES,
    DEFAULT_KEEP_RATES,
    DEFAULT_METHODS,
    EvalOptions,
    Setting,
    make_settings,
    stream_orders,
)

__all__ = [
    "evaluate",
    "run",
    "execute",
    "load_benchmark",
    "TarMember",
    "check_records_dir",
    "BENCHMARK_TEMPLATES",
    "EvalOptions",
    "load_dataset",
    "Dataset",
    "Setting",
    "make_settings",
    "stream_orders",
    "summarise",
    "summarise_records",
    "format_table",
    "write_csv",
    "write_json",
    "plot",
    "Run",
    "RunLog",
    "ReservoirStore",
    "Batch",
    "EvalError",
    "RANDOM_NOTE",
    "CSV_FIELDS",
    "IMAGE_EXTENSIONS",
    "DEFAULT_METHODS",
    "DEFAULT_KEEP_RATES",
    "RECORDS_VERSION",
    "TOP_K",
    "default_workers",
]
