import json, statistics as st, glob, sys
R='/work/wt/gwperf/bench/results/2026-12-07-s13-gwperf'
for b in ['base','new']:
    rows=[]
    for d in sorted(glob.glob(f'{R}/gateway-{b}-*') + glob.glob(f'{R}/gateway-all-{b}')):
        rows += [dict(json.loads(l), run=d) for l in open(d+'/results.jsonl') if l.strip()]
    by={(r['run'],r['rep'],r['mode']):r for r in rows}
    keys={(r['run'],r['rep']) for r in rows}
    quiet=sum(r['quiet'] for r in rows)
    print(b, f'quiet {quiet}/{len(rows)}', 'runs', len({r["run"] for r in rows}))
    for a,c in [('h1-gateway','h1-nginx'),('tls-gateway','tls-nginx'),('hs-gateway','hs-nginx'),('h2-gateway','h2-nginx')]:
        for k in ['req_s','p99_us','proxy_cpu_ms']:
            v=[by[(*p,a)][k]/by[(*p,c)][k] for p in keys if (*p,a) in by and (*p,c) in by]
            print(f'  {a}/{c} {k}: {st.median(v):.2f}x ({min(v):.2f}-{max(v):.2f}) n={len(v)}')
