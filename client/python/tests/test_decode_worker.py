"""pagoda.DecodeWorker from PyTorch (CPU): the reference runner against dense decoding, DLPack
views, and bad tensors that must raise clear errors and change nothing.

Run by ctest (python_decode_worker_test) with PYTHONPATH=<build>/client/python:bench/e2e; exits
77 (skipped) where torch is not installed.
"""

import ctypes
import tempfile
import unittest

try:
    import torch
except ImportError:  # CI installs python3-torch; elsewhere the test is skipped
    raise SystemExit(77)

import pagoda
import llama_runner
import llama_throughput

KV, Q, D, P, LAYERS = 2, 4, 16, 4, 2


def make_worker(tmp, **kw):
    store = pagoda.Store(
        host_capacity_bytes=16 << 20,
        data_dir=tmp,
        layouts=[pagoda.layout_id("fp16", KV, kw.get("head_dim", D), P)],
    )
    opts = dict(num_layers=LAYERS, q_heads=Q, kv_heads=KV, head_dim=D, page_tokens=P,
                policy="quest", budget_tokens=4096, pool_slots_per_head=256)  # fmt: skip
    opts.update(kw)
    return store, pagoda.DecodeWorker(store, **opts)


def rows(n, heads, seed, dim=D):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, heads, dim, generator=g) * 2 - 1).half()


def prefilled(worker, prompt, seed=0):
    opened = worker.open(prompt)
    n = len(prompt) - opened.cached_tokens
    for layer in range(LAYERS):
        worker.prefill(opened.id, layer, rows(n, KV, seed + layer), rows(n, KV, seed + 10 + layer))
    return opened.id


def step_inputs(batch, seed, dim=D):
    return rows(batch, Q, seed, dim), rows(batch, KV, seed + 1, dim), rows(batch, KV, seed + 2, dim)


class RunnerAgreesWithDense(unittest.TestCase):
    def test_whole_context_budget_equals_dense(self):
        # 50 slots per KV head hold one layer of the batch, not both: pages leave the pool and
        # are gathered back from the store's host arena (verified) every step.
        r = llama_runner.run("tiny", sequences=4, steps=64, policy="quest", budget_tokens=1 << 20,
                             pool_slots_per_head=50, verbose=False)  # fmt: skip
        # The shared 32-token prefix was found in the store by the later prompts.
        self.assertEqual(r["cached_tokens"][0], 0)
        self.assertEqual(r["cached_tokens"][1:], [32, 32, 32])
        self.assertEqual(len(set(r["prompt_lengths"])), 4)
        # Their prefill computed only the uncached tokens (prefill_attend over the cached prefix,
        # read from the store) and gives the dense prefill's first tokens.
        self.assertEqual(r["prefill_tokens_computed"], r["prefill_tokens"] - 3 * 32)
        self.assertEqual(r["first_token_match"], 1.0)
        self.assertLess(r["prefill_max_logit_diff"], 1e-2 * max(lg.abs().max().item() for lg in r["dense_logits"]))
        self.assertEqual(r["tokens"], r["dense_tokens"])  # 64 greedy steps x 4 sequences
        self.assertEqual(r["token_match_rate"], 1.0)
        scale = max(lg.abs().max().item() for lg in r["dense_logits"])
        for lg, dense in zip(r["logits"], r["dense_logits"]):  # fp16 rounding of attention outputs
            self.assertLess((lg - dense).abs().max().item(), 1e-2 * scale)
        self.assertGreater(r["worker_counts"]["bytes_committed"], 0)
        self.assertEqual(r["worker_counts"]["verify_failures"], 0)
        self.assertGreater(r["worker_counts"]["fetched_head_pages"], 0)
        self.assertEqual(sum(r["fetched_from_tier"].values()), r["worker_counts"]["bytes_fetched"])

    def test_pages_from_ssd_still_equal_dense(self):
        # A host tier of 24 pages cannot hold the 48 committed pages: the rest are demoted to
        # SSD and every fetch of theirs goes SSD -> host arena -> pool, verified.
        r = llama_runner.run("tiny", sequences=4, steps=64, budget_tokens=1 << 20,
                             pool_slots_per_head=50, host_bytes=24 * 2048, verbose=False)  # fmt: skip
        self.assertGreater(r["fetched_from_tier"]["ssd"], 0)
        self.assertGreater(r["tiers"]["ssd"]["pages"], 0)
        self.assertEqual(r["tokens"], r["dense_tokens"])
        self.assertEqual(r["worker_counts"]["verify_failures"], 0)

    def test_small_budget_completes_and_reports_agreement(self):
        full = llama_runner.run("tiny", sequences=4, steps=24, budget_tokens=1 << 20, verbose=False)
        small = llama_runner.run("tiny", sequences=4, steps=24, budget_tokens=48, verbose=False)
        self.assertEqual(len(small["tokens"]), 24)
        self.assertTrue(0.0 <= small["token_match_rate"] <= 1.0)
        self.assertEqual(len(small["first_divergence"]), 4)
        self.assertGreaterEqual(small["max_logit_diff"], 0.0)
        # The budget bounds what was attended: fewer head-pages than the dense run's.
        self.assertLess(small["worker_counts"]["attended_head_pages"],
                        full["worker_counts"]["attended_head_pages"])  # fmt: skip


