"""The gate's intervals: the bootstrap's AP and IoU equal the metrics' own on the full set, and a drop past its
limit is a failure only when its whole interval is."""

import numpy as np

from datasets.metrics import EvalSet
from deploy.preprocess import preprocess
from deploy.runtime import OrtModel
from evaluate import bootstrap
from evaluate.checks import blame, check
from train.checkpoint import load_model_record
from train.run_dir import RunDir


def test_resampling_tables_reproduce_the_metrics_on_the_full_set(tiny_run):
    rd = RunDir.of(tiny_run)
    for task, metrics in (("detector", ("map", "map50")), ("segmenter", ("miou", "thin_iou"))):
        ev = EvalSet.from_checkpoint(load_model_record(rd, task), "val", None)
        m = OrtModel(rd.model(task, "int8"))
        preds = ev.predict(m.infer, lambda img, m=m: preprocess(img, m.contract.preprocess), m.contract.postprocess)
        want = ev.score_predictions(preds, thin_metrics=False)
        for metric in metrics:
            table = bootstrap.table(ev, preds, None, metric)
            assert abs(table.metric(np.arange(len(ev.images)), metric) - want[metric]) < 1e-9, (task, metric)
        assert bootstrap.table(ev, preds, None, "ods_f1") is None or task == "detector"


def test_a_drop_past_its_limit_fails_only_with_confidence():
    sure = check("detector", "preprocessing drop", 0.02, 0.005, "max", "preprocessing", [0.01, 0.03])
    noise = check("detector", "preprocessing drop", 0.007, 0.005, "max", "preprocessing", [0.001, 0.013])
    strict = check("detector", "preprocessing drop", 0.007, 0.005, "max", "preprocessing", [0.001, 0.013],
                   strict=True)
    assert not sure["passed"] and "within_noise" not in sure
    assert noise["passed"] and noise["within_noise"] and noise["interval"] == [0.001, 0.013]
    assert not strict["passed"] and strict["within_noise"]
    assert blame({"checks": [noise]}) == "none" and blame({"checks": [strict]}) == "preprocessing"
    assert check("detector", "preprocessing drop", 0.001, 0.005, "max", "preprocessing", [-0.01, 0.012])["passed"]
