import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_runtime_import_and_cli_do_not_import_torch():
    code = (
        "import sys, deploy, deploy.runtime, deploy.preprocess, deploy.postprocess, deploy.contract\n"
        "import deploy.__main__, deploy.sources, deploy.capture, deploy.drift\n"
        "assert 'torch' not in sys.modules, 'deploy imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_no_torch_import_lines_under_deploy():
    offenders = [
        str(p) for p in (REPO / "deploy").rglob("*.py")
        if any(line.strip().startswith(("import torch", "from torch")) for line in p.read_text().splitlines())
    ]
    assert offenders == []


def test_running_the_runtime_does_not_import_torch(tiny_run, tiny_data, tmp_path):
    code = (
        "import sys\n"
        "from deploy.__main__ import main\n"
        f"rc = main(['run', '--model', r'{tiny_run / 'export' / 'detector.int8.onnx'}', '--seg', "
        f"r'{tiny_run / 'export' / 'segmenter.onnx'}', '--source', r'{tiny_data.parent / 'data' / 'images' / 'val'}',"
        f" '--out', r'{tmp_path / 'preds.jsonl'}'])\n"
        "assert rc == 0 and 'torch' not in sys.modules, 'running deploy imported torch'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
