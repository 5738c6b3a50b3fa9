"""bench/gpu_check.py runs on the CPU on tiny models (so the GPU check cannot rot), without the
packages a bare GPU machine lacks, and prints every figure it promises."""

import re
import subprocess
import sys

import pytest

from tests.conftest import REPO

# What a bare GPU machine does not have: importing any of them fails in the child process.
ABSENT = ("ray", "faiss", "pyarrow", "vllm", "fastapi", "uvicorn")
RUN = (f"import runpy, sys; sys.modules.update(dict.fromkeys({ABSENT!r})); "
       "sys.argv = ['bench/gpu_check.py', *sys.argv[1:]]; runpy.run_path('bench/gpu_check.py', run_name='__main__')")
NUMBER = r"(\d+(?:\.\d+)?)"


def test_gpu_check_prints_every_figure_on_the_cpu():
    out = subprocess.run([sys.executable, "-c", RUN, "--device", "cpu", "--tiny", "--dtype", "float32",
                          "--batch-sizes", "1", "4", "--frame-tokens", "32", "96", "--repeats", "1"],
                         capture_output=True, text=True, cwd=REPO, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()

    def line(pattern: str) -> tuple[float, ...]:
        """The numbers of the one printed line that matches `pattern`; all positive."""
        found = [m for text in lines if (m := re.fullmatch(pattern, text))]
        assert len(found) == 1, (pattern, out.stdout)
        values = tuple(float(v) for v in found[0].groups())
        assert all(v > 0 for v in values), found[0].group(0)
        return values

    tag = "tiny cpu float32"
    for batch in (1, 4):
        (encode,) = line(rf"encode_frames {tag} batch={batch}: {NUMBER} frames/s")
        line(rf"frame_tokens {tag} batch={batch}: {NUMBER} frames/s")
        (pipeline,) = line(rf"frame_encoder {tag} batch={batch}: {NUMBER} frames/s")
        (ratio,) = line(rf"frame_encoder_ratio {tag} batch={batch}: {NUMBER} \(target >= 0.8\)")
        assert ratio == pytest.approx(pipeline / encode, rel=0.05, abs=0.01)
    llm_tag = r"tiny\(llm 64x2\) cpu float32"
    for frame_tokens in (32, 96):
        prompt_tokens, first_token_s = line(
            rf"llm_first_token_s {llm_tag} frame_tokens={frame_tokens} prompt_tokens=(\d+): {NUMBER} s")
        assert prompt_tokens > frame_tokens
        (prefill,) = line(rf"llm_prefill_tokens_per_s {llm_tag} frame_tokens={frame_tokens} "
                          rf"prompt_tokens={prompt_tokens:.0f}: {NUMBER} tokens/s")
        assert prefill == pytest.approx(prompt_tokens / first_token_s, rel=0.05)
    line(rf"gpu_check total_s: {NUMBER}")