class ThroughputBench(unittest.TestCase):
    """bench/e2e/llama_throughput.py on the CPU (its measurement is on a GPU): the two runs see the
    same synthetic K/V, so a budget covering the context decodes dense's tokens."""

    def test_whole_context_budget_decodes_dense_tokens(self):
        args = ["--device", "cpu", "--config", "tiny", "--dtype", "fp16", "--context", "200",
                "--dense-batch", "2", "--runs", "quest:2,quest+trigger:3", "--steps", "3",
                "--warmup", "1", "--budget", str(1 << 20)]  # fmt: skip
        r = llama_throughput.measure(args)
        self.assertEqual(r["dense"]["batch"], 2)
        self.assertEqual([p["batch"] for p in r["pagoda"]], [2, 3])
        for p in r["pagoda"]:
            self.assertEqual(p["steps_agreeing"], 3)
            self.assertEqual(p["phases"]["verify_failures"], 0)
            self.assertGreater(p["phases"]["attended_head_pages"], 0)
            self.assertEqual(len(p["tokens"]), 3)

    def test_bad_command_lines_are_refused(self):
        for runs in ["quest", "quest:0", ":3", "quest+nope:2", "quest:x"]:
            with self.assertRaises(ValueError):
                llama_throughput.measure(["--device", "cpu", "--dense-batch", "1", "--runs", runs])
        with self.assertRaises(ValueError):  # the CPU needs an explicit dense batch
            llama_throughput.measure(["--device", "cpu", "--config", "tiny"])


