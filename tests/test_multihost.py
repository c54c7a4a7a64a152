"""Two processes x 4 CPU devices form one 8-device mesh over loopback (gloo collectives)
and take the same training steps as one process with 8 devices."""

import json
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest
from multihost_worker import take_steps

WORKER = pathlib.Path(__file__).with_name("multihost_worker.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    port = free_port()
    outs = [tmp_path / f"p{i}.json" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(port), "2", str(i), str(out)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i, out in enumerate(outs)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, output[-3000:]
    results = [json.loads(out.read_text()) for out in outs]
    assert all(r["devices"] == 8 for r in results)

    losses, kernel = take_steps()  # one process, 8 devices
    for r in results:
        np.testing.assert_allclose(r["losses"], losses, rtol=1e-5)
        np.testing.assert_allclose(r["kernel"], kernel, rtol=1e-4, atol=1e-6)
