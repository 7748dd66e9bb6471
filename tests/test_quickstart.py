"""`fishscale quickstart` end to end, as a new user runs it: every stage for real (synth ->
shard -> verify -> DeepSpeed training -> eval -> report), then a re-run that reuses them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from PIL import Image


def run_quickstart(out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fishscale.cli", "quickstart", "--out", str(out)],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=1500)


def test_quickstart_runs_every_stage_then_reuses_them(tmp_path):
    out = tmp_path / "qs"
    first = run_quickstart(out)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]

    # ends with the per-bin table (all four bins of the tiny profile) and where the files are
    table = first.stdout
    for row in ("ultra-rare", "minority", "neutral", "majority"):
        assert row in table
    assert "quickstart finished" in table and str(out / "report" / "README.md") in table

    run = out / "run"
    result = json.loads((run / "eval" / "test.json").read_text())
    assert result["num_images"] == sum(b["images"] for b in result["bins"].values())
    assert set(result["bins"]) == {"ultra-rare", "minority", "neutral", "majority"}
    majority_share = result["bins"]["majority"]["images"] / result["num_images"]   # 62/153 = 0.41
    assert result["top1"] > majority_share + 0.1     # learned more than "always the common species"
    for name in ("best.safetensors", "last.safetensors", "config.yaml", "metrics.jsonl", "summary.json"):
        assert (run / name).is_file(), name
    phases = {json.loads(line).get("phase") for line in (run / "metrics.jsonl").read_text().splitlines()
              if '"train"' in line}
    assert len(phases) == 2              # head-only phase, then full fine-tune
    pngs = sorted((out / "report").glob("*.png"))
    assert pngs
    for png in pngs:
        Image.open(png).verify()

    second = run_quickstart(out)
    assert second.returncode == 0, second.stderr[-3000:]
    reused = [line for line in second.stderr.splitlines() if "already done, reusing" in line]
    assert len(reused) == 8              # synth, shard, verify x3, train, eval, report
    assert "ultra-rare" in second.stdout
