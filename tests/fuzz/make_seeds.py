#!/usr/bin/python3
"""Writes the seed corpus of each fuzz target under corpus/<target>/ (run from anywhere; the
files are committed, this script documents and regenerates them). Inputs found by fuzzing that
crashed before a fix go in the same folders under crash-<sha1> names and are never regenerated."""
import io
import os
import struct

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# --- config: the shipped configs and a few edge shapes
for rel in ["deploy/k8s/base/pagodad.yaml", "deploy/k8s/overlays/cluster-rdma-gpu/pagodad.yaml"]:
    with open(os.path.join(ROOT, rel), "rb") as f:
        put("config", rel.replace("/", "_"), f.read())
put("config", "layouts", "store: {layouts: [{dtype: bf16, kv_heads: 2, head_dim: 64, page_tokens: 32}]}\n")
put("config", "tenants", "security: {allow_unknown_tenants: false, token: x}\ntenants:\n  a: {token: y, quota_bytes: 1GiB}\n")
put("config", "cluster", "cluster: {etcd_endpoints: 'https://e:2379,h:1', etcd_ca: /c, lease_ttl_s: 3}\n")
put("config", "sizes", "store: {host_bytes: 18446744073709551615, ssd_bytes: 1TiB}\n")

# --- node_info: records as pagodad writes them
put("node_info", "full", '{"id":"node-1","address":"10.0.0.1","grpc_port":50051,"http_port":9464,'
    '"data_port":0,"tiers":["host","ssd"],"capacity_bytes":{"host":4294967296,"ssd":68719476736},'
    '"weight":1.0,"version":"0.1.0"}')
put("node_info", "minimal", '{"id":"a","address":"h","grpc_port":1}')
put("node_info", "weight", '{"id":"a.b_c-d","address":"::1","grpc_port":65535,"weight":2.5}')

# --- npy: the dtypes and versions the trace tools read
for name, arr in [("f2", np.arange(12, dtype="<f2").reshape(3, 4)),
                  ("f4", np.ones((2, 2, 2), dtype="<f4")),
                  ("i4", np.array([1, -2, 3], dtype="<i4")),
                  ("scalar", np.array(1.5, dtype="<f4"))]:
    b = io.BytesIO()
    np.save(b, arr)
    put("npy", name, b.getvalue())

# --- local_protocol: first byte odd = after a valid Hello
MAGIC = 0x31444750


def frame(op, count, payload):
    return struct.pack("<IHHII", MAGIC, op, 0, count, len(payload)) + payload


L16 = 0 | (4 << 4) | (0 << 8) | (8 << 16)  # fp16, 16 tokens, 1 kv head, head_dim 8: 512 bytes
reserve = frame(2, 1, struct.pack("<QQIIQ", 1, 2, L16, 0, 512))
commit = frame(3, 1, struct.pack("<QQ", 1, 0))
abort = frame(4, 1, struct.pack("<Q", 1))
acquire = frame(5, 2, struct.pack("<QQ", 1, 2) + struct.pack("<QQ", 3, 4))
release = frame(6, 1, struct.pack("<Q", 1))
put("local_protocol", "reserve_commit", b"\x01" + reserve + commit)
put("local_protocol", "reserve_abort", b"\x01" + reserve + abort)
put("local_protocol", "acquire_release", b"\x01" + acquire + release)
put("local_protocol", "hello_raw", b"\x00" + frame(1, 1, struct.pack("<II", 1, 10) + b"tfuzz-token"))
put("local_protocol", "no_hello", b"\x00" + reserve)


# --- grpc_handlers: first byte = method (| 0x80 with the token), then the request message
def varint(v):
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


