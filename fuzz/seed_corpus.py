#!/usr/bin/env python3
"""Writes the seed inputs of the fuzz targets that are bytes rather than text
(DNS messages, cache records, tunnel and SOCKS5 handshakes), built as the
crates' tests build theirs. The text targets (manifest, config, watch events)
are seeded from files of the repository by `seed_text` below.

Run from fuzz/: python3 seed_corpus.py (idempotent: files are named by content).
"""
import hashlib
import ipaddress
import json
import pathlib
import re
import struct

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent


def put(target, data):
    if isinstance(data, str):
        data = data.encode()
    d = ROOT / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / hashlib.sha1(data).hexdigest()).write_bytes(data)


# DNS ----------------------------------------------------------------------

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "TXT": 16, "AAAA": 28, "SRV": 33, "OPT": 41, "ANY": 255}


def name(n):
    out = b""
    for label in n.strip(".").split("."):
        if label:
            out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def header(id_, flags, qd, an=0, ns=0, ar=0):
    return struct.pack(">HHHHHH", id_, flags, qd, an, ns, ar)


def opt(payload=1232):
    return b"\0" + struct.pack(">HHIH", TYPES["OPT"], payload, 0, 0)


def query(qname, qtype, edns=False, id_=0xBEEF, flags=0x0100, qclass=1):
    return header(id_, flags, 1, ar=int(edns)) + name(qname) + struct.pack(">HH", TYPES[qtype], qclass) + (opt() if edns else b"")


def rr(owner_ptr, rtype, ttl, rdata):
    return owner_ptr + struct.pack(">HHIH", TYPES[rtype], 1, ttl, len(rdata)) + rdata


def answer(qname, qtype, records, rcode=0, authority=()):
    msg = header(0x1234, 0x8180 | rcode, 1, len(records), len(authority)) + name(qname) + struct.pack(">HH", TYPES[qtype], 1)
    for r in list(records) + list(authority):
        msg += r
    return msg


PTR_Q = b"\xc0\x0c"  # the question's name

for q, t in [
    ("web.default.svc.cluster.local", "A"),
    ("WEB.Default.SVC.cluster.LOCAL", "AAAA"),
    ("db.prod.svc.cluster.local", "A"),
    ("db-0.db.prod.svc.cluster.local", "AAAA"),
    ("_http._tcp.web.default.svc.cluster.local", "SRV"),
    ("_pg._tcp.db.prod.svc.cluster.local", "SRV"),
    ("1.0.0.10.in-addr.arpa", "PTR"),
    ("nope.default.svc.cluster.local", "A"),
    ("cluster.local", "SOA"),
    ("example.com", "A"),
    ("example.com", "ANY"),
]:
    put("dns_request", query(q, t))
    put("dns_request", query(q, t, edns=True))
put("dns_request", query("example.com", "TXT", qclass=3))  # CHAOS
put("dns_request", query("web.default.svc.cluster.local", "A", flags=0x2900))  # an UPDATE opcode

put("dns_forwarded_answer", answer("example.com", "A", [rr(PTR_Q, "A", 300, bytes([192, 0, 2, 1])), rr(PTR_Q, "A", 30, bytes([192, 0, 2, 2]))]))
put("dns_forwarded_answer", answer("example.com", "AAAA", [rr(PTR_Q, "AAAA", 60, ipaddress.ip_address("2001:db8::1").packed)]))
put("dns_forwarded_answer", answer("www.example.com", "A", [rr(PTR_Q, "CNAME", 60, name("example.com")), rr(b"\xc0\x2d", "A", 60, bytes([192, 0, 2, 3]))]))
soa = name("ns.example.com") + name("hostmaster.example.com") + struct.pack(">IIIII", 1, 7200, 900, 1209600, 60)
put("dns_forwarded_answer", answer("nope.example.com", "A", [], rcode=3, authority=[rr(b"\xc0\x11", "SOA", 900, soa)]))
put("dns_forwarded_answer", answer("example.com", "AAAA", [], rcode=0, authority=[rr(b"\xc0\x0c", "SOA", 300, soa)]))
put("dns_forwarded_answer", answer("big.example.com", "TXT", [rr(PTR_Q, "TXT", 60, bytes([255]) + b"x" * 255) for _ in range(8)]))
put("dns_forwarded_answer", answer("example.com", "A", [], rcode=2))

# Cache records (crates/cache/src/codec.rs, format 2) ------------------------


