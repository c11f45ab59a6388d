"""The Python binding (`import pagoda`) and the `pagoda` CLI against a real pagodad.

Usage: python_cli_test.py PAGODAD_BIN PAGODA_CLI_BIN   (PYTHONPATH must hold the binding)
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

import numpy as np

import pagoda

PAGODAD, CLI = sys.argv[1], sys.argv[2]
STATE = {}


def start_pagodad(config):
    """Starts pagodad with `config` (YAML) in a fresh directory; returns (dir, process, target)."""
    d = tempfile.mkdtemp(prefix="pgdpy-", dir="/tmp")
    with open(os.path.join(d, "c.yaml"), "w") as f:
        f.write(config)
    with open(os.path.join(d, "log"), "w") as log:
        proc = subprocess.Popen(
            [PAGODAD, "--config", os.path.join(d, "c.yaml"), "--data-dir", d, "--grpc-port", "0",
             "--http-port", "0", "--port-file", os.path.join(d, "ports.json")],
            stdout=subprocess.DEVNULL, stderr=log)
    ports = os.path.join(d, "ports.json")
    for _ in range(300):
        if os.path.exists(ports) or proc.poll() is not None:
            break
        time.sleep(0.05)
    if not os.path.exists(ports):
        with open(os.path.join(d, "log")) as log:
            raise RuntimeError("pagodad did not start: " + log.read())
    with open(ports) as f:
        port = json.load(f)["grpc_port"]
    return d, proc, "127.0.0.1:%d" % port


def stop_pagodad(d, proc):
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(timeout=60)
    shutil.rmtree(d, ignore_errors=True)
    assert rc == 0, "pagodad exited with %d" % rc


def setUpModule():
    d, proc, target = start_pagodad("store: {host_bytes: 64MiB, ssd_bytes: 128MiB}\n")
    STATE.update(dir=d, proc=proc, target=target)


def tearDownModule():
    stop_pagodad(STATE["dir"], STATE["proc"])


class BindingTest(unittest.TestCase):
    def client(self, path, tenant="py"):
        return pagoda.Client(STATE["target"], tenant=tenant, path=path)

    def test_round_trip_both_paths(self):
        lay = pagoda.layout_id("fp16", 8, 128, 16)
        n = pagoda.page_bytes(lay)
        self.assertEqual(n, 65536)
        for path, moved_by in (("local", "local"), ("remote", "stream"), ("grpc", "remote")):
            c = self.client(path)
            self.assertEqual(c.data_path, moved_by)
            keys = pagoda.chain_keys(list(range(100, 164)), 16, "model-" + path, 3, "salt")
            self.assertEqual(len(keys), 4)
            pages = np.random.default_rng(7).integers(0, 256, size=(4, n), dtype=np.uint8)
            self.assertEqual(c.put(keys, pages, lay), ["OK"] * 4)
            self.assertEqual(c.put(keys, pages, lay, raise_on_error=False), ["ALREADY_EXISTS"] * 4)
            out, found = c.get(keys + [(1 << 127) + 5], lay)
            self.assertEqual(found, [True] * 4 + [False])
            self.assertTrue(np.array_equal(out[:4], pages))
            # Into caller buffers of another dtype: the bytes are what count.
            f16 = np.zeros((4, n // 2), dtype=np.float16)
            self.assertEqual(c.get_into(keys, f16), [True] * 4)
            self.assertTrue(np.array_equal(f16.view(np.uint8), pages))
            self.assertEqual(c.longest_prefix(keys), 4)
            self.assertEqual(c.longest_prefix([keys[0], 12345, keys[2]]), 1)
            self.assertEqual(c.exists([keys[1], 99]), [True, False])
            self.assertEqual(c.remove([keys[3]]), ["OK"])
            self.assertEqual(c.longest_prefix(keys), 3)
        self.assertGreaterEqual(self.client("remote").stats()["pages"], 6)

    def test_bad_input_raises(self):
        c = self.client("auto")
        lay = pagoda.layout_id()
        with self.assertRaises(RuntimeError):
            c.put([1], np.zeros((1, 100), np.uint8), lay)  # wrong size for the layout
        with self.assertRaises(ValueError):
            c.put([-1], np.zeros((1, 65536), np.uint8), lay)  # not a 128-bit key
        with self.assertRaises(ValueError):
            pagoda.layout_id("fp8")
        with self.assertRaises(ValueError):
            c.get_into([1, 2], np.zeros((3, 65536), np.uint8))
        self.assertEqual(c.exists([1]), [False])

    def test_tenants_are_isolated(self):
        lay = pagoda.layout_id()
        a, b = self.client("auto", "ta"), self.client("auto", "tb")
        page = np.full((1, 65536), 3, np.uint8)
        a.put([777], page, lay)
        self.assertEqual(b.exists([777]), [False])
        self.assertEqual(a.exists([777]), [True])

    def test_torch_tensors_when_available(self):
        try:
            import torch  # noqa: F401
        except ImportError:
            self.skipTest("torch is not importable")
        import torch
        c = self.client("auto")
        lay = pagoda.layout_id("bf16", 8, 128, 16)
        t = torch.randn(2, 2, 8, 16, 128).to(torch.bfloat16).view(torch.int16)
        c.put([9001, 9002], t, lay)
        out = torch.zeros_like(t)
        self.assertEqual(c.get_into([9001, 9002], out), [True, True])
        self.assertTrue(torch.equal(out, t))


class CliTest(unittest.TestCase):
    def run_cli(self, *args):
        return subprocess.run([CLI, "--target", STATE["target"], *args], capture_output=True,
                              text=True, timeout=60)

    def test_put_get_file_round_trip(self):
        src = os.path.join(STATE["dir"], "in.bin")
        dst = os.path.join(STATE["dir"], "out.bin")
        data = os.urandom(300_001)
        with open(src, "wb") as f:
            f.write(data)
        r = self.run_cli("put", src, "--name", "weights")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = self.run_cli("--remote", "get", "weights", "-o", dst)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(dst, "rb") as f:
            self.assertEqual(f.read(), data)
        r = self.run_cli("get", "no-such-file", "-o", dst)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("NOT_FOUND", r.stderr)

    def test_status_and_stats_tables(self):
        r = self.run_cli("status")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("serving", r.stdout)
        self.assertIn("host", r.stdout)
        r = self.run_cli("stats")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout, r"tier\s+capacity\s+used")

    def test_bench_runs(self):
        r = self.run_cli("bench", "--pages", "64", "--page-kib", "64", "--batch", "8")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("get", r.stdout)
        self.assertIn("100%", r.stderr)  # the progress bar finished


class LargerThanHostTierTest(unittest.TestCase):
    """One request ten times the host tier (4 MiB) streams through it, from Python and the CLI."""

    @classmethod
    def setUpClass(cls):
        cls.dir, cls.proc, cls.target = start_pagodad(
            "store: {host_bytes: 4MiB, ssd_bytes: 256MiB}\n")

    @classmethod
    def tearDownClass(cls):
        stop_pagodad(cls.dir, cls.proc)

    def test_python_put_and_get_of_ten_host_tiers(self):
        lay = pagoda.layout_id("fp16", 8, 128, 16)
        n = 640  # 40 MiB of 64 KiB pages
        rng = np.random.default_rng(14)
        for path, base in (("local", 1 << 40), ("remote", 2 << 40)):
            c = pagoda.Client(self.target, tenant="big", path=path)
            keys = [base + i for i in range(n)]
            pages = rng.integers(0, 256, size=(n, 65536), dtype=np.uint8)
            self.assertEqual(c.put(keys, pages, lay), ["OK"] * n)
            out, found = c.get(keys, lay)
            self.assertTrue(all(found), path)
            self.assertTrue(np.array_equal(out, pages), path)

    def test_cli_put_and_get_of_ten_host_tiers(self):
        src = os.path.join(self.dir, "big.bin")
        dst = os.path.join(self.dir, "big.out")
        data = os.urandom(40 << 20)
        with open(src, "wb") as f:
            f.write(data)
        run = lambda *a: subprocess.run([CLI, "--target", self.target, *a], capture_output=True,
                                        text=True, timeout=120)
        r = run("put", src, "--name", "big")
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run("--remote", "get", "big", "-o", dst)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(dst, "rb") as f:
            self.assertTrue(f.read() == data)


if __name__ == "__main__":
    unittest.main(argv=[sys.argv[0]], verbosity=2)