class DecodeWorkerTensors(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="pagoda_py_test_")
        self.store, self.w = make_worker(self.tmp.name)

    def tearDown(self):
        del self.w, self.store
        self.tmp.cleanup()

    def one_step(self, worker, seqs, seed, out_fn=None):
        plan = worker.plan(seqs, [7] * len(seqs))
        outs = []
        for layer in range(LAYERS):
            q, k, v = step_inputs(len(seqs), seed + layer)
            out = torch.empty_like(q) if out_fn is None else out_fn(q)
            worker.attend(plan, layer, q, k, v, out)
            outs.append(out.clone())
        stats = worker.finish(plan)
        self.assertTrue(stats.ok)
        return outs

    def test_strided_views_read_and_write_in_place(self):
        a = prefilled(self.w, list(range(11)))
        with tempfile.TemporaryDirectory() as tmp2:
            store2, w2 = make_worker(tmp2)
            b = prefilled(w2, list(range(11)))
            ref = self.one_step(w2, [b], 100)
            # q and out as views into wider buffers (byte_offset + non-packed strides).
            big_out = torch.zeros(1, Q, 3 * D, dtype=torch.float16)
            plan = self.w.plan([a], [7])
            for layer in range(LAYERS):
                q, k, v = step_inputs(1, 100 + layer)
                wide_q = torch.zeros(1, Q, 2 * D, dtype=torch.float16)
                wide_q[..., D:] = q
                out = big_out[..., D : 2 * D]
                self.w.attend(plan, layer, wide_q[..., D:], k, v, out)
                self.assertTrue(torch.equal(big_out[..., D : 2 * D], ref[layer]))
                self.assertEqual(big_out[..., :D].abs().sum().item(), 0)  # nothing outside
            self.assertTrue(self.w.finish(plan).ok)
            del w2, store2

    def test_bad_tensors_raise_and_change_nothing(self):
        a = prefilled(self.w, list(range(11)))
        with tempfile.TemporaryDirectory() as tmp2:
            store2, w2 = make_worker(tmp2)
            b = prefilled(w2, list(range(11)))
            ref = self.one_step(w2, [b], 200)

            plan = self.w.plan([a], [7])
            q, k, v = step_inputs(1, 200)
            out = torch.empty_like(q)

            def bad(what, **repl):
                args = dict(q=q, k=k, v=v, out=out)
                args.update(repl)
                with self.assertRaises(pagoda.InvalidArgumentError) as cm:
                    self.w.attend(plan, 0, args["q"], args["k"], args["v"], args["out"])
                self.assertIsInstance(cm.exception, ValueError)
                self.assertEqual(cm.exception.code, "INVALID_ARGUMENT")
                self.assertIn(what, str(cm.exception))
                return str(cm.exception)

            self.assertIn("float16 or bfloat16", bad("q", q=q.float()))
            self.assertIn("wrong dtype", bad("k", k=k.bfloat16()))
            self.assertIn("wrong size", bad("v", v=rows(1, Q, 1)))  # [1, q_heads, d]
            self.assertIn("axes", bad("q", q=q[0]))
            self.assertIn("contiguous", bad("o:", out=torch.empty(1, D, Q).half().transpose(1, 2)))
            self.assertIn("expected a torch tensor", bad("q", q=q.tolist()))
            # A tensor on another device (a CPU tensor's DLPack capsule relabelled as CUDA: the
            # check must refuse it before touching its memory).
            cap = k.__dlpack__()
            get = ctypes.pythonapi.PyCapsule_GetPointer
            get.restype, get.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
            ctypes.c_int32.from_address(get(cap, b"dltensor") + 8).value = 2  # kDLCUDA
            self.assertIn("wrong device", bad("k", k=cap))
            with self.assertRaises(pagoda.InvalidArgumentError):
                self.w.attend(plan, LAYERS, q, k, v, out)  # layer out of range
            self.assertEqual(self.w.length(a, 0), 11)  # nothing appended by the failed calls

            # The same step, now with good tensors, gives exactly the reference worker's outputs.
            for layer in range(LAYERS):
                q, k, v = step_inputs(1, 200 + layer)
                o = torch.empty_like(q)
                self.w.attend(plan, layer, q, k, v, o)
                self.assertTrue(torch.equal(o, ref[layer]))
            self.assertTrue(self.w.finish(plan).ok)
            self.assertEqual(self.w.length(a, 1), 12)
            del w2, store2

    def test_prefill_and_unknown_sequences(self):
        opened = self.w.open(list(range(9)))
        with self.assertRaises(pagoda.InvalidArgumentError) as cm:
            self.w.prefill(opened.id, 0, rows(9, KV, 1).float(), rows(9, KV, 2))
        self.assertIn("k", str(cm.exception))
        with self.assertRaises(pagoda.InvalidArgumentError):
            self.w.prefill(opened.id, 0, rows(10, KV, 1), rows(10, KV, 2))  # more than the prompt
        with self.assertRaises(pagoda.InvalidArgumentError):
            self.w.prefill(opened.id, 0, rows(9, KV, 1), rows(8, KV, 2))  # k and v disagree
        with self.assertRaises(pagoda.InvalidArgumentError):
            self.w.prefill(12345, 0, rows(9, KV, 1), rows(9, KV, 2))  # never opened
        self.assertEqual(self.w.length(opened.id, 0), 0)
        with self.assertRaises(pagoda.InvalidArgumentError):
            self.w.plan([12345], [1])
        with self.assertRaises(pagoda.StatusError) as cm:
            self.w.close(12345)
        self.assertEqual(cm.exception.code, "NOT_FOUND")
        self.assertNotIsInstance(cm.exception, ValueError)
        with self.assertRaises(pagoda.StatusError) as cm:  # not prefilled yet
            self.w.plan([opened.id], [1])
        self.assertEqual(cm.exception.code, "FAILED_PRECONDITION")
        # After the refusals, the sequence prefills and decodes normally.
        for layer in range(LAYERS):
            self.w.prefill(opened.id, layer, rows(9, KV, layer), rows(9, KV, 10 + layer))
        self.one_step(self.w, [opened.id], 300)
        self.assertEqual(self.w.length(opened.id), 10)
        child = self.w.fork(opened.id)
        self.one_step(self.w, [opened.id, child], 400)
        self.w.close(child)
        self.assertEqual(self.w.stats()["sequences"], 1)

    def test_prefix_lookup_across_workers_of_one_store(self):
        prompt = list(range(50, 64))  # 14 tokens: 3 full pages of 4
        prefilled(self.w, prompt)
        self.w.flush()
        other = pagoda.DecodeWorker(self.store, num_layers=LAYERS, q_heads=Q, kv_heads=KV,
                                    head_dim=D, page_tokens=P, policy="quest",
                                    budget_tokens=4096, pool_slots_per_head=64)  # fmt: skip
        opened = other.open(prompt + [1, 2])
        self.assertEqual(opened.cached_tokens, 12)
        # The worker's page keys are the chained keys Python computes for the same tokens.
        for layer in range(LAYERS):
            keys = pagoda.chain_keys(prompt[:12], P, model="model", layer=layer)
            self.assertEqual(other.page_keys(opened.id, layer), keys)
        self.assertEqual(other.open([9] + prompt).cached_tokens, 0)

    def test_bad_options_and_store(self):
        with self.assertRaises(pagoda.InvalidArgumentError):
            make_worker(self.tmp.name + "/x", q_heads=3)
        with self.assertRaises(pagoda.InvalidArgumentError):
            pagoda.DecodeWorker(self.store, num_layers=1, q_heads=Q, kv_heads=KV, head_dim=D,
                                page_tokens=P, policy="nope")  # fmt: skip
        with self.assertRaises(pagoda.InvalidArgumentError):
            pagoda.DecodeWorker(self.store, num_layers=1, q_heads=Q, kv_heads=KV, head_dim=D,
                                page_tokens=P, device="tpu")  # fmt: skip
        with self.assertRaises(pagoda.InvalidArgumentError):  # quest keeps a summary per page
            make_worker(self.tmp.name + "/y", summary_slots=0)
        with self.assertRaises(pagoda.InvalidArgumentError):
            pagoda.Store(layouts=[])
        if not torch.cuda.is_available():  # CUDA asked for where torch or Pagoda has none
            with self.assertRaises(pagoda.StatusError) as cm:
                pagoda.DecodeWorker(self.store, num_layers=1, q_heads=Q, kv_heads=KV, head_dim=D,
                                    page_tokens=P, device="cuda")  # fmt: skip
            self.assertEqual(cm.exception.code, "UNAVAILABLE")
        self.assertTrue(issubclass(pagoda.StatusError, RuntimeError))
        tiers = {t["name"]: t for t in self.store.stats()["tiers"]}
        self.assertTrue(tiers["host"]["present"])


    def test_steps_between_retrievals_are_capturable(self):
        # Quest with a trigger that never fires: after the first step every step is planned
        # whole; replayed() is for those only, and only before any of their layers ran.
        _, w = make_worker(self.tmp.name + "/g", budget_tokens=8, boundary_trigger=True,
                           boundary_threshold=-1.0, capturable_steps=True)  # fmt: skip
        _, eager = make_worker(self.tmp.name + "/e", budget_tokens=8, boundary_trigger=True,
                               boundary_threshold=-1.0)  # fmt: skip
        eager_seq = prefilled(eager, list(range(300, 330)))
        plan = eager.plan([eager_seq], [0])
        for layer in range(LAYERS):
            eager.attend(plan, layer, *step_inputs(1, 40), torch.zeros(1, Q, D, dtype=torch.half))
        eager.finish(plan)
        self.assertFalse(eager.plan([eager_seq], [1]).capturable)  # not asked for
        seq = prefilled(w, list(range(300, 330)))
        out = torch.zeros(1, Q, D, dtype=torch.half)
        keys = set()
        for step in range(6):
            plan = w.plan([seq], [step])
            self.assertEqual(plan.capturable, step > 0)
            if not plan.capturable:
                with self.assertRaises(pagoda.StatusError) as cm:
                    w.replayed(plan)
                self.assertEqual(cm.exception.code, "FAILED_PRECONDITION")
            else:
                keys.add(plan.graph_key)
            for layer in range(LAYERS):
                q, k, v = step_inputs(1, 40 + step)
                w.attend(plan, layer, q, k, v, out)
            with self.assertRaises(pagoda.StatusError):
                w.replayed(plan)  # its layers ran
            self.assertTrue(all(s is None for s in w.finish(plan).sequence_status))
        self.assertEqual(len(keys), 1)  # one batch, one graph


