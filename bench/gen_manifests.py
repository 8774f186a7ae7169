#!/usr/bin/env python3
"""Writes N services (each with one EndpointSlice of E endpoints) as manifests.

usage: gen_manifests.py OUT_DIR N [--per-file K] [--endpoints E]

Used by the scale benchmarks: loading time, memory per service, DNS at scale.
Endpoint addresses are inside 10.0.0.0/8 and never dialled by the benchmarks.
"""
import argparse
import os

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("n", type=int)
p.add_argument("--per-file", type=int, default=1000)
p.add_argument("--endpoints", type=int, default=2)
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)

def doc(i):
    name = f"svc-{i:06d}"
    eps = "".join(
        f"- addresses: [10.{(i >> 8) & 255}.{i & 255}.{e + 1}]\n  nodeName: node-{e}\n"
        for e in range(a.endpoints)
    )
    return (
        f"apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: bench\n"
        f"spec:\n  ports:\n  - name: http\n    port: 80\n    targetPort: 8080\n---\n"
        f"apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata:\n  name: {name}-x\n"
        f"  namespace: bench\n  labels:\n    kubernetes.io/service-name: {name}\naddressType: IPv4\n"
        f"ports:\n- name: http\n  port: 8080\nendpoints:\n{eps}"
    )

for f in range(0, a.n, a.per_file):
    with open(os.path.join(a.out, f"services-{f // a.per_file:05d}.yaml"), "w") as out:
        out.write("---\n".join(doc(i) for i in range(f, min(f + a.per_file, a.n))))