def field(num, wire, payload):
    key = varint((num << 3) | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def pagekey(hi, lo):
    return field(1, 1, struct.pack("<Q", hi)) + field(2, 1, struct.pack("<Q", lo))


keys_req = field(1, 2, b"t") + field(2, 2, pagekey(1, 2)) + field(2, 2, pagekey(3, 4))
putpage = (field(1, 2, pagekey(1, 2)) + field(2, 0, varint(L16)) + field(3, 0, varint(512)) +
           field(4, 1, struct.pack("<Q", 0)) + field(5, 2, bytes(512)))
put_begin = field(1, 2, b"t") + field(2, 2, putpage)
for m, name, msg in [(0, "put_inline", put_begin), (1, "get_inline", keys_req),
                     (2, "exists", keys_req), (3, "longest_prefix", keys_req),
                     (4, "remove", keys_req), (5, "pin", keys_req), (6, "unpin", keys_req),
                     (7, "prefetch", keys_req + field(3, 2, b"host")),
                     (8, "stats", field(1, 2, b"t")), (9, "health", b"")]:
    put("grpc_handlers", name, bytes([0x80 | m]) + msg)
    put("grpc_handlers", name + "_notoken", bytes([m]) + msg)


# --- ssd_records: edits of the template tier (op % 3: 0 default, 1 meta, 2 locations; | 0x80 delete)
def edit(op, key, value=b""):
    return bytes([op, len(key)]) + key + struct.pack("<H", len(value)) + value


pk = struct.pack(">IQQ", 0, 1, ~0 & 0xFFFFFFFFFFFFFFFF)
meta = struct.pack("<IIQII", 7, 1024, 0x1234, 0, 0)
put("ssd_records", "unchanged", b"")
# Found by the first replay of this corpus: a 1 GiB size made every read allocate 1 GiB first.
put("ssd_records", "regression-1gib-record-past-segment-end", edit(1, b"P" + pk, struct.pack("<IIQII", 7, 1 << 30, 1, 0, 0)))
put("ssd_records", "short_meta", edit(1, b"P" + pk, meta[:10]))
put("ssd_records", "missing_segment", edit(1, b"P" + pk, struct.pack("<IIQII", 7, 1024, 1, 99, 0)))
put("ssd_records", "bad_location", edit(2, b"L" + struct.pack(">II", 0, 4096), pk + struct.pack("<I", 1 << 31)))
put("ssd_records", "format_v1", edit(0, b"format_version", struct.pack("<I", 1)))
put("ssd_records", "format_deleted", edit(0x80, b"format_version"))
put("ssd_records", "tenant_name", edit(1, b"T" + struct.pack(">I", 5), b"\xff\xfe tenant"))
# The template's pages: (tenant, key.hi, key.lo, size) = (0, 1, ~0, 1024), (1, 2, ~1, 2048),
# (0, 3, ~2, 3072), one batch in segment 1 at offsets 0, 1024, 3072.
pk1 = struct.pack(">IQQ", 1, 2, ~1 & 0xFFFFFFFFFFFFFFFF)
pk2 = struct.pack(">IQQ", 0, 3, ~2 & 0xFFFFFFFFFFFFFFFF)
# Page 1's record pointing at page 2's bytes: deleting page 1 (the target always does) must not
# cost page 2 its bytes (regression).
put("ssd_records", "regression-record-points-at-other-page", edit(1, b"P" + pk1, struct.pack("<IIQII", 7, 3072, 0x1236, 1, 3072)))
# Compaction must not size a buffer by a location record's 4 GiB (regression).
put("ssd_records", "regression-oversized-location", edit(2, b"L" + struct.pack(">II", 1, 256), pk2 + struct.pack("<I", 0xFFFFF000)))
# No location record left: the segment file goes at open, every page reads as lost.
put("ssd_records", "no_locations", b"".join(edit(0x82, b"L" + struct.pack(">II", 1, off)) for off in (0, 1024, 3072)))
# Pages 0 and 2 without location records: deleting page 1 frees the segment's last live byte.
put("ssd_records", "last_live_page_deleted", edit(0x82, b"L" + struct.pack(">II", 1, 0)) + edit(0x82, b"L" + struct.pack(">II", 1, 3072)))
# Pages 0 and 2 recorded elsewhere in segment 1: compacting it (after page 1's delete) finds only
# stale location records, moves nothing and deletes them.
put("ssd_records", "all_locations_stale", edit(1, b"P" + pk, struct.pack("<IIQII", 7, 1024, 0x1234, 1, 8)) + edit(1, b"P" + pk2, struct.pack("<IIQII", 7, 3072, 0x1236, 1, 16)))
put("ssd_records", "stale_location", edit(2, b"L" + struct.pack(">II", 1, 512), pk + struct.pack("<I", 1024)))