def varint(v):
    out = b""
    while v >= 0x80:
        out += bytes([(v & 0x7F) | 0x80])
        v >>= 7
    return out + bytes([v])


def s(text):
    b = text.encode()
    return varint(len(b)) + b


def strmap(m):
    return varint(len(m)) + b"".join(s(k) + s(v) for k, v in sorted(m.items()))


def ip(text):
    a = ipaddress.ip_address(text)
    return bytes([4 if a.version == 4 else 6]) + a.packed


def vec(items):
    return varint(len(items)) + b"".join(items)


def meta(ns, nm, labels=None, annotations=None):
    return s(ns) + s(nm) + strmap(labels or {}) + strmap(annotations or {})


def opt_str(v):
    return b"\0" if v is None else b"\1" + s(v)


service = (
    b"\2\0" + meta("shop", "web", {"app": "web"}, {"edgemesh.io/lb-strategy": "Random", "ü": ""})
    + vec([ip("10.96.0.10"), ip("fd00::a")]) + b"\0"
    + vec([s("http") + b"\0" + varint(80) + b"\1" + s("web-http") + b"\1" + varint(30080),
           s("") + b"\2" + varint(65535) + b"\0" + varint(300) + b"\0"])
    + s("NodePort") + b"\1" + varint(86400) + b"\1" + b"\1" + vec([b"\1", b"\0"]) + b"\3"
)
put("cache_record", service)
put("cache_record", b"\2\0" + meta("default", "plain") + vec([]) + b"\1" + vec([]) + s("ClusterIP") + b"\0\0\0" + vec([]) + b"\0")
put("cache_record", b"\2\1" + meta("shop", "web-x1") + b"\1" + s("web")
    + vec([vec([vec([ip("10.0.0.1")]) + b"\1" + opt_str("n1") + opt_str("web-0"),
                vec([ip("fd00::1")]) + b"\0" + opt_str(None) + opt_str(None)])
           + vec([s("http") + varint(8080) + b"\0"])]))
put("cache_record", b"\2\2" + meta("", "node-a") + vec([ip("192.168.1.10"), ip("fd00::10")]))
put("cache_record", json.dumps({"Node": {"meta": {"namespace": "", "name": "node-a", "labels": {}, "annotations": {}}, "addresses": ["10.0.0.1"]}}))

# Tunnel stream protocols (crates/tunnel/src/wire.rs) ------------------------

put("tunnel_hello", b"EMH\x01\x00" + bytes([6]) + b"edge-1" + bytes([12]) + b"edgemesh/0.1")
put("tunnel_hello", b"EMH\x01\x01" + bytes([6]) + b"node-b" + b"\0")
put("tunnel_header", b"\x01\x01\x04" + bytes([10, 1, 2, 3]) + struct.pack(">H", 8080) + bytes([18]) + b"default/nginx:http")
put("tunnel_header", b"\x01\x02\x06" + ipaddress.ip_address("fd00::1").packed + struct.pack(">H", 53) + bytes([3]) + b"dns")
put("tunnel_header", b"\x01\x01\x00" + struct.pack(">H", 22) + bytes([5]) + b"socks")

# SOCKS5 (crates/socks/src/handshake.rs) -------------------------------------

connect_v4 = b"\x05\x01\x00\x01" + bytes([10, 0, 0, 1]) + struct.pack(">H", 80)
connect_name = b"\x05\x01\x00\x03" + bytes([29]) + b"web.default.svc.cluster.local" + struct.pack(">H", 80)
connect_v6 = b"\x05\x01\x00\x04" + ipaddress.ip_address("fd00::1").packed + struct.pack(">H", 22)
put("socks_handshake", b"\x05\x01\x00" + connect_v4)
put("socks_handshake", b"\x05\x01\x00" + connect_name)
put("socks_handshake", b"\x05\x02\x00\x02" + b"\x01\x05alice\x06secret" + connect_v6)
put("socks_handshake", b"\x05\x01\x00" + b"\x05\x03\x00\x01" + bytes(4) + b"\0\0")  # UDP ASSOCIATE


# Cache records of format 4: a node with pod CIDRs (10.244.1.0/24, fd00:244:1::/64).
def cidr(text):
    net = ipaddress.ip_network(text)
    return ip(str(net.network_address)) + bytes([net.prefixlen])


put("cache_record", b"\4\2" + meta("", "node-a") + vec([ip("192.168.1.10")]) + vec([cidr("10.244.1.0/24"), cidr("fd00:244:1::/64")]))