class BlocksAndEdits(unittest.TestCase):
    """attend_block / extend / commit_block / truncate (a diffusion LM's block decoding)."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="pagoda_py_test_")
        self.store, self.w = make_worker(self.tmp.name)

    def tearDown(self):
        del self.w, self.store
        self.tmp.cleanup()

    def test_a_block_attends_bidirectionally_then_joins_the_sequence(self):
        # Layer l's context: k = rows(12, KV, l), v = rows(12, KV, 10 + l) (prefilled()).
        seq = prefilled(self.w, list(range(12)))
        n = 6  # a page and a half
        for layer in range(LAYERS):
            q, k, v = rows(n, Q, 50 + layer), rows(n, KV, 60 + layer), rows(n, KV, 70 + layer)
            out = torch.empty_like(q)
            stats = self.w.attend_block(seq, layer, q, k, v, out)
            self.assertEqual(stats.attended_head_pages, (3 + 2) * KV)
            keys = torch.cat([rows(12, KV, layer), k]).float()
            values = torch.cat([rows(12, KV, 10 + layer), v]).float()
            for h in range(Q):  # every query over every position: no causal mask
                kvh = h // (Q // KV)
                p = torch.softmax(q[:, h].float() @ keys[:, kvh].T / D**0.5, dim=-1)
                ref = p @ values[:, kvh]
                self.assertLess((out[:, h].float() - ref).abs().max().item(), 2e-3)
            # The same block kept in place: the same output.
            again = torch.empty_like(q)
            self.w.attend_block(seq, layer, q, k, v, again, keep_pages=[1, 1])
            self.assertTrue(torch.equal(again, out))
        with self.assertRaises(pagoda.InvalidArgumentError):
            self.w.attend_block(seq, 0, q, k, v, out, keep_pages=[1])  # 2 pages, 1 flag
        self.assertEqual(self.w.length(seq, 0), 12)
        self.w.extend(seq, list(range(100, 106)))
        for layer in range(LAYERS):
            self.w.commit_block(seq, layer)
        self.assertEqual(self.w.length(seq, 1), 18)
        self.w.flush()
        tokens = list(range(12)) + list(range(100, 104))  # the full pages' tokens
        self.assertEqual(self.w.page_keys(seq, 0), pagoda.chain_keys(tokens, P, "model", 0))
        # Decode goes on from the block's open page, then a cut back to a page boundary.
        plan = self.w.plan([seq], [7])
        for layer in range(LAYERS):
            q1, k1, v1 = step_inputs(1, 300 + layer)
            self.w.attend(plan, layer, q1, k1, v1, torch.empty_like(q1))
        self.assertTrue(self.w.finish(plan).ok)
        with self.assertRaises(pagoda.InvalidArgumentError):
            self.w.truncate(seq, 7)  # not a page boundary
        self.assertEqual(self.w.length(seq, 0), 19)
        self.w.truncate(seq, 8)
        self.assertEqual(self.w.length(seq, 0), 8)
        self.assertEqual(len(self.w.page_keys(seq, 1)), 2)


@unittest.skipUnless(torch.cuda.is_available(), "needs a CUDA device (bench/gpu/run.sh runs it)")
class OnCuda(unittest.TestCase):
    """The CUDA backend through torch tensors on the device (DLPack, torch's current stream).
    Its decode kernel takes head_dim 64 or 128: these tests use 64."""

    def test_whole_context_budget_equals_dense_on_the_device(self):
        r = llama_runner.run("small", device="cuda", kv_dtype="fp16", sequences=4, steps=32,
                             budget_tokens=1 << 20, pool_slots_per_head=50, verbose=False)  # fmt: skip
        self.assertEqual(r["tokens"], r["dense_tokens"])
        self.assertEqual(r["first_token_match"], 1.0)
        self.assertEqual(r["worker_counts"]["verify_failures"], 0)
        self.assertGreater(r["worker_counts"]["attended_head_pages"], 0)

    def test_device_worker_attends_what_the_cpu_worker_attends(self):
        # quest at a 3-page budget: selection on the device against the CPU reference's.
        with tempfile.TemporaryDirectory() as t1, tempfile.TemporaryDirectory() as t2:
            s_cpu, cpu = make_worker(t1, budget_tokens=12, head_dim=64)
            s_gpu, gpu = make_worker(t2, budget_tokens=12, head_dim=64, device="cuda")
            prompt = list(range(37))
            a, opened = cpu.open(prompt).id, gpu.open(prompt)
            for layer in range(LAYERS):
                k, v = rows(37, KV, layer, 64), rows(37, KV, 10 + layer, 64)
                cpu.prefill(a, layer, k, v)
                gpu.prefill(opened.id, layer, k.cuda(), v.cuda())
            for step in range(4):
                pc, pg = cpu.plan([a], [7]), gpu.plan([opened.id], [7])
                for layer in range(LAYERS):
                    q, k, v = step_inputs(1, 50 * step + layer, 64)
                    oc, og = torch.empty_like(q), torch.empty_like(q).cuda()
                    cpu.attend(pc, layer, q, k, v, oc)
                    gpu.attend(pg, layer, q.cuda(), k.cuda(), v.cuda(), og)
                    torch.testing.assert_close(og.cpu().float(), oc.float(), atol=2e-3, rtol=2e-3)
                self.assertTrue(cpu.finish(pc).ok)
                self.assertTrue(gpu.finish(pg).ok)
            # A host tensor given to the device worker: a clear error, nothing changed.
            plan = gpu.plan([opened.id], [7])
            q, k, v = step_inputs(1, 999, 64)
            with self.assertRaises(pagoda.InvalidArgumentError):
                gpu.attend(plan, 0, q, k.cuda(), v.cuda(), torch.empty_like(q).cuda())
            for layer in range(LAYERS):  # the plan is still whole
                gpu.attend(plan, layer, q.cuda(), k.cuda(), v.cuda(), torch.empty_like(q).cuda())
            self.assertTrue(gpu.finish(plan).ok)
            del cpu, gpu, s_cpu, s_gpu


if __name__ == "__main__":
    unittest.main()