# HTTP request heads (fuzz/src/http_front.rs): a mode byte (0: the client
# stays connected and silent, 1: it half-closes), then what curl, a browser,
# a gRPC client or an attacker sends -----------------------------------------

def h2_frame(kind, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# HPACK: :method GET, :scheme http, :path /, :authority web (literal, indexed name 1).
H2_GET = h2_frame(1, 0x5, 1, b"\x82\x86\x84\x41\x03web")
HTTP_HEADS = [
    b"GET / HTTP/1.1\r\nHost: web.default\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: web\r\n\r\nGET /fail HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
    b"POST /orders HTTP/1.1\r\nHost: web\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"id\": 42, \"x\"}",
    b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    b"GET /chat HTTP/1.1\r\nHost: web\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET / HTTP/1.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: web\r\nX-Forwarded-For: 203.0.113.9\r\nTE: trailers\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive, x-hop\r\nx-hop: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: web\r\nX-Big: " + b"a" * 8300 + b"\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: web\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(20)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: w",
    H2_PREFACE + h2_frame(4, 0, 0, b"") + H2_GET,
    H2_PREFACE + h2_frame(4, 0, 0, struct.pack(">HI", 3, 100)) + h2_frame(4, 1, 0, b"") + H2_GET
    + h2_frame(1, 0x4, 3, b"\x83\x86\x44\x05/fail\x41\x03web\x5f\x10application/grpc") + h2_frame(0, 0x1, 3, b"\0\0\0\0\0"),
    H2_PREFACE + h2_frame(4, 0, 0, b"") + h2_frame(8, 0, 0, struct.pack(">I", 1 << 20)) + h2_frame(6, 0, 0, b"12345678"),
    H2_PREFACE,
]
for head in HTTP_HEADS:
    for mode in (b"\0", b"\1"):
        put("http_request_head", mode + head)

# Text targets: files and documents the tests use ----------------------------

def seed_text():
    for f in sorted((REPO / "examples" / "manifests").glob("*.yaml")):
        put("manifest", f.read_text())
    for f in sorted((REPO / "deploy" / "kubernetes").glob("*.yaml")):
        put("manifest", f.read_text())
    # Raw string literals of YAML in the manifests tests (r#"..."#, r"...").
    for f in sorted((REPO / "crates" / "manifests" / "tests").glob("*.rs")):
        for doc in re.findall(r'r#"(.*?)"#', f.read_text(), re.S):
            if "apiVersion" in doc or "kind:" in doc:
                put("manifest", doc)
    for f in [REPO / "examples" / "config.yaml", REPO / "deploy" / "systemd" / "config.yaml"]:
        put("config", f.read_text())
    # The YAML string literals the config tests parse ("...\n...", with `\` line continuations).
    for f in sorted((REPO / "crates" / "edgemesh" / "src" / "config").glob("*.rs")):
        for lit in re.findall(r'from_yaml\(\s*"((?:[^"\\]|\\.)*)"', f.read_text(), re.S):
            lit = re.sub(r"\\\n\s*", "", lit)
            put("config", lit.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\"))
    meta_ = {"name": "web", "namespace": "default", "resourceVersion": "7"}
    events = [
        {"type": "ADDED", "object": {"apiVersion": "v1", "kind": "Service", "metadata": meta_,
                                      "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                                               "sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 600}}}}},
        {"type": "MODIFIED", "object": {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                                         "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
                                         "addressType": "IPv4", "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}, "nodeName": "n1", "hostname": "web-0"}],
                                         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}},
        {"type": "DELETED", "object": {"apiVersion": "v1", "kind": "Endpoints", "metadata": meta_,
                                        "subsets": [{"addresses": [{"ip": "10.0.0.1", "nodeName": "n1"}], "notReadyAddresses": [{"ip": "10.0.0.2"}], "ports": [{"name": "http", "port": 8080}]}]}},
        {"type": "ADDED", "object": {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1", "annotations": {"edgemesh.io/peer-id": "12D3KooWExample"}},
                                      "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]}}},
        {"type": "MODIFIED", "object": {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                                         "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24", "fd00:244:1::/64"]}}},
        {"type": "BOOKMARK", "object": {"kind": "Service", "apiVersion": "v1", "metadata": {"resourceVersion": "12"}}},
        {"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "too old resource version", "reason": "Expired", "code": 410}},
    ]
    for e in events:
        put("k8s_watch_event", json.dumps(e))


seed_text()
